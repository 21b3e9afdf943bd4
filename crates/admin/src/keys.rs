//! Ed25519 signing keys: files in `keys_dir`, the JWKS, signing and verifying.
//!
//! Each key is `KID.pem` (PKCS#8 PEM, mode 0600). A kid starts with its UTC
//! creation time, so kids sort by age. The newest key that is at least
//! `key_activation_delay` old signs: a new key is published in the JWKS
//! first, so that every admin replica has loaded it and every gateway can
//! fetch it before the first token it signed arrives. Older keys stay in the
//! JWKS until every token they could have signed has expired.
//! `bouncer keys rotate` only ever adds a file, and running services pick it
//! up on their next reload (every [`RELOAD_INTERVAL`], or on SIGHUP).

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bouncer_core::{
    claims::{ACCESS_TOKEN_TYPE, AccessClaims, Expectations, LEEWAY},
    jwt::TokenError,
};
use ed25519_dalek::{
    SigningKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;
use time::{OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description};
use utoipa::ToSchema;

/// How often a running service re-reads `keys_dir`.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Beyond the access-token lifetime, how long a superseded key stays
/// published: covers a signer that has not reloaded yet plus clock leeway.
const RETENTION_MARGIN: Duration = Duration::from_secs(RELOAD_INTERVAL.as_secs() + LEEWAY.as_secs() + 60);

const KID_TIME: &[BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second].[subsecond digits:3]Z");
const KID_TIME_LEN: usize = "20260101T000000.000Z".len();

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("cannot sign token: {0}")]
    Sign(String),
}

fn file_err(path: &Path, reason: impl ToString) -> KeyError {
    KeyError::File { path: path.to_owned(), reason: reason.to_string() }
}

/// One loaded key.
struct Key {
    kid: String,
    created: OffsetDateTime,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Public key, base64url, as published in the JWKS.
    x: String,
}

/// The keys of one directory listing, oldest first.
struct KeyRing {
    keys: Vec<Key>,
}

/// The live key set; cheap to read on every request, swapped on reload.
pub struct KeyStore {
    dir: PathBuf,
    access_ttl: Duration,
    activation_delay: Duration,
    ring: ArcSwap<KeyRing>,
}

impl KeyRing {
    /// Index of the key that signs at `now`: the newest one past its
    /// activation delay, or the oldest when none is (a fresh install).
    fn signer(&self, activation_delay: Duration, now: OffsetDateTime) -> Option<usize> {
        let active = self.keys.iter().rposition(|k| k.created + activation_delay <= now);
        active.or((!self.keys.is_empty()).then_some(0))
    }
}

impl KeyStore {
    /// Loads `dir`, creating it (0700) and a first key when there is none.
    pub fn open(
        dir: &Path,
        access_ttl: Duration,
        activation_delay: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, KeyError> {
        ensure_dir(dir)?;
        if list_key_files(dir)?.is_empty() {
            let kid = create_key(dir, now)?;
            tracing::info!(%kid, dir = %dir.display(), "created first signing key");
        }
        let ring = load_ring(dir)?;
        Ok(Self { dir: dir.to_owned(), access_ttl, activation_delay, ring: ArcSwap::from_pointee(ring) })
    }

    /// Re-reads the directory; returns whether the set of kids changed. A
    /// directory that fails to load leaves the current keys in place.
    pub fn reload(&self) -> Result<bool, KeyError> {
        let fresh = load_ring(&self.dir)?;
        let current = self.ring.load();
        let same = fresh.keys.len() == current.keys.len()
            && fresh.keys.iter().zip(&current.keys).all(|(a, b)| a.kid == b.kid);
        if !same {
            self.ring.store(Arc::new(fresh));
        }
        Ok(!same)
    }

    /// The kid that signs new tokens at `now`.
    pub fn signing_kid(&self, now: OffsetDateTime) -> String {
        let ring = self.ring.load();
        ring.signer(self.activation_delay, now).map(|i| ring.keys[i].kid.clone()).unwrap_or_default()
    }

    /// Signs access-token claims (`alg: EdDSA`, `typ: at+jwt`) with the key
    /// active at `now`.
    pub fn sign(&self, claims: &AccessClaims, now: OffsetDateTime) -> Result<String, KeyError> {
        let ring = self.ring.load();
        let index = ring
            .signer(self.activation_delay, now)
            .ok_or_else(|| KeyError::Sign("no signing key loaded".into()))?;
        let key = &ring.keys[index];
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Verifies an access token with any loaded key (see
    /// [`bouncer_core::jwt::verify`] for the rules). The error is a reason for logs.
    pub fn verify(
        &self,
        token: &str,
        expect: &Expectations,
        now: OffsetDateTime,
    ) -> Result<AccessClaims, TokenError> {
        let ring = self.ring.load();
        bouncer_core::jwt::verify(
            token,
            |kid| ring.keys.iter().find(|k| k.kid == kid).map(|k| &k.decoding),
            expect,
            now,
        )
    }

    /// The JWKS: keys not yet signing, the signing key, and every older key
    /// whose tokens may still be alive at `now` (a key stops signing when its
    /// successor activates, and its tokens live `access_ttl` after that).
    pub fn jwks(&self, now: OffsetDateTime) -> Jwks {
        let ring = self.ring.load();
        let keep = self.activation_delay + self.access_ttl + RETENTION_MARGIN;
        let keys = ring
            .keys
            .iter()
            .enumerate()
            .filter(|(i, _)| match ring.keys.get(i + 1) {
                None => true,
                Some(successor) => now < successor.created + keep,
            })
            .map(|(_, k)| Jwk {
                kty: "OKP",
                crv: "Ed25519",
                key_use: "sig",
                alg: "EdDSA",
                kid: k.kid.clone(),
                x: k.x.clone(),
            })
            .collect();
        Jwks { keys }
    }
}

/// A JSON Web Key Set (RFC 7517): the keys that verify access tokens.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One Ed25519 public key (RFC 8037).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Jwk {
    #[schema(value_type = String, pattern = "^OKP$")]
    pub kty: &'static str,
    #[schema(value_type = String, pattern = "^Ed25519$")]
    pub crv: &'static str,
    #[serde(rename = "use")]
    #[schema(value_type = String, pattern = "^sig$")]
    pub key_use: &'static str,
    #[schema(value_type = String, pattern = "^EdDSA$")]
    pub alg: &'static str,
    /// Starts with the key's UTC creation time, so kids sort by age.
    pub kid: String,
    /// The public key, base64url without padding (32 bytes).
    #[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
    pub x: String,
}

/// Adds a new signing key to `dir` and returns its kid. Never removes one.
pub fn rotate(dir: &Path, now: OffsetDateTime) -> Result<String, KeyError> {
    ensure_dir(dir)?;
    create_key(dir, now)
}

fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| file_err(dir, format!("cannot create key directory: {e}")))
}

fn create_key(dir: &Path, now: OffsetDateTime) -> Result<String, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| file_err(dir, format!("no randomness for a key: {e}")))?;
    let mut suffix = [0u8; 4];
    getrandom::fill(&mut suffix).map_err(|e| file_err(dir, format!("no randomness for a kid: {e}")))?;
    let stamp = now.to_offset(time::UtcOffset::UTC).format(KID_TIME).map_err(|e| file_err(dir, e))?;
    let kid = format!("{stamp}-{}", hex::encode(suffix));
    let pem = SigningKey::from_bytes(&seed)
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| file_err(dir, format!("cannot encode key: {e}")))?;
    let path = dir.join(format!("{kid}.pem"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(|e| file_err(&path, e))?;
    file.write_all(pem.as_bytes()).and_then(|_| file.sync_all()).map_err(|e| file_err(&path, e))?;
    Ok(kid)
}

fn list_key_files(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| file_err(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pem"))
        .collect();
    files.sort();
    Ok(files)
}

fn load_ring(dir: &Path) -> Result<KeyRing, KeyError> {
    let files = list_key_files(dir)?;
    if files.is_empty() {
        return Err(file_err(dir, "no signing keys (KID.pem); run `bouncer keys rotate`"));
    }
    let keys = files.iter().map(|p| load_key(p)).collect::<Result<Vec<_>, _>>()?;
    Ok(KeyRing { keys })
}

fn load_key(path: &Path) -> Result<Key, KeyError> {
    let kid = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
    let created = kid
        .get(..KID_TIME_LEN)
        .and_then(|t| time::PrimitiveDateTime::parse(t, KID_TIME).ok())
        .map(|t| t.assume_utc())
        .ok_or_else(|| {
            file_err(path, "file name must be <kid>.pem with a kid made by `bouncer keys rotate`")
        })?;
    warn_if_readable_by_others(path);
    let pem = fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let signing = SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| file_err(path, format!("not an Ed25519 PKCS#8 PEM key: {e}")))?;
    let encoding = EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| file_err(path, e))?;
    let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    let decoding = DecodingKey::from_ed_components(&x).map_err(|e| file_err(path, e))?;
    Ok(Key { kid, created, encoding, decoding, x })
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "signing key is readable by group or others; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;
    use bouncer_core::claims::NewAccessToken;
    use time::macros::datetime;
    use uuid::Uuid;

    const TTL: Duration = Duration::from_secs(900);
    const DELAY: Duration = Duration::from_secs(90);

    fn expect() -> Expectations {
        Expectations { issuer: "http://idp".into(), audience: "bouncer".into() }
    }

    fn claims(now: OffsetDateTime) -> AccessClaims {
        AccessClaims::issue(
            NewAccessToken {
                issuer: "http://idp",
                audience: "bouncer",
                user_id: Uuid::new_v4(),
                session_id: Uuid::new_v4(),
                email: "a@example.com",
                roles: &["user".to_owned()],
                ttl: TTL,
                jti: Uuid::new_v4(),
            },
            now,
        )
    }

    #[test]
    fn first_start_creates_a_private_key_and_signs_verifiable_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let now = datetime!(2026-05-01 08:00 UTC);
        let store = KeyStore::open(&keys_dir, TTL, DELAY, now).unwrap();
        let files = list_key_files(&keys_dir).unwrap();
        assert_eq!(files.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::metadata(&keys_dir).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let c = claims(now);
        let token = store.sign(&c, now).unwrap();
        assert_eq!(store.verify(&token, &expect(), now), Ok(c));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(
            header.kid,
            Some(store.signing_kid(now)),
            "a fresh install signs with its only key at once"
        );
        assert!(store.signing_kid(now).starts_with("20260501T080000.000Z-"));
    }

    #[test]
    fn verification_refuses_tampering_and_wrong_claims() {
        let dir = tempfile::tempdir().unwrap();
        let now = datetime!(2026-05-01 08:00 UTC);
        let store = KeyStore::open(dir.path(), TTL, DELAY, now).unwrap();
        let token = store.sign(&claims(now), now).unwrap();
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut forged = claims(now);
        forged.roles = vec!["admin".into()];
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert!(store.verify(&format!("{head}.{forged_payload}.{sig}"), &expect(), now).is_err());
        assert_eq!(
            store.verify(&token, &expect(), now + TTL),
            Err(TokenError::Claims(bouncer_core::claims::ClaimError::Expired))
        );
        let other = Expectations { issuer: "http://idp".into(), audience: "other".into() };
        assert_eq!(
            store.verify(&token, &other, now),
            Err(TokenError::Claims(bouncer_core::claims::ClaimError::WrongAudience))
        );
        // alg=none and HS256 with the public key as secret are both refused.
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
        assert!(
            store
                .verify(&format!("{none_header}.{}.", rest.split_once('.').unwrap().0), &expect(), now)
                .is_err()
        );
        let mut hs = Header::new(Algorithm::HS256);
        hs.typ = Some("at+jwt".into());
        hs.kid = Some(store.signing_kid(now));
        let x = serde_json::to_value(store.jwks(now)).unwrap()["keys"][0]["x"].as_str().unwrap().to_owned();
        let hs_token =
            jsonwebtoken::encode(&hs, &claims(now), &EncodingKey::from_secret(x.as_bytes())).unwrap();
        assert_eq!(store.verify(&hs_token, &expect(), now), Err(TokenError::Algorithm));
    }

    #[test]
    fn a_rotated_key_is_published_first_then_signs_and_the_old_one_retires() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = datetime!(2026-05-01 08:00 UTC);
        let store = KeyStore::open(dir.path(), TTL, DELAY, t0).unwrap();
        let old_kid = store.signing_kid(t0);
        let old_token = store.sign(&claims(t0), t0).unwrap();
        let t1 = t0 + Duration::from_secs(3600);
        let new_kid = rotate(dir.path(), t1).unwrap();
        assert!(store.reload().unwrap(), "reload must notice the new key");
        assert!(!store.reload().unwrap(), "a second reload changes nothing");
        assert!(new_kid > old_kid, "kids sort by creation time");
        let kids = |now| -> Vec<String> { store.jwks(now).keys.into_iter().map(|k| k.kid).collect() };
        // Published at once, signing only after the activation delay.
        assert_eq!(kids(t1), [old_kid.clone(), new_kid.clone()]);
        assert_eq!(store.signing_kid(t1), old_kid);
        assert_eq!(store.signing_kid(t1 + DELAY - Duration::from_secs(1)), old_kid);
        let t2 = t1 + DELAY;
        assert_eq!(store.signing_kid(t2), new_kid);
        assert!(
            store.verify(&old_token, &expect(), t0 + Duration::from_secs(1)).is_ok(),
            "old tokens keep verifying"
        );
        // The old key stays published until its last token has expired.
        assert_eq!(kids(t2 + TTL), [old_kid.clone(), new_kid.clone()]);
        assert_eq!(kids(t2 + TTL + RETENTION_MARGIN), [new_kid]);
    }

    #[test]
    fn two_fresh_keys_sign_with_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = datetime!(2026-05-01 08:00 UTC);
        let store = KeyStore::open(dir.path(), TTL, DELAY, t0).unwrap();
        let first = store.signing_kid(t0);
        rotate(dir.path(), t0 + Duration::from_secs(1)).unwrap();
        store.reload().unwrap();
        assert_eq!(store.signing_kid(t0 + Duration::from_secs(2)), first);
    }

    #[test]
    fn a_foreign_file_name_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("mykey.pem"), "x").unwrap();
        let err =
            KeyStore::open(dir.path(), TTL, DELAY, OffsetDateTime::now_utc()).err().unwrap().to_string();
        assert!(err.contains("mykey.pem"), "{err}");
    }
}
