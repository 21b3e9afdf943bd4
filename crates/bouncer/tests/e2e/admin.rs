//! The admin service's identity API, driven over HTTP on both backends.

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::harness::{Admin, Backend, PASSWORD, expect_json, expect_problem};

on_both_backends!(
    signup_login_and_me,
    bad_input_gets_problem_documents,
    refresh_rotates_and_reuse_kills_the_session,
    concurrent_refreshes_of_one_token_have_one_winner,
    logout_ends_one_session,
    logout_all_ends_every_session_but_not_later_logins,
    password_change_revokes_other_sessions,
    failed_logins_are_throttled_per_account_and_ip,
    unknown_email_costs_the_same_as_a_wrong_password,
    over_long_password_is_refused_before_hashing,
    tokens_verify_with_a_standard_library_against_the_jwks,
    key_rotation_is_picked_up_without_restart,
    keys_from_an_older_release_are_upgraded_to_a_form_openssl_reads,
    login_rehashes_when_parameters_change,
    first_admin_is_made_with_the_cli,
);

async fn signup_login_and_me(backend: Backend) {
    let admin = Admin::start(backend).await;
    let user = admin.signup("  Alice@Example.com ").await;
    assert_eq!(user["email"], "Alice@Example.com", "email is trimmed, case kept");
    assert_eq!(user["roles"], json!(["user"]));
    assert!(uuid::Uuid::parse_str(user["id"].as_str().unwrap()).is_ok());
    assert!(
        time::OffsetDateTime::parse(
            user["created_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );

    let dup = admin.post("/auth/signup", json!({"email": "alice@EXAMPLE.com", "password": PASSWORD})).await;
    expect_problem(dup, 409, "email-taken").await;

    let response =
        admin.post("/auth/login", json!({"email": "ALICE@example.com ", "password": PASSWORD})).await;
    assert_eq!(response.headers()["cache-control"], "no-store");
    let tokens = expect_json(response, 200).await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    assert_eq!(tokens["refresh_token"].as_str().unwrap().len(), 43);
    let access = tokens["access_token"].as_str().unwrap();

    let me = expect_json(admin.get_bearer("/users/me", access).await, 200).await;
    assert_eq!(me, user, "/users/me shows the signed-up user");

    let missing = admin.get("/users/me").await;
    assert_eq!(missing.headers()["www-authenticate"], "Bearer realm=\"bouncer\"");
    expect_problem(missing, 401, "unauthenticated").await;
    let garbage = admin.get_bearer("/users/me", "not.a.jwt").await;
    assert!(garbage.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    expect_problem(garbage, 401, "invalid-token").await;

    let ready = expect_json(admin.get("/readyz").await, 200).await;
    assert_eq!(ready["database"], if backend == Backend::Sqlite { "sqlite" } else { "postgres" });
    expect_json(admin.get("/healthz").await, 200).await;
    assert_eq!(admin.metric("bouncer_admin_signups_total").await, 1.0);
    assert_eq!(admin.metric("bouncer_admin_logins_total{outcome=\"succeeded\"}").await, 1.0);

    // Nothing secret reaches the logs.
    let logs = admin.logs();
    for secret in [PASSWORD, access, tokens["refresh_token"].as_str().unwrap()] {
        assert!(!logs.contains(secret), "a secret appeared in the logs");
    }
}

async fn bad_input_gets_problem_documents(backend: Backend) {
    let admin = Admin::start(backend).await;
    let invalid = admin.post("/auth/signup", json!({"email": "not-an-email", "password": "short"})).await;
    let body = expect_problem(invalid, 422, "validation-failed").await;
    let fields: Vec<&str> =
        body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["email", "password"]);

    let wrong_type = admin.post("/auth/signup", json!({"email": 5, "password": PASSWORD})).await;
    let body = expect_problem(wrong_type, 422, "validation-failed").await;
    assert_eq!(body["errors"][0]["field"], "email");
    let missing = admin.post("/auth/login", json!({"email": "a@example.com"})).await;
    let body = expect_problem(missing, 422, "validation-failed").await;
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("password"), "{body}");

    let malformed = admin
        .http
        .post(admin.url("/auth/login"))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    expect_problem(malformed, 400, "malformed-request").await;

    let form = admin.http.post(admin.url("/auth/login")).body("email=a&password=b").send().await.unwrap();
    expect_problem(form, 415, "unsupported-media-type").await;

    let huge = json!({"email": "a@example.com", "password": "x".repeat(70 * 1024)});
    expect_problem(admin.post("/auth/signup", huge).await, 413, "payload-too-large").await;
    // Chunked, no Content-Length: the limit still holds while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..80).map(|_| Ok(vec![b' '; 1024])).collect();
    let streamed = admin
        .http
        .post(admin.url("/auth/signup"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_stream(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.headers()["connection"], "close", "an unread body ends the connection");
    expect_problem(streamed, 413, "payload-too-large").await;

    expect_problem(admin.get("/nope").await, 404, "not-found").await;
    let wrong_method = admin.http.delete(admin.url("/auth/login")).send().await.unwrap();
    assert_eq!(wrong_method.headers()["allow"], "POST");
    expect_problem(wrong_method, 405, "method-not-allowed").await;

    // A sane request id from the caller is echoed back.
    let traced =
        admin.http.get(admin.url("/healthz")).header("x-request-id", "trace-123").send().await.unwrap();
    assert_eq!(traced.headers()["x-request-id"], "trace-123");
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::iter(chunks)
}

async fn refresh_rotates_and_reuse_kills_the_session(backend: Backend) {
    let admin = Admin::start(backend).await;
    admin.signup("bob@example.com").await;
    let (access1, refresh1) = admin.login("bob@example.com", PASSWORD).await;
    let rotated =
        expect_json(admin.post("/auth/refresh", json!({"refresh_token": refresh1})).await, 200).await;
    let refresh2 = rotated["refresh_token"].as_str().unwrap().to_owned();
    let access2 = rotated["access_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh1, "refresh must rotate the refresh token");
    expect_json(admin.get_bearer("/users/me", &access2).await, 200).await;
    let sid = |token: &str| claims(token)["sid"].clone();
    assert_eq!(sid(&access1), sid(&access2), "a refresh stays in its session");

    // Replaying the spent token: 401, and the whole session dies.
    expect_problem(
        admin.post("/auth/refresh", json!({"refresh_token": refresh1})).await,
        401,
        "invalid-token",
    )
    .await;
    expect_problem(
        admin.post("/auth/refresh", json!({"refresh_token": refresh2})).await,
        401,
        "invalid-token",
    )
    .await;
    expect_problem(admin.get_bearer("/users/me", &access2).await, 401, "invalid-token").await;
    assert_eq!(admin.metric("bouncer_admin_refreshes_total{outcome=\"reuse_detected\"}").await, 1.0);
    assert!(admin.logs().contains("refresh token reuse detected"));

    for junk in ["", "short", &"A".repeat(43)] {
        expect_problem(
            admin.post("/auth/refresh", json!({"refresh_token": junk})).await,
            401,
            "invalid-token",
        )
        .await;
    }
}

async fn concurrent_refreshes_of_one_token_have_one_winner(backend: Backend) {
    let admin = Admin::start(backend).await;
    admin.signup("carol@example.com").await;
    let (_, refresh) = admin.login("carol@example.com", PASSWORD).await;
    let attempts: Vec<_> = (0..12)
        .map(|_| tokio::spawn(owned_post(&admin, "/auth/refresh", json!({"refresh_token": refresh}))))
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap().status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "statuses: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 401), "statuses: {statuses:?}");
}

/// A request future that owns its client, so it can be spawned.
fn owned_post(
    admin: &Admin,
    path: &str,
    body: Value,
) -> impl std::future::Future<Output = reqwest::Response> + use<> {
    let request = admin.http.post(admin.url(path)).json(&body);
    async move { request.send().await.unwrap() }
}

async fn logout_ends_one_session(backend: Backend) {
    let admin = Admin::start(backend).await;
    admin.signup("dan@example.com").await;
    let (access_a, refresh_a) = admin.login("dan@example.com", PASSWORD).await;
    let (access_b, refresh_b) = admin.login("dan@example.com", PASSWORD).await;
    expect_json(admin.post("/auth/logout", json!({"refresh_token": refresh_a})).await, 204).await;
    expect_problem(
        admin.post("/auth/refresh", json!({"refresh_token": refresh_a})).await,
        401,
        "invalid-token",
    )
    .await;
    expect_problem(admin.get_bearer("/users/me", &access_a).await, 401, "invalid-token").await;
    expect_json(admin.get_bearer("/users/me", &access_b).await, 200).await;
    expect_json(admin.post("/auth/refresh", json!({"refresh_token": refresh_b})).await, 200).await;
    // Unknown and repeated logouts are not errors.
    expect_json(admin.post("/auth/logout", json!({"refresh_token": refresh_a})).await, 204).await;
    expect_json(admin.post("/auth/logout", json!({"refresh_token": "garbage"})).await, 204).await;
}

async fn logout_all_ends_every_session_but_not_later_logins(backend: Backend) {
    let admin = Admin::start(backend).await;
    admin.signup("eve@example.com").await;
    let (access_a, refresh_a) = admin.login("eve@example.com", PASSWORD).await;
    let (access_b, refresh_b) = admin.login("eve@example.com", PASSWORD).await;
    expect_problem(
        admin.http.post(admin.url("/auth/logout-all")).send().await.unwrap(),
        401,
        "unauthenticated",
    )
    .await;
    expect_json(admin.post_bearer("/auth/logout-all", &access_a, json!({})).await, 204).await;
    for (access, refresh) in [(&access_a, &refresh_a), (&access_b, &refresh_b)] {
        expect_problem(admin.get_bearer("/users/me", access).await, 401, "invalid-token").await;
        expect_problem(
            admin.post("/auth/refresh", json!({"refresh_token": refresh})).await,
            401,
            "invalid-token",
        )
        .await;
    }
    // A login in the same second as the logout-all must still work.
    let (access_c, _) = admin.login("eve@example.com", PASSWORD).await;
    expect_json(admin.get_bearer("/users/me", &access_c).await, 200).await;
}

async fn password_change_revokes_other_sessions(backend: Backend) {
    let admin = Admin::start(backend).await;
    admin.signup("fay@example.com").await;
    let (access_a, refresh_a) = admin.login("fay@example.com", PASSWORD).await;
    let (access_b, refresh_b) = admin.login("fay@example.com", PASSWORD).await;
    let new_password = "a much better passphrase";
    let wrong = admin
        .post_bearer(
            "/users/me/password",
            &access_a,
            json!({"current_password": "wrong password!", "new_password": new_password}),
        )
        .await;
    expect_problem(wrong, 401, "invalid-credentials").await;
    let weak = admin
        .post_bearer(
            "/users/me/password",
            &access_a,
            json!({"current_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    let body = expect_problem(weak, 422, "validation-failed").await;
    assert_eq!(body["errors"][0]["field"], "new_password");
    let ok = admin
        .post_bearer(
            "/users/me/password",
            &access_a,
            json!({"current_password": PASSWORD, "new_password": new_password}),
        )
        .await;
    expect_json(ok, 204).await;
    expect_json(admin.get_bearer("/users/me", &access_a).await, 200).await;
    expect_json(admin.post("/auth/refresh", json!({"refresh_token": refresh_a})).await, 200).await;
    expect_problem(admin.get_bearer("/users/me", &access_b).await, 401, "invalid-token").await;
    expect_problem(
        admin.post("/auth/refresh", json!({"refresh_token": refresh_b})).await,
        401,
        "invalid-token",
    )
    .await;
    let old = admin.post("/auth/login", json!({"email": "fay@example.com", "password": PASSWORD})).await;
    expect_problem(old, 401, "invalid-credentials").await;
    admin.login("fay@example.com", new_password).await;
}

async fn failed_logins_are_throttled_per_account_and_ip(backend: Backend) {
    let admin = Admin::start_with(
        backend,
        "  login_throttle: { max_failures: 3, max_failures_per_ip: 5, window: 15m }\n",
    )
    .await;
    admin.signup("gus@example.com").await;
    admin.signup("hal@example.com").await;
    let attempt = |email: &'static str, password: &'static str| {
        admin.post("/auth/login", json!({"email": email, "password": password}))
    };
    for _ in 0..3 {
        expect_problem(attempt("gus@example.com", "wrong password!").await, 401, "invalid-credentials").await;
    }
    // Locked for now even with the right password, with a Retry-After.
    let throttled = attempt("gus@example.com", PASSWORD).await;
    let retry_after: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry_after), "Retry-After {retry_after}");
    expect_problem(throttled, 429, "too-many-requests").await;
    // Another account from the same IP is still fine (IP limit 5 > 3 failures).
    admin.login("hal@example.com", PASSWORD).await;
    // Two more failures on other accounts reach the per-IP limit of 5.
    expect_problem(attempt("hal@example.com", "wrong password!").await, 401, "invalid-credentials").await;
    expect_problem(attempt("nobody@example.com", "wrong password!").await, 401, "invalid-credentials").await;
    expect_problem(attempt("hal@example.com", PASSWORD).await, 429, "too-many-requests").await;
    assert!(admin.metric("bouncer_admin_logins_total{outcome=\"throttled\"}").await >= 2.0);
}

async fn unknown_email_costs_the_same_as_a_wrong_password(backend: Backend) {
    let admin = Admin::start(backend).await;
    admin.signup("ida@example.com").await;
    let verifications = "bouncer_admin_password_verifications_total";
    let mut unknown_times = Vec::new();
    let mut wrong_times = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..4 {
        for (email, times) in [
            (format!("ghost{i}@example.com"), &mut unknown_times),
            ("ida@example.com".into(), &mut wrong_times),
        ] {
            let before = admin.metric(verifications).await;
            let started = Instant::now();
            let response =
                admin.post("/auth/login", json!({"email": email, "password": "wrong password!"})).await;
            times.push(started.elapsed());
            let mut body = expect_problem(response, 401, "invalid-credentials").await;
            body.as_object_mut().unwrap().remove("request_id");
            bodies.push(body);
            assert_eq!(
                admin.metric(verifications).await,
                before + 1.0,
                "every failed login runs exactly one Argon2 verification"
            );
        }
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "unknown email and wrong password answer identically: {bodies:?}"
    );
    // A coarse guard against a shortcut (skipping the hash is ~20x faster);
    // the exact guarantee is the verification counter above.
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (u, w) = (median(&mut unknown_times), median(&mut wrong_times));
    let ratio = u.as_secs_f64() / w.as_secs_f64();
    assert!((0.33..3.0).contains(&ratio), "unknown {u:?} vs wrong password {w:?}");
}

async fn over_long_password_is_refused_before_hashing(backend: Backend) {
    let admin = Admin::start(backend).await;
    let before = admin.metric("bouncer_admin_password_verifications_total").await;
    let long = "p".repeat(60 * 1024);
    let response = admin.post("/auth/login", json!({"email": "ida@example.com", "password": long})).await;
    let body = expect_problem(response, 422, "validation-failed").await;
    assert_eq!(body["errors"][0]["field"], "password");
    let signup =
        admin.post("/auth/signup", json!({"email": "ida@example.com", "password": "p".repeat(129)})).await;
    expect_problem(signup, 422, "validation-failed").await;
    assert_eq!(
        admin.metric("bouncer_admin_password_verifications_total").await,
        before,
        "no hashing happened"
    );
}

async fn tokens_verify_with_a_standard_library_against_the_jwks(backend: Backend) {
    let admin = Admin::start(backend).await;
    let user = admin.signup("jay@example.com").await;
    let (access, _) = admin.login("jay@example.com", PASSWORD).await;
    let jwks_response = admin.get("/.well-known/jwks.json").await;
    assert!(jwks_response.headers()["cache-control"].to_str().unwrap().contains("max-age"));
    let jwks: jsonwebtoken::jwk::JwkSet = jwks_response.json().await.unwrap();
    let header = jsonwebtoken::decode_header(&access).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("the token's kid is in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&["http://bouncer.test"]);
    validation.set_audience(&["bouncer-test"]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
    validation.validate_nbf = true;
    let data = jsonwebtoken::decode::<Value>(&access, &key, &validation).expect("verifies with the JWKS");
    let c = data.claims;
    for claim in ["iss", "aud", "sub", "sid", "roles", "email", "iat", "nbf", "exp", "jti"] {
        assert!(c.get(claim).is_some(), "claim {claim} missing from {c}");
    }
    assert_eq!(c["sub"], user["id"]);
    assert_eq!(c["email"], "jay@example.com");
    assert_eq!(c["roles"], json!(["user"]));
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 900);

    // Independently of jsonwebtoken: raw Ed25519 over header.payload.
    use ed25519_dalek::Verifier;
    let x = match &jwk.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(okp) => okp.x.clone(),
        other => panic!("expected an OKP key, got {other:?}"),
    };
    let public: [u8; 32] = URL_SAFE_NO_PAD.decode(x).unwrap().try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
    let (signed, sig) = access.rsplit_once('.').unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
    key.verify(signed.as_bytes(), &sig).expect("raw Ed25519 signature verifies");
}

async fn key_rotation_is_picked_up_without_restart(backend: Backend) {
    let admin = Admin::start(backend).await;
    admin.signup("kim@example.com").await;
    let (old_access, _) = admin.login("kim@example.com", PASSWORD).await;
    let old_kid = jsonwebtoken::decode_header(&old_access).unwrap().kid.unwrap();
    let out = admin.cli(&["keys", "rotate"], None).await;
    assert!(out.status.success(), "keys rotate failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let new_kid = stdout.split_whitespace().nth(3).unwrap().to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            std::fs::metadata(admin.keys_dir().join(format!("{new_kid}.pem"))).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "new key file must be 0600");
    }
    admin.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    let kids = loop {
        let jwks = expect_json(admin.get("/.well-known/jwks.json").await, 200).await;
        let kids: Vec<String> =
            jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
        if kids.len() == 2 || Instant::now() > deadline {
            break kids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(kids, [old_kid.clone(), new_kid.clone()], "JWKS after rotation");
    let (new_access, _) = admin.login("kim@example.com", PASSWORD).await;
    assert_eq!(
        jsonwebtoken::decode_header(&new_access).unwrap().kid.unwrap(),
        new_kid,
        "the newest key signs"
    );
    expect_json(admin.get_bearer("/users/me", &old_access).await, 200).await;
    expect_json(admin.get_bearer("/users/me", &new_access).await, 200).await;

    // Both files — the one made at first start and the rotated one — are
    // keys standard tools read, and hold the public keys the JWKS publishes.
    let jwks = expect_json(admin.get("/.well-known/jwks.json").await, 200).await;
    for kid in [&old_kid, &new_kid] {
        let published = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == **kid).unwrap()["x"]
            .as_str()
            .unwrap()
            .to_owned();
        if let Some(public) = openssl_public_key(&admin.keys_dir().join(format!("{kid}.pem"))) {
            assert_eq!(URL_SAFE_NO_PAD.encode(public), published, "openssl's public key of {kid}");
        }
    }
}

/// The raw Ed25519 public key `openssl pkey` derives from a key file, or
/// `None` (said on stderr) when the machine has no `openssl`.
fn openssl_public_key(path: &std::path::Path) -> Option<Vec<u8>> {
    let out = match std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(path)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED the openssl check of {}: no openssl on this machine", path.display());
            return None;
        }
        Err(e) => panic!("cannot run openssl: {e}"),
    };
    assert!(
        out.status.success(),
        "openssl pkey cannot read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // SubjectPublicKeyInfo for Ed25519: a 12-byte header, then the key.
    assert_eq!(out.stdout.len(), 44, "an Ed25519 SubjectPublicKeyInfo");
    Some(out.stdout[12..].to_vec())
}

async fn keys_from_an_older_release_are_upgraded_to_a_form_openssl_reads(backend: Backend) {
    use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
    let mut admin = Admin::start(backend).await;
    admin.signup("old@example.com").await;
    let (access, _) = admin.login("old@example.com", PASSWORD).await;
    let kid = jsonwebtoken::decode_header(&access).unwrap().kid.unwrap();
    let path = admin.keys_dir().join(format!("{kid}.pem"));
    let v1 = std::fs::read_to_string(&path).unwrap();
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&v1).unwrap();
    // What releases before this one wrote: PKCS#8 v2 with the public key.
    let v2 = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    assert_ne!(*v2, v1, "the fixture differs from what is written now");
    admin.terminate().await;
    std::fs::write(&path, v2.as_bytes()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    admin.restart_stopped().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), v1, "rewritten as v1, the same key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(std::fs::read_dir(admin.keys_dir()).unwrap().count(), 1, "no temporary file left");
    expect_json(admin.get_bearer("/users/me", &access).await, 200).await;
    if let Some(public) = openssl_public_key(&path) {
        assert_eq!(public, key.verifying_key().as_bytes());
    }
}

async fn login_rehashes_when_parameters_change(backend: Backend) {
    let mut admin = Admin::start_with(
        backend,
        "  password: { hash: { memory_kib: 8192, iterations: 1, parallelism: 1 } }\n",
    )
    .await;
    admin.signup("lee@example.com").await;
    let url = admin.database_url.clone();
    let stored = || async {
        let store = bouncer_store::open(&url, 1).await.unwrap();
        store.credential_by_email("lee@example.com").await.unwrap().unwrap().password_hash
    };
    assert!(stored().await.contains("m=8192,t=1,p=1"), "{}", stored().await);
    admin.write_config("  password: { hash: { memory_kib: 9216, iterations: 2, parallelism: 1 } }\n");
    admin.restart().await;
    admin.login("lee@example.com", PASSWORD).await;
    assert!(stored().await.contains("m=9216,t=2,p=1"), "login must rehash: {}", stored().await);
    admin.login("lee@example.com", PASSWORD).await;
}

async fn first_admin_is_made_with_the_cli(backend: Backend) {
    let admin = Admin::start(backend).await;
    let out = admin
        .cli(
            &["user", "add", "--email", "root@example.com", "--role", "admin", "user", "--password-stdin"],
            Some(&format!("{PASSWORD}\n")),
        )
        .await;
    assert!(out.status.success(), "user add failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(PASSWORD));
    let (access, _) = admin.login("root@example.com", PASSWORD).await;
    let me = expect_json(admin.get_bearer("/users/me", &access).await, 200).await;
    assert_eq!(me["roles"], json!(["admin", "user"]));
    let again = admin
        .cli(
            &["user", "add", "--email", "ROOT@example.com", "--role", "admin", "--password-stdin"],
            Some(PASSWORD),
        )
        .await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad_role = admin
        .cli(
            &["user", "add", "--email", "x@example.com", "--role", "wizard", "--password-stdin"],
            Some(PASSWORD),
        )
        .await;
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("unknown role \"wizard\""));
    let weak = admin
        .cli(
            &["user", "add", "--email", "y@example.com", "--role", "user", "--password-stdin"],
            Some("short"),
        )
        .await;
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 12"));
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// PostgreSQL only: cut the database off mid-run. Readiness and every
/// endpoint that needs it answer 503 (no token minted without its session
/// persisted), liveness stays 200, and service resumes when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_and_recovers() {
    let admin = Admin::start(Backend::Postgres).await;
    admin.signup("max@example.com").await;
    let (access, refresh) = admin.login("max@example.com", PASSWORD).await;
    let db = admin.db.as_ref().unwrap();
    db.admin_execute(&format!(
        "ALTER DATABASE {0} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}';",
        db.name
    ))
    .await;
    expect_problem(admin.get("/readyz").await, 503, "unavailable").await;
    expect_json(admin.get("/healthz").await, 200).await;
    let login = admin.post("/auth/login", json!({"email": "max@example.com", "password": PASSWORD})).await;
    assert_eq!(login.headers()["retry-after"], "1");
    expect_problem(login, 503, "unavailable").await;
    expect_problem(admin.post("/auth/refresh", json!({"refresh_token": refresh})).await, 503, "unavailable")
        .await;
    expect_problem(admin.get_bearer("/users/me", &access).await, 503, "unavailable").await;
    let signup = admin.post("/auth/signup", json!({"email": "new@example.com", "password": PASSWORD})).await;
    expect_problem(signup, 503, "unavailable").await;

    db.admin_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name)).await;
    expect_json(admin.get("/readyz").await, 200).await;
    // The refresh refused during the outage was not spent.
    expect_json(admin.post("/auth/refresh", json!({"refresh_token": refresh})).await, 200).await;
}

/// SIGTERM lets an in-flight request finish, then exits 0. The request is
/// held in flight deterministically by sending its body in two halves with
/// a pause in between, and the signal arrives during the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut admin = Admin::start(Backend::Sqlite).await;
    let halves = vec![
        b"{\"email\": \"ned@example.com\", ".to_vec(),
        format!("\"password\": \"{PASSWORD}\"}}").into_bytes(),
    ];
    let body = futures_util::stream::unfold(halves.into_iter().enumerate(), |mut parts| async move {
        let (i, part) = parts.next()?;
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        Some((Ok::<_, std::io::Error>(part), parts))
    });
    let request = admin
        .http
        .post(admin.url("/auth/signup"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(body));
    let in_flight = tokio::spawn(async move { request.send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = admin.terminate().await;
    assert!(status.success(), "exit status {status}");
    let response = in_flight.await.unwrap().expect("the in-flight request got a response");
    assert_eq!(response.status(), 201, "the in-flight signup completed");
    assert!(admin.logs().contains("admin stopped"));
}
