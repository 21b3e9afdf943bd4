//! Micro benchmarks of the gateway's pure per-request steps: path
//! normalization, route matching and token verification. Each group puts
//! the step next to a baseline measured in the same run (copying the path;
//! decoding the token's header only), so the output reads as a ratio.
//!
//! `cargo bench -p bouncer-benches --bench pipeline`

use std::hint::black_box;

use bouncer_core::{
    claims::{AccessClaims, Expectations, NewAccessToken},
    jwt,
    path::normalize_path,
    routes::RouteTable,
};
use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use time::OffsetDateTime;
use uuid::Uuid;

fn paths(c: &mut Criterion) {
    let table = RouteTable::from_yaml(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/routes.yaml")).unwrap(),
        "routes.yaml",
    )
    .unwrap();
    let mut g = c.benchmark_group("normalize+match");
    g.bench_function("baseline: copy the path", |b| b.iter(|| black_box("/api/orders/17/items").to_owned()));
    g.bench_function("normal path", |b| {
        b.iter(|| {
            let p = normalize_path(black_box("/api/orders/17/items")).unwrap();
            black_box(matches!(
                table.match_request("GET", &p),
                bouncer_core::routes::RouteMatch::Found { .. }
            ))
        })
    });
    g.bench_function("path needing rewrite", |b| {
        b.iter(|| {
            let p = normalize_path(black_box("//api/./orders/x/../%31%37/items")).unwrap();
            black_box(matches!(
                table.match_request("GET", &p),
                bouncer_core::routes::RouteMatch::Found { .. }
            ))
        })
    });
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let signing = SigningKey::from_bytes(&[7; 32]);
    let pem = signing.to_pkcs8_pem(Default::default()).unwrap();
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    let decoding = DecodingKey::from_ed_components(&x).unwrap();
    let now = OffsetDateTime::now_utc();
    let claims = AccessClaims::issue(
        NewAccessToken {
            issuer: "http://idp",
            audience: "bouncer",
            user_id: Uuid::now_v7(),
            session_id: Uuid::now_v7(),
            email: "bench@example.com",
            roles: &["user".to_owned()],
            ttl: std::time::Duration::from_secs(900),
            jti: Uuid::new_v4(),
        },
        now,
    );
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some("k1".into());
    let token =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap()).unwrap();
    let expect = Expectations { issuer: "http://idp".into(), audience: "bouncer".into() };
    assert!(jwt::verify(&token, |_| Some(&decoding), &expect, now).is_ok());

    let mut g = c.benchmark_group("token verification");
    g.bench_function("baseline: decode the header only", |b| {
        b.iter(|| jsonwebtoken::decode_header(black_box(&token)).unwrap())
    });
    g.bench_function("EdDSA verify + claims", |b| {
        b.iter(|| jwt::verify(black_box(&token), |_| Some(&decoding), &expect, now).unwrap())
    });
    g.finish();
}

criterion_group!(benches, paths, tokens);
criterion_main!(benches);
