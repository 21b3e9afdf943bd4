//! Service clients end to end, on both backends, through the real binary:
//! `/admin/clients` and `POST /oauth/token` (RFC 6749 client credentials).

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use crate::harness::{Admin, Backend, PASSWORD, expect_json, expect_problem};

on_both_backends!(
    clients_get_tokens_and_lose_them_with_the_client,
    a_rotated_secret_overlaps_then_stops,
    wrong_secrets_are_throttled_per_client,
);

async fn admin_token(admin: &Admin) -> String {
    admin.root().await.1
}

async fn create_client(admin: &Admin, token: &str, body: Value) -> Value {
    expect_json(admin.post_bearer("/admin/clients", token, body).await, 201).await
}

/// `POST /oauth/token` with `form` and, when given, HTTP Basic `(id, secret)`.
async fn token_request(
    admin: &Admin,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = admin.http.post(admin.url("/oauth/token")).form(form);
    if let Some((id, secret)) = basic {
        request =
            request.header("authorization", format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))));
    }
    request.send().await.unwrap()
}

/// An RFC 6749 §5.2 error with `status` and `error`.
async fn expect_oauth_error(
    response: reqwest::Response,
    status: u16,
    error: &str,
) -> reqwest::header::HeaderMap {
    let headers = response.headers().clone();
    let body = expect_json(response, status).await;
    assert_eq!(body["error"], error, "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    headers
}

fn claims(token: &str) -> Value {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

const GRANT: (&str, &str) = ("grant_type", "client_credentials");

async fn clients_get_tokens_and_lose_them_with_the_client(backend: Backend) {
    let admin = Admin::start(backend).await;
    let root = admin_token(&admin).await;
    let (user_token, _) = {
        admin.signup("plain@example.com").await;
        admin.login("plain@example.com", PASSWORD).await
    };
    // Admin only, like the rest of /admin.
    let refused = admin.post_bearer("/admin/clients", &user_token, json!({"name": "x", "roles": []})).await;
    expect_problem(refused, 403, "forbidden").await;
    let unknown = admin.post_bearer("/admin/clients", &root, json!({"name": "x", "roles": ["nope"]})).await;
    expect_problem(unknown, 422, "validation-failed").await;
    let nameless = admin.post_bearer("/admin/clients", &root, json!({"name": " ", "roles": []})).await;
    expect_problem(nameless, 422, "validation-failed").await;

    let created =
        create_client(&admin, &root, json!({"name": "nightly export", "roles": ["user", "service"]})).await;
    let id = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(created["roles"], json!(["service", "user"]), "roles sorted: {created}");
    assert!(secret.len() >= 43, "256 random bits: {secret}");

    // Listed and fetched, never with the secret.
    let list = expect_json(admin.get_bearer("/admin/clients", &root).await, 200).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert!(!list.to_string().contains(&secret), "a list never shows the secret");
    let one = expect_json(admin.get_bearer(&format!("/admin/clients/{id}"), &root).await, 200).await;
    assert_eq!((&one["client_id"], &one["name"]), (&json!(id), &json!("nightly export")));
    let simple = id.replace('-', "");
    expect_problem(admin.get_bearer(&format!("/admin/clients/{simple}"), &root).await, 404, "not-found")
        .await;

    // A token by HTTP Basic: the client's roles, its id as sub and client_id, no session, no email.
    let response = token_request(&admin, Some((&id, &secret)), &[GRANT]).await;
    assert_eq!(response.headers()["cache-control"], "no-store");
    let issued = expect_json(response, 200).await;
    assert_eq!(
        (&issued["token_type"], &issued["scope"]),
        (&json!("Bearer"), &json!("service user")),
        "{issued}"
    );
    assert!(issued.get("refresh_token").is_none(), "no refresh token for a client: {issued}");
    let access = issued["access_token"].as_str().unwrap().to_owned();
    let c = claims(&access);
    assert_eq!(
        (&c["sub"], &c["client_id"], &c["roles"]),
        (&json!(id), &json!(id), &json!(["service", "user"]))
    );
    assert!(c.get("sid").is_none() && c.get("email").is_none(), "{c}");
    // The same through the form fields, narrowed by scope.
    let form = [GRANT, ("client_id", &id), ("client_secret", &secret), ("scope", "service")];
    let narrowed = expect_json(token_request(&admin, None, &form).await, 200).await;
    assert_eq!(claims(narrowed["access_token"].as_str().unwrap())["roles"], json!(["service"]));

    // RFC 6749 §5.2 errors.
    let wide = token_request(&admin, Some((&id, &secret)), &[GRANT, ("scope", "admin")]).await;
    expect_oauth_error(wide, 400, "invalid_scope").await;
    let wrong = token_request(&admin, Some((&id, "A".repeat(43).as_str())), &[GRANT]).await;
    let headers = expect_oauth_error(wrong, 401, "invalid_client").await;
    assert_eq!(headers["www-authenticate"], "Basic realm=\"bouncer\"");
    expect_oauth_error(token_request(&admin, None, &[GRANT]).await, 401, "invalid_client").await;
    let password = token_request(&admin, Some((&id, &secret)), &[("grant_type", "password")]).await;
    expect_oauth_error(password, 400, "unsupported_grant_type").await;
    let twice = token_request(&admin, Some((&id, &secret)), &[GRANT, ("client_secret", &secret)]).await;
    expect_oauth_error(twice, 400, "invalid_request").await;
    let json_body =
        admin.http.post(admin.url("/oauth/token")).json(&json!({"grant_type": "client_credentials"}));
    expect_oauth_error(json_body.send().await.unwrap(), 400, "invalid_request").await;

    // The admin API is for users: a client's token is not a session.
    expect_problem(admin.get_bearer("/users/me", &access).await, 401, "invalid-token").await;

    // Deleted: no more tokens; everything audited, no secret in any record.
    let deleted = admin.http.delete(admin.url(&format!("/admin/clients/{id}"))).bearer_auth(&root).send();
    assert_eq!(deleted.await.unwrap().status(), 204);
    expect_oauth_error(token_request(&admin, Some((&id, &secret)), &[GRANT]).await, 401, "invalid_client")
        .await;
    expect_problem(admin.get_bearer(&format!("/admin/clients/{id}"), &root).await, 404, "not-found").await;
    let audit =
        expect_json(admin.get_bearer(&format!("/admin/audit?subject={id}&limit=100"), &root).await, 200)
            .await;
    let actions: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    for expected in [
        ("client.created", "success"),
        ("oauth.token.issued", "success"),
        ("oauth.token.issued", "failure"),
        ("client.deleted", "success"),
    ] {
        assert!(actions.contains(&expected), "{expected:?} missing from {actions:?}");
    }
    assert!(!audit.to_string().contains(&secret), "no secret in the audit log");
    assert!(!admin.logs().contains(&secret), "no secret in the logs");
}

async fn a_rotated_secret_overlaps_then_stops(backend: Backend) {
    for (overlap, old_still_works) in [("1h", true), ("0s", false)] {
        let admin = Admin::start_with(backend, &format!("  client_secret_overlap: {overlap}\n")).await;
        let root = admin_token(&admin).await;
        let created = create_client(&admin, &root, json!({"name": "svc", "roles": ["service"]})).await;
        let id = created["client_id"].as_str().unwrap().to_owned();
        let old = created["client_secret"].as_str().unwrap().to_owned();
        let rotated = admin.post_bearer(&format!("/admin/clients/{id}/secret"), &root, json!({})).await;
        let rotated = expect_json(rotated, 200).await;
        let new = rotated["client_secret"].as_str().unwrap();
        assert_ne!(new, old);
        assert!(rotated["previous_secrets_valid_until"].is_string(), "{rotated}");
        expect_json(token_request(&admin, Some((&id, new)), &[GRANT]).await, 200).await;
        let with_old = token_request(&admin, Some((&id, &old)), &[GRANT]).await;
        if old_still_works {
            expect_json(with_old, 200).await;
        } else {
            expect_oauth_error(with_old, 401, "invalid_client").await;
        }
        let unknown = format!("/admin/clients/{}/secret", uuid::Uuid::now_v7());
        expect_problem(admin.post_bearer(&unknown, &root, json!({})).await, 404, "not-found").await;
    }
}

async fn wrong_secrets_are_throttled_per_client(backend: Backend) {
    let admin = Admin::start_with(backend, "  login_throttle:\n    max_failures: 3\n").await;
    let root = admin_token(&admin).await;
    let created = create_client(&admin, &root, json!({"name": "svc", "roles": ["service"]})).await;
    let id = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    let wrong = "B".repeat(43);
    for _ in 0..3 {
        expect_oauth_error(token_request(&admin, Some((&id, &wrong)), &[GRANT]).await, 401, "invalid_client")
            .await;
    }
    // Throttled now, even with the right secret: a guesser cannot tell.
    let headers =
        expect_oauth_error(token_request(&admin, Some((&id, &secret)), &[GRANT]).await, 429, "slow_down")
            .await;
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    // Another client is not affected by this one's failures.
    let other = create_client(&admin, &root, json!({"name": "other", "roles": ["service"]})).await;
    let (other_id, other_secret) =
        (other["client_id"].as_str().unwrap(), other["client_secret"].as_str().unwrap());
    expect_json(token_request(&admin, Some((other_id, other_secret)), &[GRANT]).await, 200).await;
}
