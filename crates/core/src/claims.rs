//! Access-token claims: what the admin service signs and what verifiers check.
//!
//! Signature checking belongs to the crates that hold keys; this module owns
//! the claim rules, with `now` passed in, so issuing and validating are unit
//! tested without a clock or a key.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The JOSE `typ` of an access token (RFC 9068).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Clock skew tolerated on `nbf` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// Largest token a verifier will look at, in bytes, before any crypto.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The claims of a Bouncer access token: a user's (with a session and an
/// email) or a service client's (`client_id`, RFC 9068 §2.2; neither of
/// the others).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: Audience,
    /// The user id, or the client id.
    pub sub: Uuid,
    /// The session (refresh-token family) a user's token was minted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Set (to `sub`) on a client-credentials token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Uuid>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: Uuid,
}

/// `aud` may be one string or an array (RFC 7519 §4.1.3); we issue a string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

/// What a token is checked against.
#[derive(Clone, Debug)]
pub struct Expectations {
    pub issuer: String,
    pub audience: String,
}

/// Why a token's claims were refused. Shown only as RFC 6750 `invalid_token`
/// to clients; the variant goes to debug logs.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
}

/// Inputs for a new access token.
#[derive(Clone, Debug)]
pub struct NewAccessToken<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub email: &'a str,
    pub roles: &'a [String],
    pub ttl: Duration,
    pub jti: Uuid,
}

/// Inputs for a new client-credentials access token.
#[derive(Clone, Debug)]
pub struct NewClientToken<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub client_id: Uuid,
    pub roles: &'a [String],
    pub ttl: Duration,
    pub jti: Uuid,
}

impl AccessClaims {
    /// Builds the claims of a token valid from `now` for `ttl`.
    pub fn issue(new: NewAccessToken<'_>, now: OffsetDateTime) -> Self {
        let iat = now.unix_timestamp();
        Self {
            iss: new.issuer.to_owned(),
            aud: Audience::One(new.audience.to_owned()),
            sub: new.user_id,
            sid: Some(new.session_id),
            roles: new.roles.to_vec(),
            email: Some(new.email.to_owned()),
            client_id: None,
            iat,
            nbf: iat,
            exp: iat.saturating_add(new.ttl.as_secs() as i64),
            jti: new.jti,
        }
    }

    /// Builds the claims of a client-credentials token valid from `now`
    /// for `ttl`, acting with `roles` (the granted scope).
    pub fn issue_client(new: NewClientToken<'_>, now: OffsetDateTime) -> Self {
        let iat = now.unix_timestamp();
        Self {
            iss: new.issuer.to_owned(),
            aud: Audience::One(new.audience.to_owned()),
            sub: new.client_id,
            sid: None,
            roles: new.roles.to_vec(),
            email: None,
            client_id: Some(new.client_id),
            iat,
            nbf: iat,
            exp: iat.saturating_add(new.ttl.as_secs() as i64),
            jti: new.jti,
        }
    }

    /// Checks issuer, audience and the time claims. `exp` gets no leeway:
    /// a token is dead the second it says it is.
    pub fn validate(&self, expect: &Expectations, now: OffsetDateTime) -> Result<(), ClaimError> {
        let now = now.unix_timestamp();
        let leeway = LEEWAY.as_secs() as i64;
        if self.iss != expect.issuer {
            return Err(ClaimError::WrongIssuer);
        }
        if !self.aud.contains(&expect.audience) {
            return Err(ClaimError::WrongAudience);
        }
        if now >= self.exp {
            return Err(ClaimError::Expired);
        }
        if self.nbf > now + leeway {
            return Err(ClaimError::NotYetValid);
        }
        if self.iat > now + leeway {
            return Err(ClaimError::IssuedInFuture);
        }
        Ok(())
    }

    /// Seconds until expiry, for `expires_in`.
    pub fn expires_in(&self, now: OffsetDateTime) -> i64 {
        (self.exp - now.unix_timestamp()).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn expect() -> Expectations {
        Expectations { issuer: "http://idp".into(), audience: "bouncer".into() }
    }

    fn claims(now: OffsetDateTime) -> AccessClaims {
        AccessClaims::issue(
            NewAccessToken {
                issuer: "http://idp",
                audience: "bouncer",
                user_id: Uuid::nil(),
                session_id: Uuid::max(),
                email: "a@example.com",
                roles: &["user".to_owned()],
                ttl: Duration::from_secs(900),
                jti: Uuid::nil(),
            },
            now,
        )
    }

    #[test]
    fn issue_sets_every_claim() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let c = claims(now);
        assert_eq!(
            (c.iat, c.nbf, c.exp),
            (now.unix_timestamp(), now.unix_timestamp(), now.unix_timestamp() + 900)
        );
        let json = serde_json::to_value(&c).unwrap();
        for claim in ["iss", "aud", "sub", "sid", "roles", "email", "iat", "nbf", "exp", "jti"] {
            assert!(json.get(claim).is_some(), "missing claim {claim}");
        }
        assert_eq!(json["aud"], "bouncer");
        assert!(json.get("client_id").is_none(), "a user's token names no client: {json}");
        assert_eq!(c.expires_in(now), 900);
    }

    #[test]
    fn a_client_token_has_client_id_and_no_session_or_email() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let client = Uuid::from_u128(7);
        let c = AccessClaims::issue_client(
            NewClientToken {
                issuer: "http://idp",
                audience: "bouncer",
                client_id: client,
                roles: &["service".to_owned()],
                ttl: Duration::from_secs(600),
                jti: Uuid::nil(),
            },
            now,
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!((&json["sub"], &json["client_id"]), (&json!(client), &json!(client)));
        assert!(json.get("sid").is_none() && json.get("email").is_none(), "{json}");
        assert_eq!(c.validate(&expect(), now), Ok(()));
        // And it reads back as the same claims (what every verifier does).
        assert_eq!(serde_json::from_value::<AccessClaims>(json).unwrap(), c);
    }

    #[test]
    fn validates_times_with_leeway_except_exp() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let c = claims(now);
        assert_eq!(c.validate(&expect(), now), Ok(()));
        assert_eq!(c.validate(&expect(), now + time::Duration::seconds(899)), Ok(()));
        assert_eq!(c.validate(&expect(), now + time::Duration::seconds(900)), Err(ClaimError::Expired));
        // A verifier whose clock is 30 s behind still accepts; 31 s is too far.
        assert_eq!(c.validate(&expect(), now - time::Duration::seconds(30)), Ok(()));
        assert_eq!(c.validate(&expect(), now - time::Duration::seconds(31)), Err(ClaimError::NotYetValid));
        let mut future_iat = c.clone();
        future_iat.nbf -= 100;
        future_iat.iat += 31;
        assert_eq!(future_iat.validate(&expect(), now), Err(ClaimError::IssuedInFuture));
    }

    #[test]
    fn checks_issuer_and_audience() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let mut c = claims(now);
        c.iss = "http://evil".into();
        assert_eq!(c.validate(&expect(), now), Err(ClaimError::WrongIssuer));
        let mut c = claims(now);
        c.aud = Audience::Many(vec!["other".into(), "bouncer".into()]);
        assert_eq!(c.validate(&expect(), now), Ok(()));
        c.aud = Audience::One("other".into());
        assert_eq!(c.validate(&expect(), now), Err(ClaimError::WrongAudience));
    }
}
