//! Mints access tokens for the load benchmarks, so the peers (HAProxy,
//! nginx) verify exactly the claims the gateway does and 1,000 distinct
//! users need no 1,000 Argon2 logins.
//!
//! ```text
//! mint_tokens eddsa KEYS_DIR ISS AUD COUNT   # signed with the admin's newest key
//! mint_tokens hs256 SECRET ISS AUD           # one token
//! mint_tokens es256 KEY.pem ISS AUD          # one token (PKCS#8 EC P-256 key)
//! ```
//! Tokens go to stdout, one per line.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use uuid::Uuid;

fn claims(iss: &str, aud: &str, n: usize) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({
        "iss": iss, "aud": aud, "sub": Uuid::now_v7(), "sid": Uuid::now_v7(),
        "roles": ["user"], "email": format!("load{n}@example.com"),
        "iat": now, "nbf": now, "exp": now + 3600, "jti": Uuid::now_v7(),
    })
}

fn header(alg: Algorithm, kid: Option<String>) -> Header {
    let mut h = Header::new(alg);
    h.typ = Some("at+jwt".into());
    h.kid = kid;
    h
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: mint_tokens eddsa KEYS_DIR ISS AUD COUNT | hs256 SECRET ISS AUD | es256 KEY.pem ISS AUD";
    let [kind, source, iss, aud, rest @ ..] = args.as_slice() else { panic!("{usage}") };
    match kind.as_str() {
        "eddsa" => {
            let count: usize = rest.first().and_then(|c| c.parse().ok()).expect(usage);
            let mut pems: Vec<_> = std::fs::read_dir(source)
                .expect("keys dir")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                .collect();
            pems.sort();
            let newest = pems.last().expect("a KID.pem in the keys dir");
            let kid = newest.file_stem().unwrap().to_string_lossy().into_owned();
            let key =
                EncodingKey::from_ed_pem(&std::fs::read(newest).unwrap()).expect("an Ed25519 PKCS#8 key");
            for n in 0..count {
                println!(
                    "{}",
                    encode(&header(Algorithm::EdDSA, Some(kid.clone())), &claims(iss, aud, n), &key).unwrap()
                );
            }
        }
        "hs256" => {
            let key = EncodingKey::from_secret(source.as_bytes());
            println!("{}", encode(&header(Algorithm::HS256, None), &claims(iss, aud, 0), &key).unwrap());
        }
        "es256" => {
            let key =
                EncodingKey::from_ec_pem(&std::fs::read(source).unwrap()).expect("an EC P-256 PKCS#8 key");
            println!("{}", encode(&header(Algorithm::ES256, None), &claims(iss, aud, 0), &key).unwrap());
        }
        _ => panic!("{usage}"),
    }
}
