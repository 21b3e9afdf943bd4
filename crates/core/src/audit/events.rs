//! What Bouncer audits: one variant per action, with the facts its record
//! is built from, and one place that turns each into its subject, outcome,
//! actor and details. Handlers and both store backends only say *what*
//! happened; nobody else writes an action name or a details object.

use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Action, AuditContext, AuditEvent, Outcome};

/// An audited change, as facts. Borrowed, so building one costs nothing
/// until [`Audited::event`] renders it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audited<'a> {
    /// Self-service signup; the new user is the actor.
    UserSignup {
        user: Uuid,
        email: &'a str,
        roles: &'a [String],
    },
    /// Created by an operator (`bouncer user add`).
    UserCreated {
        user: Uuid,
        email: &'a str,
        roles: &'a [String],
    },
    LoginSucceeded {
        user: Uuid,
        session: Uuid,
    },
    /// A refused login. `user` is `None` for an unknown email; the caller
    /// is anonymous whatever the context says.
    LoginFailed {
        user: Option<Uuid>,
        email_key: &'a str,
        reason: LoginFailure,
    },
    Refreshed {
        user: Uuid,
        session: Uuid,
    },
    /// An already-rotated refresh token came back: someone replayed it.
    RefreshReuseDetected {
        user: Uuid,
        session: Uuid,
    },
    LoggedOut {
        user: Uuid,
        session: Uuid,
    },
    LoggedOutEverywhere {
        user: Uuid,
        revoked_sessions: &'a [Uuid],
    },
    PasswordChanged {
        user: Uuid,
        revoked_sessions: &'a [Uuid],
    },
    /// A password change refused because the current password was wrong.
    PasswordChangeRefused {
        user: Uuid,
    },
    RolesChanged {
        user: Uuid,
        before: &'a [String],
        after: &'a [String],
    },
    UserBanned {
        user: Uuid,
        reason: &'a str,
    },
    UserUnbanned {
        user: Uuid,
        was_banned: bool,
    },
    UserDeleted {
        user: Uuid,
        email: &'a str,
        roles: &'a [String],
    },
    RoleCreated {
        name: &'a str,
        description: &'a str,
    },
    RoleDeleted {
        name: &'a str,
        force: bool,
        holders: &'a [Uuid],
    },
    /// A 401/403/429 at a gateway (429s folded: `count` per bucket and minute).
    GatewayDenied(&'a GatewayDenial),
    ClientCreated {
        client: Uuid,
        name: &'a str,
        roles: &'a [String],
    },
    /// A new secret; the previous ones keep working until `overlap_until`.
    ClientSecretRotated {
        client: Uuid,
        overlap_until: OffsetDateTime,
    },
    ClientDeleted {
        client: Uuid,
        name: &'a str,
    },
    /// An access token issued to a client (the client is the actor).
    TokenIssued {
        client: Uuid,
        scope: &'a [String],
    },
    /// `POST /oauth/token` refused; `client` when the id named one.
    TokenRefused {
        client: Option<Uuid>,
        reason: &'static str,
    },
    ApiKeyCreated {
        key: Uuid,
        owner: Uuid,
        name: &'a str,
        prefix: &'a str,
        roles: &'a [String],
        expires_at: Option<OffsetDateTime>,
    },
    ApiKeyRevoked {
        key: Uuid,
        owner: Uuid,
        prefix: &'a str,
    },
}

/// Why a login was refused, as the audit log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginFailure {
    WrongPassword,
    UnknownEmail,
    /// The right password for a banned account.
    Banned,
}

impl LoginFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::WrongPassword => "wrong_password",
            LoginFailure::UnknownEmail => "unknown_email",
            LoginFailure::Banned => "banned",
        }
    }
}

/// A gateway's denial, as it travels to the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayDenial {
    pub status: u16,
    pub decision: String,
    pub route: String,
    pub method: String,
    /// The normalized path (never the query, which may hold secrets).
    pub path: String,
    /// The caller when the token was valid (403, 429).
    pub user_id: Option<String>,
    pub bucket: Option<String>,
    pub count: u32,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl Audited<'_> {
    pub fn action(&self) -> Action {
        match self {
            Audited::UserSignup { .. } => Action::UserSignup,
            Audited::UserCreated { .. } => Action::UserCreated,
            Audited::LoginSucceeded { .. } => Action::LoginSucceeded,
            Audited::LoginFailed { .. } => Action::LoginFailed,
            Audited::Refreshed { .. } => Action::Refresh,
            Audited::RefreshReuseDetected { .. } => Action::RefreshReuseDetected,
            Audited::LoggedOut { .. } | Audited::LoggedOutEverywhere { .. } => Action::Logout,
            Audited::PasswordChanged { .. } | Audited::PasswordChangeRefused { .. } => {
                Action::PasswordChanged
            }
            Audited::RolesChanged { .. } => Action::RolesChanged,
            Audited::UserBanned { .. } => Action::UserBanned,
            Audited::UserUnbanned { .. } => Action::UserUnbanned,
            Audited::UserDeleted { .. } => Action::UserDeleted,
            Audited::RoleCreated { .. } => Action::RoleCreated,
            Audited::RoleDeleted { .. } => Action::RoleDeleted,
            Audited::GatewayDenied(_) => Action::GatewayDenied,
            Audited::ClientCreated { .. } => Action::ClientCreated,
            Audited::ClientSecretRotated { .. } => Action::ClientSecretRotated,
            Audited::ClientDeleted { .. } => Action::ClientDeleted,
            Audited::TokenIssued { .. } | Audited::TokenRefused { .. } => Action::OAuthTokenIssued,
            Audited::ApiKeyCreated { .. } => Action::ApiKeyCreated,
            Audited::ApiKeyRevoked { .. } => Action::ApiKeyRevoked,
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            Audited::LoginFailed { reason: LoginFailure::Banned, .. }
            | Audited::RefreshReuseDetected { .. }
            | Audited::GatewayDenied(_) => Outcome::Denied,
            Audited::LoginFailed { .. }
            | Audited::PasswordChangeRefused { .. }
            | Audited::TokenRefused { .. } => Outcome::Failure,
            _ => Outcome::Success,
        }
    }

    /// Who the record names as the actor: the user themself for what only
    /// they can do (sign up, log in, refresh, log out with their token),
    /// nobody for what an anonymous caller tried, and otherwise whoever the
    /// context says (the authenticated caller, an admin, `cli`).
    fn actor(&self, ctx: &AuditContext) -> Option<String> {
        match self {
            Audited::UserSignup { user, .. }
            | Audited::LoginSucceeded { user, .. }
            | Audited::Refreshed { user, .. }
            | Audited::LoggedOut { user, .. } => Some(user.to_string()),
            Audited::TokenIssued { client, .. } => Some(client.to_string()),
            Audited::LoginFailed { .. }
            | Audited::RefreshReuseDetected { .. }
            | Audited::TokenRefused { .. } => None,
            Audited::GatewayDenied(d) => Some(d.user_id.clone().unwrap_or_else(|| "gateway".into())),
            _ => ctx.actor.clone(),
        }
    }

    fn subject(&self) -> Option<String> {
        match self {
            Audited::UserSignup { user, .. }
            | Audited::UserCreated { user, .. }
            | Audited::LoginSucceeded { user, .. }
            | Audited::Refreshed { user, .. }
            | Audited::RefreshReuseDetected { user, .. }
            | Audited::LoggedOut { user, .. }
            | Audited::LoggedOutEverywhere { user, .. }
            | Audited::PasswordChanged { user, .. }
            | Audited::PasswordChangeRefused { user }
            | Audited::RolesChanged { user, .. }
            | Audited::UserBanned { user, .. }
            | Audited::UserUnbanned { user, .. }
            | Audited::UserDeleted { user, .. } => Some(user.to_string()),
            Audited::LoginFailed { user, .. } => user.map(|u| u.to_string()),
            Audited::RoleCreated { name, .. } | Audited::RoleDeleted { name, .. } => Some((*name).to_owned()),
            Audited::GatewayDenied(d) => d.user_id.clone(),
            Audited::ClientCreated { client, .. }
            | Audited::ClientSecretRotated { client, .. }
            | Audited::ClientDeleted { client, .. }
            | Audited::TokenIssued { client, .. } => Some(client.to_string()),
            Audited::TokenRefused { client, .. } => client.map(|c| c.to_string()),
            // Listed under their owner, so a user's audit trail shows their keys.
            Audited::ApiKeyCreated { owner, .. } | Audited::ApiKeyRevoked { owner, .. } => {
                Some(owner.to_string())
            }
        }
    }

    /// The details object; never a secret.
    fn details(&self) -> Value {
        match self {
            Audited::UserSignup { email, roles, .. } | Audited::UserCreated { email, roles, .. } => {
                json!({ "email": email, "roles": roles })
            }
            Audited::LoginSucceeded { session, .. }
            | Audited::Refreshed { session, .. }
            | Audited::RefreshReuseDetected { session, .. }
            | Audited::LoggedOut { session, .. } => json!({ "session_id": session }),
            Audited::LoginFailed { email_key, reason, .. } => {
                json!({ "email": email_key, "reason": reason.as_str() })
            }
            Audited::LoggedOutEverywhere { revoked_sessions, .. } => {
                json!({ "all_sessions": true, "revoked_sessions": revoked_sessions })
            }
            Audited::PasswordChanged { revoked_sessions, .. } => {
                json!({ "revoked_sessions": revoked_sessions })
            }
            Audited::PasswordChangeRefused { .. } => json!({ "reason": "wrong_current_password" }),
            Audited::RolesChanged { before, after, .. } => json!({ "before": before, "after": after }),
            Audited::UserBanned { reason, .. } => json!({ "reason": reason }),
            Audited::UserUnbanned { was_banned, .. } => json!({ "was_banned": was_banned }),
            Audited::UserDeleted { email, roles, .. } => json!({ "email": email, "roles": roles }),
            Audited::RoleCreated { description, .. } => json!({ "description": description }),
            Audited::RoleDeleted { force, holders, .. } => json!({ "force": force, "holders": holders }),
            Audited::GatewayDenied(d) => json!({
                "status": d.status,
                "decision": d.decision,
                "route": d.route,
                "method": d.method,
                "path": d.path,
                "bucket": d.bucket,
                "count": d.count,
            }),
            Audited::ClientCreated { name, roles, .. } => json!({ "name": name, "roles": roles }),
            Audited::ClientSecretRotated { overlap_until, .. } => {
                json!({ "previous_secrets_valid_until": rfc3339(*overlap_until) })
            }
            Audited::ClientDeleted { name, .. } => json!({ "name": name }),
            Audited::TokenIssued { scope, .. } => {
                json!({ "grant_type": "client_credentials", "scope": scope })
            }
            Audited::TokenRefused { reason, .. } => {
                json!({ "grant_type": "client_credentials", "reason": reason })
            }
            Audited::ApiKeyCreated { key, name, prefix, roles, expires_at, .. } => json!({
                "key_id": key,
                "name": name,
                "prefix": prefix,
                "roles": roles,
                "expires_at": expires_at.map(rfc3339),
            }),
            Audited::ApiKeyRevoked { key, prefix, .. } => json!({ "key_id": key, "prefix": prefix }),
        }
    }

    /// The record of this change, done at `at` in `ctx` (ip, user agent,
    /// request id, and the actor where the change does not decide it).
    pub fn event(&self, ctx: &AuditContext, at: OffsetDateTime) -> AuditEvent {
        let ctx = AuditContext { actor: self.actor(ctx), ..ctx.clone() };
        ctx.event(at, self.action(), self.subject(), self.outcome(), &self.details())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const AT: OffsetDateTime = datetime!(2026-01-01 10:00 UTC);

    fn ctx(actor: Option<&str>) -> AuditContext {
        AuditContext { actor: actor.map(str::to_owned), ip: Some("192.0.2.1".into()), ..Default::default() }
    }

    #[test]
    fn each_change_names_its_action_actor_subject_outcome_and_details() {
        let (user, session) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let u = user.to_string();
        let roles = vec!["user".to_owned()];
        let admin = Some("admin-7");
        let (sessions, holders) = ([session], [user]);
        // (change, the context's actor) → (action, actor, subject, outcome, details)
        type Expected<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a str, &'a str);
        let cases: Vec<(Audited, Option<&str>, Expected)> = vec![
            (
                Audited::UserSignup { user, email: "a@example.com", roles: &roles },
                None,
                (
                    "user.signup",
                    Some(&u),
                    Some(&u),
                    "success",
                    r#"{"email":"a@example.com","roles":["user"]}"#,
                ),
            ),
            (
                Audited::LoginFailed {
                    user: None,
                    email_key: "a@example.com",
                    reason: LoginFailure::UnknownEmail,
                },
                Some("ignored"),
                (
                    "auth.login.failed",
                    None,
                    None,
                    "failure",
                    r#"{"email":"a@example.com","reason":"unknown_email"}"#,
                ),
            ),
            (
                Audited::LoginFailed {
                    user: Some(user),
                    email_key: "a@example.com",
                    reason: LoginFailure::Banned,
                },
                None,
                (
                    "auth.login.failed",
                    None,
                    Some(&u),
                    "denied",
                    r#"{"email":"a@example.com","reason":"banned"}"#,
                ),
            ),
            (
                Audited::Refreshed { user, session },
                None,
                (
                    "auth.refresh",
                    Some(&u),
                    Some(&u),
                    "success",
                    r#"{"session_id":"00000000-0000-0000-0000-000000000002"}"#,
                ),
            ),
            (
                Audited::RefreshReuseDetected { user, session },
                None,
                (
                    "auth.refresh.reuse_detected",
                    None,
                    Some(&u),
                    "denied",
                    r#"{"session_id":"00000000-0000-0000-0000-000000000002"}"#,
                ),
            ),
            (
                Audited::LoggedOutEverywhere { user, revoked_sessions: &sessions },
                Some(&u),
                (
                    "auth.logout",
                    Some(&u),
                    Some(&u),
                    "success",
                    r#"{"all_sessions":true,"revoked_sessions":["00000000-0000-0000-0000-000000000002"]}"#,
                ),
            ),
            (
                Audited::PasswordChangeRefused { user },
                Some(&u),
                (
                    "user.password.changed",
                    Some(&u),
                    Some(&u),
                    "failure",
                    r#"{"reason":"wrong_current_password"}"#,
                ),
            ),
            (
                Audited::RoleDeleted { name: "ops", force: true, holders: &holders },
                admin,
                (
                    "role.deleted",
                    admin,
                    Some("ops"),
                    "success",
                    r#"{"force":true,"holders":["00000000-0000-0000-0000-000000000001"]}"#,
                ),
            ),
        ];
        for (change, actor, (action, want_actor, subject, outcome, details)) in cases {
            let e = change.event(&ctx(actor), AT);
            let got = (
                e.action.as_str(),
                e.actor.as_deref(),
                e.subject.as_deref(),
                e.outcome.as_str(),
                e.details.as_str(),
            );
            assert_eq!(got, (action, want_actor, subject, outcome, details), "{change:?}");
            assert_eq!(e.ip.as_deref(), Some("192.0.2.1"), "the context's ip is kept");
        }
    }

    #[test]
    fn gateway_denials_name_the_caller_or_the_gateway() {
        let mut d = GatewayDenial {
            status: 401,
            decision: "invalid_token".into(),
            route: "orders".into(),
            method: "GET".into(),
            path: "/api/orders".into(),
            user_id: None,
            bucket: None,
            count: 1,
        };
        let e = Audited::GatewayDenied(&d).event(&AuditContext::default(), AT);
        assert_eq!((e.actor.as_deref(), e.subject.as_deref()), (Some("gateway"), None));
        d.user_id = Some("u1".into());
        let e = Audited::GatewayDenied(&d).event(&AuditContext::default(), AT);
        assert_eq!(
            (e.actor.as_deref(), e.subject.as_deref(), e.outcome),
            (Some("u1"), Some("u1"), Outcome::Denied)
        );
    }
}
