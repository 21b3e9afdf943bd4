//! The decision as a table, in the manner of linkerd2-proxy's policy tests
//! (`app/inbound/src/policy/http/tests.rs`): plain request heads, no
//! session, no socket. Each row is (gateway state, method, request target,
//! credential) → outcome; the route follows from the path, against the one
//! table in [`ROUTES`]. Tokens are signed here with a key the gateway's key
//! set holds (loaded in-process, without HTTP); the limiter is in memory.

use std::sync::OnceLock;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bouncer_core::{
    claims::NewAccessToken,
    revocation::{Revocation, RevokeReason},
    routes::RouteTable,
};
use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use uuid::Uuid;

use super::*;

const ROUTES: &str = r#"
upstreams:
  app: { targets: [127.0.0.1:9000] }
routes:
  - { name: public, path: /public/**, upstream: app, auth: none }
  - { name: feed, path: /feed/**, upstream: app, auth: optional }
  - { name: orders-read, path: /api/orders/**, methods: [GET, HEAD], upstream: app, roles: [user, admin] }
  - { name: orders-write, path: /api/orders/**, methods: [POST], upstream: app, roles: [admin] }
  - { name: profile, path: "/api/users/{id}/**", upstream: app, roles: [admin], owner: id }
  - name: limited
    path: /limited/**
    upstream: app
    auth: none
    rate_limit: { key: ip, burst: 2, per_minute: 1 }
  - { name: keys, path: /keys/**, upstream: app, roles: [user], credentials: [api_key] }
  - { name: both, path: /both/**, upstream: app, roles: [user], credentials: [jwt, api_key] }
"#;
/// `limited`'s burst: requests admitted before the 429.
const BURST: usize = 2;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "bouncer";
const KID: &str = "k1";
const ALICE: &str = "00000000-0000-0000-0000-0000000a11ce";
const ALICE_EMAIL: &str = "alice@example.com";
const BOB: &str = "00000000-0000-0000-0000-000000000b0b";
/// A user banned after their token was issued.
const BANNED: Uuid = Uuid::from_u128(0xbad);
/// A session that was logged out.
const LOGGED_OUT: Uuid = Uuid::from_u128(0x106);
/// A service client (client-credentials token), and one deleted since.
const SERVICE: &str = "00000000-0000-0000-0000-00000000c11e";
const DELETED_CLIENT: Uuid = Uuid::from_u128(0xde1);
const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

/// What the gateway has loaded when the request arrives.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Keys and revocations loaded.
    Ready,
    /// No verification keys were ever loaded.
    NoKeys,
    /// No revocation snapshot yet.
    RevocationsLoading,
    /// Ready, and the same request was admitted [`BURST`] times just before.
    AfterBurst,
    /// Ready, but the admin's API keys have not arrived.
    ApiKeysLoading,
}

/// Alice's API keys: one usable, one expired, one the set never heard of.
#[derive(Clone, Copy, Debug)]
enum Key {
    Valid,
    Expired,
    Unknown,
}

impl Key {
    fn key(self) -> bouncer_core::credential::ApiKey {
        let n = self as u8 + 1;
        bouncer_core::credential::ApiKey::from_random([n; 4], [n; 32])
    }
}

/// The credential a request carries.
#[derive(Clone, Copy, Debug)]
enum Token {
    None,
    /// A valid token of Alice with these roles.
    Alice(&'static [&'static str]),
    /// Alice's, issued an hour ago and expired since.
    Expired,
    /// Alice's, for another audience.
    WrongAudience,
    /// Alice's, under a key id the key set does not hold.
    UnknownKid,
    /// Valid, of a session that was logged out since.
    LoggedOut,
    /// Valid, of a user banned since.
    Banned,
    /// Valid, with an email that cannot travel as a header value.
    UnsafeEmail,
    /// `Bearer` and something that is not a JWT.
    Garbage,
    /// `Basic` credentials instead of a bearer token.
    Basic,
    /// Two `Authorization` headers, both valid.
    TwoHeaders,
    /// A valid token in `?access_token=`.
    InQuery,
    /// A service client's token (no session, no email) with these roles.
    Client(&'static [&'static str]),
    /// A client's token, the client deleted since.
    DeletedClient,
    /// One of Alice's API keys as `Authorization: Bearer bk_…`.
    KeyBearer(Key),
    /// The same in `X-API-Key`.
    KeyHeader(Key),
    /// A key in `X-API-Key` and Alice's token in `Authorization`.
    KeyBesideJwt,
}

/// What the row expects.
#[derive(Debug)]
enum Expect {
    /// Admitted to `route`, forwarded as `path`; as Alice with these roles
    /// (the identity headers injected), or anonymous.
    Admit { route: &'static str, path: &'static str, alice: Option<&'static [&'static str]> },
    /// Admitted as the service client with these roles: its id, no email.
    AdmitClient { route: &'static str, path: &'static str, roles: &'static [&'static str] },
    /// Admitted as Alice by her API key: her id, the key's roles, no email.
    AdmitKey { route: &'static str, path: &'static str },
    /// Refused with exactly this denial.
    Deny(Denial),
    /// Refused as `label` with exactly these response headers, for a denial
    /// whose data depends on the clock.
    DenyWith(&'static str, &'static [(&'static str, &'static str)]),
}

fn admit(route: &'static str, path: &'static str) -> Expect {
    Expect::Admit { route, path, alice: None }
}

fn admit_alice(route: &'static str, path: &'static str, roles: &'static [&'static str]) -> Expect {
    Expect::Admit { route, path, alice: Some(roles) }
}

fn deny(denial: Denial) -> Expect {
    Expect::Deny(denial)
}

fn allow(methods: &[&str]) -> Denial {
    Denial::MethodNotAllowed { allow: methods.iter().map(|m| (*m).to_owned()).collect() }
}

const USER: &[&str] = &["user"];
const ADMIN: &[&str] = &["admin"];
const NO_ROLES: &[&str] = &[];

#[rustfmt::skip]
fn cases() -> Vec<(State, &'static str, &'static str, Token, Expect)> {
    use State::*;
    use Token as T;
    vec![
        // Default deny, methods and the request target (step 1 and 2).
        (Ready, "GET",     "/nope",                        T::None,           deny(Denial::NoRoute)),
        (Ready, "GET",     "/nope",                        T::Alice(ADMIN),   deny(Denial::NoRoute)),
        (Ready, "DELETE",  "/api/orders/17",               T::Alice(ADMIN),   deny(allow(&["GET", "HEAD", "POST"]))),
        (Ready, "get",     "/api/orders/17",               T::Alice(USER),    deny(Denial::BadMethod)),
        (Ready, "POST",    "/api/orders?_method=DELETE",   T::Alice(ADMIN),   deny(Denial::MethodOverride)),
        (Ready, "POST",    "/api/orders?a=1&%5Fmethod=PUT",T::Alice(ADMIN),   deny(Denial::MethodOverride)),
        (Ready, "GET",     "//api/./orders/x/../17",       T::Alice(USER),    admit_alice("orders-read", "/api/orders/17", USER)),
        (Ready, "GET",     "/api/orders/%31%37?page=2",    T::Alice(USER),    admit_alice("orders-read", "/api/orders/17", USER)),
        (Ready, "GET",     "http://gw.test/public/a//b",   T::None,           admit("public", "/public/a/b")),
        (Ready, "GET",     "/public/a%2Fb",                T::None,           deny(Denial::InvalidPath)),
        (Ready, "GET",     "/public/../../etc/passwd",     T::None,           deny(Denial::InvalidPath)),
        (Ready, "OPTIONS", "*",                            T::None,           deny(Denial::InvalidPath)),
        // auth: none — no token looked at, whatever is sent.
        (Ready, "GET",     "/public/x",                    T::None,           admit("public", "/public/x")),
        (Ready, "GET",     "/public/x",                    T::Garbage,        admit("public", "/public/x")),
        (Ready, "GET",     "/public/x",                    T::Alice(ADMIN),   admit("public", "/public/x")),
        (Ready, "GET",     "/public/x",                    T::TwoHeaders,     admit("public", "/public/x")),
        // auth: optional — no token is anonymous, a bad one is refused.
        (Ready, "GET",     "/feed/today",                  T::None,           admit("feed", "/feed/today")),
        (Ready, "GET",     "/feed/today",                  T::Alice(NO_ROLES),admit_alice("feed", "/feed/today", NO_ROLES)),
        (Ready, "GET",     "/feed/today",                  T::Garbage,        deny(Denial::InvalidToken)),
        (Ready, "GET",     "/feed/today",                  T::Expired,        deny(Denial::InvalidToken)),
        (Ready, "GET",     "/feed/today",                  T::Banned,         deny(Denial::Revoked)),
        // auth: required, roles any-of (step 4 and 6).
        (Ready, "GET",     "/api/orders/17",               T::None,           deny(Denial::NoToken)),
        (Ready, "GET",     "/api/orders/17",               T::Alice(USER),    admit_alice("orders-read", "/api/orders/17", USER)),
        (Ready, "HEAD",    "/api/orders/17",               T::Alice(ADMIN),   admit_alice("orders-read", "/api/orders/17", ADMIN)),
        (Ready, "GET",     "/api/orders/17",               T::Alice(&["guest", "admin"]), admit_alice("orders-read", "/api/orders/17", &["guest", "admin"])),
        (Ready, "GET",     "/api/orders/17",               T::Alice(&["guest"]), deny(Denial::Forbidden)),
        (Ready, "GET",     "/api/orders/17",               T::Alice(NO_ROLES),deny(Denial::Forbidden)),
        (Ready, "POST",    "/api/orders",                  T::Alice(USER),    deny(Denial::Forbidden)),
        (Ready, "POST",    "/api/orders",                  T::Alice(ADMIN),   admit_alice("orders-write", "/api/orders", ADMIN)),
        // Tokens that are refused.
        (Ready, "GET",     "/api/orders/17",               T::Expired,        deny(Denial::InvalidToken)),
        (Ready, "GET",     "/api/orders/17",               T::WrongAudience,  deny(Denial::InvalidToken)),
        (Ready, "GET",     "/api/orders/17",               T::UnknownKid,     deny(Denial::InvalidToken)),
        (Ready, "GET",     "/api/orders/17",               T::Garbage,        deny(Denial::InvalidToken)),
        (Ready, "GET",     "/api/orders/17",               T::Basic,          deny(Denial::NotBearer)),
        (Ready, "GET",     "/api/orders/17",               T::TwoHeaders,     deny(Denial::AmbiguousCredentials)),
        (Ready, "GET",     "/api/orders/17",               T::InQuery,        deny(Denial::AmbiguousCredentials)),
        (Ready, "GET",     "/api/orders/17",               T::UnsafeEmail,    deny(Denial::UnsafeClaims)),
        // Service clients: the same token with client_id, no sid, no email.
        (Ready, "GET",     "/api/orders/17",               T::Client(&["user"]), Expect::AdmitClient { route: "orders-read", path: "/api/orders/17", roles: USER }),
        (Ready, "POST",    "/api/orders",                  T::Client(&["user"]), deny(Denial::Forbidden)),
        (Ready, "GET",     "/api/orders/17",               T::DeletedClient,  deny(Denial::Revoked)),
        // API keys: only on routes whose credentials list them.
        (Ready, "GET",     "/keys/x",                      T::KeyBearer(Key::Valid),  Expect::AdmitKey { route: "keys", path: "/keys/x" }),
        (Ready, "GET",     "/keys/x",                      T::KeyHeader(Key::Valid),  Expect::AdmitKey { route: "keys", path: "/keys/x" }),
        (Ready, "GET",     "/keys/x",                      T::KeyBearer(Key::Expired), deny(Denial::InvalidToken)),
        (Ready, "GET",     "/keys/x",                      T::KeyHeader(Key::Unknown), deny(Denial::InvalidToken)),
        (Ready, "GET",     "/keys/x",                      T::Alice(USER),    deny(Denial::InvalidToken)),
        (Ready, "GET",     "/keys/x",                      T::None,           deny(Denial::NoToken)),
        (Ready, "GET",     "/both/x",                      T::Alice(USER),    admit_alice("both", "/both/x", USER)),
        (Ready, "GET",     "/both/x",                      T::KeyHeader(Key::Valid),  Expect::AdmitKey { route: "both", path: "/both/x" }),
        (Ready, "GET",     "/both/x",                      T::KeyBesideJwt,    deny(Denial::AmbiguousCredentials)),
        (Ready, "GET",     "/api/orders/17",               T::KeyBearer(Key::Valid),  deny(Denial::InvalidToken)),
        (Ready, "GET",     "/api/orders/17",               T::KeyHeader(Key::Valid),  deny(Denial::NoToken)),
        (ApiKeysLoading, "GET", "/keys/x",                 T::KeyBearer(Key::Valid),  deny(Denial::NoApiKeys)),
        (ApiKeysLoading, "GET", "/both/x",                 T::Alice(USER),    admit_alice("both", "/both/x", USER)),
        // Revocations (step 5).
        (Ready, "GET",     "/api/orders/17",               T::LoggedOut,      deny(Denial::Revoked)),
        (Ready, "GET",     "/api/orders/17",               T::Banned,         deny(Denial::Revoked)),
        // The owner rule: {id} equal to the subject grants, besides the roles.
        (Ready, "GET",     "/api/users/00000000-0000-0000-0000-0000000a11ce/profile", T::Alice(USER),  admit_alice("profile", "/api/users/00000000-0000-0000-0000-0000000a11ce/profile", USER)),
        (Ready, "GET",     "/api/users/00000000-0000-0000-0000-000000000b0b/profile", T::Alice(USER),  deny(Denial::Forbidden)),
        (Ready, "GET",     "/api/users/00000000-0000-0000-0000-000000000b0b/profile", T::Alice(ADMIN), admit_alice("profile", "/api/users/00000000-0000-0000-0000-000000000b0b/profile", ADMIN)),
        (Ready, "GET",     "/api/users/00000000-0000-0000-0000-0000000a11ce/profile", T::None,         deny(Denial::NoToken)),
        // Never loaded → never accept: 503 where a token must be checked.
        (NoKeys, "GET",    "/api/orders/17",               T::Alice(USER),    deny(Denial::NoKeys)),
        (NoKeys, "GET",    "/feed/today",                  T::Alice(USER),    deny(Denial::NoKeys)),
        (NoKeys, "GET",    "/feed/today",                  T::None,           admit("feed", "/feed/today")),
        (NoKeys, "GET",    "/public/x",                    T::Alice(USER),    admit("public", "/public/x")),
        (RevocationsLoading, "GET", "/api/orders/17",      T::Alice(USER),    deny(Denial::NoRevocations)),
        (RevocationsLoading, "GET", "/feed/today",         T::None,           admit("feed", "/feed/today")),
        (RevocationsLoading, "GET", "/public/x",           T::Alice(USER),    admit("public", "/public/x")),
        // Rate limit (step 7): burst 2, one more per minute.
        (Ready,      "GET", "/limited/x",                  T::None,           admit("limited", "/limited/x")),
        (AfterBurst, "GET", "/limited/x",                  T::None,           Expect::DenyWith("rate_limited", &[
            ("retry-after", "60"), ("ratelimit-limit", "2"), ("ratelimit-remaining", "0"), ("ratelimit-reset", "120"),
        ])),
        (AfterBurst, "GET", "/limited/y",                  T::Alice(USER),    Expect::DenyWith("rate_limited", &[
            ("retry-after", "60"), ("ratelimit-limit", "2"), ("ratelimit-remaining", "0"), ("ratelimit-reset", "120"),
        ])),
    ]
}

#[tokio::test]
async fn the_pipeline_decides_every_row_of_the_table() {
    let cases = cases();
    let mut failures = Vec::new();
    for (i, (state, method, target, token, expect)) in cases.iter().enumerate() {
        let row = format!("row {i}: {state:?} {method} {target} with {token:?}");
        let pipeline = pipeline(*state);
        let req = request(method, target, *token);
        if *state == State::AfterBurst {
            for n in 0..BURST {
                let before = pipeline.decide(&req, Some(CLIENT)).await;
                if let Err(denial) = before.verdict {
                    failures.push(format!("{row}:\n  request {n} of the burst was refused: {denial:?}"));
                }
            }
        }
        let decided = pipeline.decide(&req, Some(CLIENT)).await;
        let got = Outcome::of(&decided, &pipeline.identity_names, expect);
        let expected = Outcome::expected(expect);
        if got != expected {
            failures.push(format!("{row}:\n  expected {expected:?}\n  got      {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows decided otherwise:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn client_identity_headers_are_stripped_on_every_route_and_never_injected() {
    let pipeline = pipeline(State::Ready);
    for (target, token) in [("/public/x", Token::None), ("/api/orders/17", Token::Alice(USER))] {
        let mut req = request("GET", target, token);
        req.append_header("X-User-Id", BOB).unwrap();
        req.append_header("x_user_roles", "admin").unwrap();
        req.append_header("X-HTTP-Method-Override", "DELETE").unwrap();
        req.append_header("Connection", "keep-alive, X-User-Email").unwrap();
        let decided = pipeline.decide(&req, Some(CLIENT)).await;
        let Ok(admit) = decided.verdict else { panic!("{target}: refused: {:?}", decided.verdict) };
        let mut stripped: Vec<&str> = admit.strip.iter().map(|n| n.as_str()).collect();
        stripped.sort_unstable();
        assert_eq!(
            stripped,
            ["x-http-method-override", "x-user-email", "x-user-id", "x_user_roles"],
            "{target}: what is stripped"
        );
        let injected: Vec<(String, String)> = decided
            .facts
            .identity
            .iter()
            .flat_map(|claims| pipeline.identity_names.injected(claims))
            .map(|(name, value)| (name.as_str().to_owned(), value.into_owned()))
            .collect();
        let from_the_token = match token {
            Token::Alice(_) => vec![
                ("x-user-id".to_owned(), ALICE.to_owned()),
                ("x-user-email".to_owned(), ALICE_EMAIL.to_owned()),
                ("x-user-roles".to_owned(), "user".to_owned()),
            ],
            _ => vec![],
        };
        assert_eq!(injected, from_the_token, "{target}: injected only from the token");
    }
    let plain = pipeline.decide(&request("GET", "/public/x", Token::None), Some(CLIENT)).await;
    assert!(
        plain.verdict.is_ok_and(|a| a.strip.is_empty() && a.strip.capacity() == 0),
        "nothing to strip, nothing allocated"
    );
}

#[tokio::test]
async fn a_denial_keeps_what_the_audit_record_needs() {
    let pipeline = pipeline(State::Ready);
    let decided =
        pipeline.decide(&request("GET", "/api/orders/17", Token::Alice(&["guest"])), Some(CLIENT)).await;
    assert_eq!(decided.verdict.as_ref().err(), Some(&Denial::Forbidden));
    assert_eq!(decided.facts.route.as_deref(), Some("orders-read"));
    assert_eq!(decided.facts.forward_path, "/api/orders/17");
    assert_eq!(decided.facts.identity.map(|c| c.sub.to_string()).as_deref(), Some(ALICE));

    let req = request("GET", "/limited/x", Token::None);
    for _ in 0..BURST {
        let admitted = pipeline.decide(&req, Some(CLIENT)).await;
        assert_eq!(admitted.facts.bucket.as_deref(), Some("limited:ip:192.0.2.7"));
        assert!(admitted.facts.rate.is_some(), "an admitted request carries RateLimit-* state too");
    }
    let limited = pipeline.decide(&req, Some(CLIENT)).await;
    assert!(matches!(limited.verdict, Err(Denial::RateLimited { .. })), "{:?}", limited.verdict);
    assert_eq!(limited.facts.bucket.as_deref(), Some("limited:ip:192.0.2.7"));

    let unmatched = pipeline.decide(&request("GET", "/a/./b", Token::None), Some(CLIENT)).await;
    assert_eq!((unmatched.facts.route, unmatched.facts.forward_path.as_str()), (None, "/a/b"));
}

/// An outcome in comparable form: the route, forwarded path and injected
/// identity of an admission, or the denial.
#[derive(Debug, PartialEq)]
enum Outcome {
    Admitted { route: String, path: String, identity: Option<Vec<(String, String)>> },
    Denied(Denial),
    DeniedWith(String, Vec<(String, String)>),
}

impl Outcome {
    fn expected(expect: &Expect) -> Self {
        match expect {
            Expect::Admit { route, path, alice } => Self::Admitted {
                route: (*route).to_owned(),
                path: (*path).to_owned(),
                identity: alice.map(|roles| {
                    vec![
                        ("x-user-id".to_owned(), ALICE.to_owned()),
                        ("x-user-email".to_owned(), ALICE_EMAIL.to_owned()),
                        ("x-user-roles".to_owned(), roles.join(",")),
                    ]
                }),
            },
            Expect::AdmitClient { route, path, roles } => Self::Admitted {
                route: (*route).to_owned(),
                path: (*path).to_owned(),
                identity: Some(vec![
                    ("x-user-id".to_owned(), SERVICE.to_owned()),
                    ("x-user-roles".to_owned(), roles.join(",")),
                ]),
            },
            Expect::AdmitKey { route, path } => Self::Admitted {
                route: (*route).to_owned(),
                path: (*path).to_owned(),
                identity: Some(vec![
                    ("x-user-id".to_owned(), ALICE.to_owned()),
                    ("x-user-roles".to_owned(), "user".to_owned()),
                ]),
            },
            Expect::Deny(denial) => Self::Denied(denial.clone()),
            Expect::DenyWith(label, headers) => Self::DeniedWith(
                (*label).to_owned(),
                headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
            ),
        }
    }

    /// `decided` in the form `expect` is written in.
    fn of(decided: &Decided, names: &IdentityNames, expect: &Expect) -> Self {
        match &decided.verdict {
            Ok(_) => Self::Admitted {
                route: decided.facts.route.clone().unwrap_or_default(),
                path: decided.facts.forward_path.clone(),
                identity: decided.facts.identity.as_ref().map(|claims| {
                    names.injected(claims).map(|(n, v)| (n.as_str().to_owned(), v.into_owned())).collect()
                }),
            },
            Err(denial) if matches!(expect, Expect::DenyWith(..)) => Self::DeniedWith(
                denial.label().to_owned(),
                denial.headers().into_iter().map(|(n, v)| (n.to_owned(), v.into_owned())).collect(),
            ),
            Err(denial) => Self::Denied(denial.clone()),
        }
    }
}

/// A pipeline over [`ROUTES`] in `state`, with fresh buckets and caches.
fn pipeline(state: State) -> Pipeline {
    let table = RouteTable::from_yaml(ROUTES, "routes.yaml").expect("the test routes are valid");
    let jwks = Jwks::in_process();
    if state != State::NoKeys {
        jwks.install(Box::new(|| keys().jwks.clone())).unwrap();
    }
    let revocations = RevocationSet::default();
    let now = OffsetDateTime::now_utc();
    revocations.apply(&Revocation::session(LOGGED_OUT, Uuid::from_u128(0x10), now, RevokeReason::Logout));
    // Deleting a client revokes its id like a ban revokes a user's.
    revocations.apply(&Revocation::user(
        DELETED_CLIENT,
        now + std::time::Duration::from_secs(10),
        RevokeReason::ClientDeleted,
    ));
    revocations.apply(&Revocation::user(
        BANNED,
        now + std::time::Duration::from_secs(10),
        RevokeReason::Banned,
    ));
    if state != State::RevocationsLoading {
        revocations.mark_ready();
    }
    Pipeline {
        table: Arc::new(ArcSwap::from_pointee(LoadedTable::resolve(table).unwrap())),
        jwks: Arc::new(jwks),
        revocations: Arc::new(revocations),
        expectations: Expectations { issuer: ISSUER.into(), audience: AUDIENCE.into() },
        verified: VerifiedTokens::default(),
        identity_names: IdentityNames::default(),
        limiter: Arc::new(RateLimiter::in_memory()),
        api_keys: Arc::new(api_keys(state, now)),
    }
}

/// Alice's keys as the admin would announce them (none yet while loading).
fn api_keys(state: State, now: OffsetDateTime) -> crate::api_keys::ApiKeySet {
    let set = crate::api_keys::ApiKeySet::default();
    if state == State::ApiKeysLoading {
        return set;
    }
    let usable = |key: Key, expires_at| bouncer_core::credential::UsableApiKey {
        id: Uuid::now_v7(),
        user_id: ALICE.parse().unwrap(),
        prefix: key.key().prefix().to_owned(),
        hash: key.key().hash(),
        roles: vec!["user".into()],
        expires_at,
    };
    set.apply(&bouncer_core::credential::KeyUpdate::All(vec![
        usable(Key::Valid, Some(now + std::time::Duration::from_secs(3600))),
        usable(Key::Expired, Some(now - std::time::Duration::from_secs(1))),
    ]));
    set
}

/// `method target` carrying `token`.
fn request(method: &str, target: &str, token: Token) -> RequestHeader {
    let alice = |roles| claims(ALICE.parse().unwrap(), ALICE_EMAIL, roles, AUDIENCE, 0);
    let bearer = |claims| format!("Bearer {}", mint(KID, claims));
    let (authorization, query) = match token {
        Token::None => (vec![], None),
        Token::Alice(roles) => (vec![bearer(alice(roles))], None),
        Token::Expired => {
            (vec![bearer(claims(ALICE.parse().unwrap(), ALICE_EMAIL, USER, AUDIENCE, -3600))], None)
        }
        Token::WrongAudience => {
            (vec![bearer(claims(ALICE.parse().unwrap(), ALICE_EMAIL, USER, "another-api", 0))], None)
        }
        Token::UnknownKid => (vec![format!("Bearer {}", mint("k-rotated-away", alice(USER)))], None),
        Token::LoggedOut => (vec![bearer(AccessClaims { sid: Some(LOGGED_OUT), ..alice(USER) })], None),
        Token::Banned => (vec![bearer(claims(BANNED, "banned@example.com", USER, AUDIENCE, 0))], None),
        Token::UnsafeEmail => {
            (vec![bearer(claims(ALICE.parse().unwrap(), "al\u{e9}@example.com", USER, AUDIENCE, 0))], None)
        }
        Token::Garbage => (vec!["Bearer not.a.jwt".to_owned()], None),
        Token::Basic => (vec![format!("Basic {}", URL_SAFE_NO_PAD.encode("alice:secret"))], None),
        Token::TwoHeaders => (vec![bearer(alice(USER)), bearer(alice(ADMIN))], None),
        Token::InQuery => (vec![], Some(format!("access_token={}", mint(KID, alice(USER))))),
        Token::Client(roles) => (vec![bearer(client_claims(SERVICE.parse().unwrap(), roles))], None),
        Token::DeletedClient => (vec![bearer(client_claims(DELETED_CLIENT, USER))], None),
        Token::KeyBearer(key) => (vec![format!("Bearer {}", key.key().expose())], None),
        Token::KeyHeader(_) | Token::KeyBesideJwt => {
            (if matches!(token, Token::KeyBesideJwt) { vec![bearer(alice(USER))] } else { vec![] }, None)
        }
    };
    let target = match query {
        Some(q) if target.contains('?') => format!("{target}&{q}"),
        Some(q) => format!("{target}?{q}"),
        None => target.to_owned(),
    };
    let mut req = RequestHeader::build(method, target.as_bytes(), None).unwrap();
    req.insert_header("host", "gw.test").unwrap();
    for value in authorization {
        req.append_header("authorization", value).unwrap();
    }
    match token {
        Token::KeyHeader(key) => req.insert_header("x-api-key", key.key().expose()).unwrap(),
        Token::KeyBesideJwt => req.insert_header("x-api-key", Key::Valid.key().expose()).unwrap(),
        _ => {}
    }
    req
}

/// A service client's claims, issued now for 10 minutes.
fn client_claims(client: Uuid, roles: &[&str]) -> AccessClaims {
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    AccessClaims::issue_client(
        bouncer_core::claims::NewClientToken {
            issuer: ISSUER,
            audience: AUDIENCE,
            client_id: client,
            roles: &roles,
            ttl: std::time::Duration::from_secs(600),
            jti: Uuid::now_v7(),
        },
        OffsetDateTime::now_utc(),
    )
}

/// Claims issued `offset_secs` from now (negative: in the past), valid for
/// 15 minutes.
fn claims(user: Uuid, email: &str, roles: &[&str], audience: &str, offset_secs: i64) -> AccessClaims {
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    AccessClaims::issue(
        NewAccessToken {
            issuer: ISSUER,
            audience,
            user_id: user,
            session_id: Uuid::from_u128(0x5e55),
            email,
            roles: &roles,
            ttl: std::time::Duration::from_secs(900),
            jti: Uuid::new_v4(),
        },
        OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs),
    )
}

/// An access token as the admin signs it, under key id `kid`.
fn mint(kid: &str, claims: AccessClaims) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &keys().signing).unwrap()
}

struct Keys {
    signing: EncodingKey,
    /// The JWKS document holding the verifying half as [`KID`].
    jwks: serde_json::Value,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = SigningKey::from_bytes(&[7; 32]);
        let pem = key.to_pkcs8_pem(Default::default()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
        Keys {
            signing: EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
            jwks: serde_json::json!({ "keys": [
                { "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": KID, "x": x }
            ]}),
        }
    })
}
