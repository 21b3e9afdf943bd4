//! Ed25519 signing keys: files in `keys_dir`, the JWKS, signing and verifying.
//!
//! Each key is `KID.pem` (PKCS#8 v1 PEM as RFC 8410 §7 writes it — the
//! 48-byte form `openssl genpkey -algorithm ed25519` makes, which OpenSSL
//! 3.0 and Python `cryptography` read — mode 0600). A kid starts with its UTC
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
    pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes, spki::der::pem::LineEnding},
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
    let pem = v1_pem(&SigningKey::from_bytes(&seed)).map_err(|e| file_err(dir, e))?;
    let path = dir.join(format!("{kid}.pem"));
    write_private(&path, pem.as_bytes(), true)?;
    Ok(kid)
}

/// The key as PKCS#8 v1 PEM: the private key alone, without the optional
/// public key of RFC 5958's v2 (which OpenSSL 3.0 refuses as "unsupported").
fn v1_pem(key: &SigningKey) -> Result<zeroize::Zeroizing<String>, String> {
    KeypairBytes { secret_key: key.to_bytes(), public_key: None }
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode key: {e}"))
}

/// Writes a private file with mode 0600, synced. `create_new` for a new
/// key (never overwrite one); otherwise the bytes go to a temporary file
/// that is renamed over `path`, so a crash leaves the old file or the new
/// one, never half of either.
fn write_private(path: &Path, bytes: &[u8], create_new: bool) -> Result<(), KeyError> {
    let target = if create_new {
        path.to_owned()
    } else {
        // Not `*.pem`, so a directory listing never takes it for a key.
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
        path.with_file_name(format!(".{name}.tmp"))
    };
    if !create_new {
        let _ = fs::remove_file(&target);
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&target).map_err(|e| file_err(&target, e))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(|e| file_err(&target, e))?;
    if !create_new {
        fs::rename(&target, path).map_err(|e| {
            let _ = fs::remove_file(&target);
            file_err(path, format!("cannot replace: {e}"))
        })?;
        // The rename itself must survive a crash too.
        if let Some(dir) = path.parent() {
            let _ = fs::File::open(dir).and_then(|d| d.sync_all());
        }
    }
    Ok(())
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
    let pem = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(|e| file_err(path, e))?);
    let signing = SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| file_err(path, format!("not an Ed25519 PKCS#8 PEM key: {e}")))?;
    let v1 = v1_pem(&signing).map_err(|e| file_err(path, e))?;
    if *v1 != *pem {
        upgrade_to_v1(path, &v1);
    }
    let encoding = EncodingKey::from_ed_pem(v1.as_bytes()).map_err(|e| file_err(path, e))?;
    let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    let decoding = DecodingKey::from_ed_components(&x).map_err(|e| file_err(path, e))?;
    Ok(Key { kid, created, encoding, decoding, x })
}

/// Rewrites a key file written by an older Bouncer (PKCS#8 v2, with the
/// public key) in the v1 form standard tools read. The key is the same, so
/// every replica sharing the directory may do this at once; a read-only
/// directory (a mounted Secret) keeps the old file, which still loads.
fn upgrade_to_v1(path: &Path, v1: &str) {
    match write_private(path, v1.as_bytes(), false) {
        Ok(()) => tracing::info!(path = %path.display(), "rewrote signing key as PKCS#8 v1 (same key)"),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot rewrite signing key as PKCS#8 v1; it keeps working, but OpenSSL 3.0 cannot read the file"
        ),
    }
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

    /// RFC 8410 §7's v1 encoding: version 0, the Ed25519 OID, the 32-byte
    /// seed, and nothing after it (no public key).
    const V1_PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

    fn der_of(path: &Path) -> Vec<u8> {
        let pem = fs::read_to_string(path).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    }

    #[test]
    fn keys_are_written_as_pkcs8_v1() {
        let dir = tempfile::tempdir().unwrap();
        KeyStore::open(dir.path(), TTL, DELAY, OffsetDateTime::now_utc()).unwrap();
        let files = list_key_files(dir.path()).unwrap();
        let der = der_of(&files[0]);
        assert_eq!(der.len(), 48, "the 48-byte v1 form, got {} bytes", der.len());
        assert_eq!(der[..16], V1_PREFIX, "version 0 and the Ed25519 OID");
        assert!(fs::read_to_string(&files[0]).unwrap().starts_with("-----BEGIN PRIVATE KEY-----\n"));
    }

    #[test]
    fn a_v2_key_from_an_older_release_loads_and_is_rewritten_as_v1() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        // What earlier releases wrote: RFC 5958 v2 with the public key.
        let v2 = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let path = dir.path().join("20260101T000000.000Z-0a0b0c0d.pem");
        fs::write(&path, v2.as_bytes()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(der_of(&path).len() > 48, "the fixture is the longer v2 form");
        let now = datetime!(2026-05-01 08:00 UTC);
        let store = KeyStore::open(dir.path(), TTL, DELAY, now).unwrap();
        assert_eq!(der_of(&path).len(), 48, "rewritten in place as v1");
        assert_eq!(der_of(&path)[..16], V1_PREFIX);
        assert_eq!(
            SigningKey::from_pkcs8_pem(&fs::read_to_string(&path).unwrap()).unwrap().to_bytes(),
            key.to_bytes(),
            "the same key"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left behind: {names:?}");
        // Tokens still sign and verify, with the public key the JWKS had before.
        let token = store.sign(&claims(now), now).unwrap();
        assert!(store.verify(&token, &expect(), now).is_ok());
        let x = store.jwks(now).keys[0].x.clone();
        assert_eq!(x, URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()));
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
