//! Access-token verification, shared by every verifier (the admin's own
//! bearer check and the gateway). Pure: keys are looked up through the
//! caller's closure and `now` is an argument.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use time::OffsetDateTime;

use crate::claims::{ACCESS_TOKEN_TYPE, AccessClaims, ClaimError, Expectations, MAX_TOKEN_BYTES};

/// Why a token was refused. Clients only ever see `invalid_token`; the
/// variant is for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token larger than 8 KiB")]
    TooLarge,
    #[error("undecodable header")]
    Malformed,
    #[error("algorithm is not EdDSA")]
    Algorithm,
    #[error("typ is not at+jwt")]
    Type,
    #[error("header names a key source or critical extension")]
    ForbiddenHeader,
    #[error("no kid")]
    NoKid,
    #[error("unknown kid")]
    UnknownKid,
    #[error("bad signature or claims")]
    Signature,
    #[error("{0}")]
    Claims(#[from] ClaimError),
}

/// The `kid` of a token whose header parses, for deciding whether to
/// refresh keys before verifying.
pub fn kid_of(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

/// Verifies an access token: size, header rules (EdDSA only, `typ`
/// `at+jwt`, a `kid`, no `jku`/`jwk`/`x5u`/`crit`), the signature by the
/// key `key_for(kid)` returns, then issuer, audience and times at `now`.
pub fn verify<'k>(
    token: &str,
    key_for: impl FnOnce(&str) -> Option<&'k DecodingKey>,
    expect: &Expectations,
    now: OffsetDateTime,
) -> Result<AccessClaims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Algorithm);
    }
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE) || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(TokenError::Type);
    }
    if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() || header.crit.is_some() {
        return Err(TokenError::ForbiddenHeader);
    }
    let kid = header.kid.ok_or(TokenError::NoKid)?;
    let key = key_for(&kid).ok_or(TokenError::UnknownKid)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    // Times, issuer and audience are checked by AccessClaims::validate
    // against the `now` we are given, not jsonwebtoken's own clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<AccessClaims>(token, key, &validation).map_err(|_| TokenError::Signature)?;
    data.claims.validate(expect, now)?;
    Ok(data.claims)
}

impl TokenError {
    /// A static description, for error types that carry `&'static str`.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::TooLarge => "token larger than 8 KiB",
            TokenError::Malformed => "undecodable header",
            TokenError::Algorithm => "algorithm is not EdDSA",
            TokenError::Type => "typ is not at+jwt",
            TokenError::ForbiddenHeader => "header names a key source or critical extension",
            TokenError::NoKid => "no kid",
            TokenError::UnknownKid => "unknown kid",
            TokenError::Signature => "bad signature or claims",
            TokenError::Claims(ClaimError::Expired) => "expired",
            TokenError::Claims(ClaimError::NotYetValid) => "not yet valid",
            TokenError::Claims(ClaimError::IssuedInFuture) => "issued in the future",
            TokenError::Claims(ClaimError::WrongIssuer) => "wrong issuer",
            TokenError::Claims(ClaimError::WrongAudience) => "wrong audience",
        }
    }
}
