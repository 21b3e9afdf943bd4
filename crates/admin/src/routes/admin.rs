//! `/admin/*`: user, role and audit administration. Every handler takes an
//! [`AdminCaller`], so each route requires the `admin` role (401 without a
//! token, 403 without the role), and every change is audited by the store
//! in the change's own transaction.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use bouncer_core::{audit::AuditRecord, email::lookup_key, problem::FieldError, role::is_valid_role_name};
use bouncer_store::{AuditFilter, Role, User, UserFilter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    AppState,
    error::ApiError,
    extract::{AdminCaller, ClientInfo, JsonBody, QueryParams, storable_text},
    openapi::{
        Forbidden, MalformedRequest, NotFound, PROBLEM_JSON, PayloadTooLarge, ProblemSchema as Problem,
        Unauthenticated, Unavailable, UnsupportedMediaType, ValidationFailed,
    },
};

/// Default and largest page sizes of list endpoints.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

/// A user as administrators see it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AdminUser)]
pub struct AdminUserView {
    id: Uuid,
    email: String,
    roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    banned: bool,
    /// When the ban was made; `null` when not banned.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    banned_at: Option<OffsetDateTime>,
    /// Why; `null` when not banned.
    #[schema(required = true)]
    ban_reason: Option<String>,
}

impl From<User> for AdminUserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            roles: u.roles,
            created_at: u.created_at,
            banned: u.banned_at.is_some(),
            banned_at: u.banned_at,
            ban_reason: u.ban_reason,
        }
    }
}

/// One page of a list, in a stable order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// The query of `GET /admin/users`. Values arrive as text and are checked
/// by the handler, so a bad one is a `422` naming its field.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// Only users whose email starts with this, case-insensitively.
    #[param(pattern = r"^[^\x00]*$")]
    email: Option<String>,
    /// Page size, 1 to 200; default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    cursor: Option<String>,
}

/// Users in id (that is, creation) order.
#[utoipa::path(
    get,
    path = "/admin/users",
    tag = "admin",
    security(("bearer" = [])),
    params(UsersQuery),
    responses(
        (status = 200, description = "One page of users.", body = Page<AdminUserView>),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list_users(
    State(state): State<AppState>,
    _admin: AdminCaller,
    QueryParams(q): QueryParams<UsersQuery>,
) -> Result<Json<Page<AdminUserView>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref())?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            hyphenated_uuid(c).ok_or_else(|| ApiError::field("cursor", "not a cursor from a previous page"))
        })
        .transpose()?;
    if let Some(email) = &q.email {
        storable_text("email", email)?;
    }
    let email_prefix = q.email.as_deref().map(lookup_key).filter(|e| !e.is_empty());
    // One more than asked tells whether another page exists.
    let filter = UserFilter { email_prefix, after, limit: limit + 1 };
    let mut users = state.store.list_users(&filter).await?;
    let next_cursor = (users.len() > limit as usize).then(|| users[limit as usize - 1].id.to_string());
    users.truncate(limit as usize);
    Ok(Json(Page { items: users.into_iter().map(AdminUserView::from).collect(), next_cursor }))
}

/// One user.
#[utoipa::path(
    get,
    path = "/admin/users/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(UserId),
    responses(
        (status = 200, description = "The user.", body = AdminUserView),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn get_user(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<AdminUserView>, ApiError> {
    let id = path_id(&id)?;
    let user = state.store.user(id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(user.into()))
}

/// The user's roles, all of them: what is absent is removed.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RolesBody {
    /// Existing role names (`GET /admin/roles`).
    #[schema(inline, examples(json!(["user", "admin"])))]
    roles: Vec<RoleName>,
}

/// A role name: `[a-z][a-z0-9_-]{0,31}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(pattern = "^[a-z][a-z0-9_-]{0,31}$", example = "auditor")]
pub struct RoleName(pub(super) String);

/// Replaces a user's roles. Removing a role revokes every session of the
/// user at once; adding one revokes nothing (the next refresh carries it).
#[utoipa::path(
    put,
    path = "/admin/users/{id}/roles",
    tag = "admin",
    security(("bearer" = [])),
    params(UserId),
    request_body = RolesBody,
    responses(
        (status = 200, description = "The user, with the new roles.", body = AdminUserView),
        (status = 400, response = MalformedRequest),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`conflict`: an administrator removing their own `admin` role.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn set_roles(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RolesBody>,
) -> Result<Json<AdminUserView>, ApiError> {
    let id = path_id(&id)?;
    let roles: Vec<String> = body.roles.into_iter().map(|r| r.0).collect();
    if let Some(bad) = roles.iter().find(|r| !is_valid_role_name(r)) {
        return Err(ApiError::field("roles", format!("{bad:?} is not a role name")));
    }
    if id == admin.user.id && !roles.iter().any(|r| r == "admin") {
        return Err(ApiError::SelfLockout("remove own admin role"));
    }
    let now = OffsetDateTime::now_utc();
    let ctx = client.audit(Some(admin.user.id.to_string()));
    let (user, revoked) = state.store.set_roles(id, &roles, now, &ctx).await?;
    state.announce(&revoked);
    state.keys_changed([id]).await;
    state.metrics.audited();
    tracing::info!(user_id = %id, admin = %admin.user.id, roles = ?user.roles, "roles changed");
    Ok(Json(user.into()))
}

/// Why a user is banned (shown to administrators, audited).
#[derive(Debug, Deserialize, ToSchema)]
pub struct BanBody {
    /// 1 to 500 characters once surrounding whitespace is trimmed.
    // The pattern: at least one character `str::trim` keeps, and no NUL
    // (`extract::storable_text`).
    #[schema(
        max_length = 500,
        pattern = r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$",
        example = "chargeback fraud"
    )]
    reason: String,
}

/// Bans a user: every session revoked; login answers `403` after a correct
/// password, refresh `401`; gateways refuse the user's tokens within 1 s.
#[utoipa::path(
    post,
    path = "/admin/users/{id}/ban",
    tag = "admin",
    security(("bearer" = [])),
    params(UserId),
    request_body = BanBody,
    responses(
        (status = 200, description = "The banned user.", body = AdminUserView),
        (status = 400, response = MalformedRequest),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`already-banned`; or `conflict`: an administrator banning themselves.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn ban(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<BanBody>,
) -> Result<Json<AdminUserView>, ApiError> {
    let id = path_id(&id)?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::field("reason", "must be 1 to 500 characters"));
    }
    storable_text("reason", reason)?;
    if id == admin.user.id {
        return Err(ApiError::SelfLockout("ban oneself"));
    }
    let now = OffsetDateTime::now_utc();
    let ctx = client.audit(Some(admin.user.id.to_string()));
    let (user, revoked) = state.store.ban_user(id, reason, now, &ctx).await?;
    state.announce(&revoked);
    state.keys_changed([id]).await;
    state.metrics.audited();
    state.metrics.banned();
    tracing::info!(user_id = %id, admin = %admin.user.id, "user banned");
    Ok(Json(user.into()))
}

/// Lifts a ban (also answers the user when not banned).
#[utoipa::path(
    post,
    path = "/admin/users/{id}/unban",
    tag = "admin",
    security(("bearer" = [])),
    params(UserId),
    responses(
        (status = 200, description = "The user, not banned.", body = AdminUserView),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn unban(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<String>,
) -> Result<Json<AdminUserView>, ApiError> {
    let id = path_id(&id)?;
    let ctx = client.audit(Some(admin.user.id.to_string()));
    let user = state.store.unban_user(id, OffsetDateTime::now_utc(), &ctx).await?;
    state.keys_changed([id]).await;
    state.metrics.audited();
    tracing::info!(user_id = %id, admin = %admin.user.id, "user unbanned");
    Ok(Json(user.into()))
}

/// Deletes a user: sessions gone, audit history kept.
#[utoipa::path(
    delete,
    path = "/admin/users/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(UserId),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`conflict`: an administrator deleting themselves.", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn delete_user(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(&id)?;
    if id == admin.user.id {
        return Err(ApiError::SelfLockout("delete oneself"));
    }
    let ctx = client.audit(Some(admin.user.id.to_string()));
    let revoked = state.store.delete_user(id, OffsetDateTime::now_utc(), &ctx).await?;
    state.announce(&revoked);
    state.keys_changed([id]).await;
    state.metrics.audited();
    tracing::info!(user_id = %id, admin = %admin.user.id, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A role.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Role)]
pub struct RoleView {
    #[schema(example = "auditor")]
    name: String,
    description: String,
    /// `admin`, `user` and `service`, which cannot be deleted.
    builtin: bool,
}

/// Every role.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoleList {
    items: Vec<RoleView>,
}

/// Every role, built-in ones included.
#[utoipa::path(
    get,
    path = "/admin/roles",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The roles, by name.", body = RoleList),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list_roles(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<RoleList>, ApiError> {
    let items = state
        .store
        .roles()
        .await?
        .into_iter()
        .map(|r| RoleView { name: r.name, description: r.description, builtin: r.builtin })
        .collect();
    Ok(Json(RoleList { items }))
}

/// A new role.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewRoleBody {
    #[schema(pattern = "^[a-z][a-z0-9_-]{0,31}$", example = "auditor")]
    name: String,
    /// At most 200 characters, no U+0000; default empty.
    #[serde(default)]
    #[schema(max_length = 200, pattern = r"^[^\x00]*$")]
    description: String,
}

/// Creates a role.
#[utoipa::path(
    post,
    path = "/admin/roles",
    tag = "admin",
    security(("bearer" = [])),
    request_body = NewRoleBody,
    responses(
        (status = 201, description = "Created.", body = RoleView),
        (status = 400, response = MalformedRequest),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 409, description = "`role-exists`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn create_role(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    JsonBody(body): JsonBody<NewRoleBody>,
) -> Result<(StatusCode, Json<RoleView>), ApiError> {
    let mut errors = Vec::new();
    if !is_valid_role_name(&body.name) {
        errors.push(FieldError { field: "name".into(), message: "must match [a-z][a-z0-9_-]{0,31}".into() });
    }
    if body.description.chars().count() > 200 {
        errors.push(FieldError {
            field: "description".into(),
            message: "must be at most 200 characters".into(),
        });
    } else if let Err(e) = storable_text("description", &body.description) {
        errors.push(e);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let role = Role { name: body.name, description: body.description, builtin: false };
    let ctx = client.audit(Some(admin.user.id.to_string()));
    state.store.create_role(&role, OffsetDateTime::now_utc(), &ctx).await?;
    state.metrics.audited();
    Ok((
        StatusCode::CREATED,
        Json(RoleView { name: role.name, description: role.description, builtin: false }),
    ))
}

/// The query of `DELETE /admin/roles/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteRoleQuery {
    /// Also remove the role from the users who hold it (revoking their
    /// sessions); without it, a held role is `409 role-in-use`.
    force: Option<bool>,
}

/// Deletes a role.
#[utoipa::path(
    delete,
    path = "/admin/roles/{name}",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "The role; a name that cannot be a role is `404`.", pattern = "^[a-z][a-z0-9_-]{0,31}$"),
        DeleteRoleQuery,
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, description = "`builtin-role`: `admin`, `user` and `service` cannot be deleted; `role-in-use`: users hold it and `force` is not `true`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn delete_role(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<DeleteRoleQuery>,
) -> Result<StatusCode, ApiError> {
    if !is_valid_role_name(&name) {
        return Err(ApiError::NotFound);
    }
    let ctx = client.audit(Some(admin.user.id.to_string()));
    let revoked =
        state.store.delete_role(&name, q.force.unwrap_or(false), OffsetDateTime::now_utc(), &ctx).await?;
    state.announce(&revoked);
    state.keys_changed_for(&revoked).await;
    state.metrics.audited();
    tracing::info!(role = %name, admin = %admin.user.id, "role deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `GET /admin/audit`; every filter is exact and they combine.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Who did it: a user id, or as recorded by the gateway.
    #[param(pattern = r"^[^\x00]*$")]
    actor: Option<String>,
    /// What it was done to: a user id, a role name.
    #[param(pattern = r"^[^\x00]*$")]
    subject: Option<String>,
    /// e.g. `auth.login.failed`, `gateway.denied`.
    #[param(pattern = r"^[^\x00]*$")]
    action: Option<String>,
    /// Records at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Records before this time (RFC 3339, exclusive).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
    /// Page size, 1 to 200; default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<i64>)]
    cursor: Option<String>,
}

/// An audit record as administrators see it. `hash` is
/// SHA-256(`prev_hash` || the canonical event), so `bouncer audit verify`
/// detects an edited, deleted or reordered record.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AuditRecord)]
pub struct AuditView {
    /// Position in the chain; newest first in lists.
    seq: i64,
    id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    #[schema(required = true)]
    actor: Option<String>,
    #[schema(value_type = String, example = "auth.login.succeeded")]
    action: &'static str,
    #[schema(required = true)]
    subject: Option<String>,
    #[schema(required = true)]
    ip: Option<String>,
    #[schema(required = true)]
    user_agent: Option<String>,
    #[schema(required = true)]
    request_id: Option<String>,
    #[schema(value_type = String, pattern = "^(success|failure|denied)$")]
    outcome: &'static str,
    /// Action-specific facts; never a secret.
    #[schema(value_type = Object)]
    details: Value,
    /// Hex SHA-256 of the previous record (zeros for the first).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    prev_hash: String,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    hash: String,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        let e = r.event;
        Self {
            seq: r.seq,
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action.as_str(),
            subject: e.subject,
            ip: e.ip,
            user_agent: e.user_agent,
            request_id: e.request_id,
            outcome: e.outcome.as_str(),
            details: serde_json::from_str(&e.details).unwrap_or(Value::Null),
            prev_hash: hex::encode(r.prev_hash),
            hash: hex::encode(r.hash),
        }
    }
}

/// The audit log, newest first.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "admin",
    security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "One page of records.", body = Page<AuditView>),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list_audit(
    State(state): State<AppState>,
    _admin: AdminCaller,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<Page<AuditView>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref())?;
    let time = |field: &str, v: Option<&str>| {
        v.map(|v| {
            OffsetDateTime::parse(v, &Rfc3339).map_err(|_| ApiError::field(field, "must be an RFC 3339 time"))
        })
        .transpose()
    };
    let before_seq = q
        .cursor
        .as_deref()
        .map(|c| c.parse::<i64>().map_err(|_| ApiError::field("cursor", "not a cursor from a previous page")))
        .transpose()?;
    for (field, value) in [("actor", &q.actor), ("subject", &q.subject), ("action", &q.action)] {
        if let Some(value) = value {
            storable_text(field, value)?;
        }
    }
    let filter = AuditFilter {
        actor: q.actor,
        subject: q.subject,
        action: q.action,
        since: time("since", q.since.as_deref())?,
        until: time("until", q.until.as_deref())?,
        before_seq,
        limit: limit + 1,
    };
    let mut records = state.store.list_audit(&filter).await?;
    let next_cursor = (records.len() > limit as usize).then(|| records[limit as usize - 1].seq.to_string());
    records.truncate(limit as usize);
    Ok(Json(Page { items: records.into_iter().map(AuditView::from).collect(), next_cursor }))
}

fn parse_limit(limit: Option<&str>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::field("limit", format!("must be 1 to {MAX_LIMIT}"))),
    }
}

/// The `{id}` of a user route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserId {
    /// The user's id; anything that is not a UUID names no user (`404`).
    #[param(value_type = Uuid)]
    #[allow(dead_code)]
    id: String,
}

/// A user id from the path; anything that is not a UUID as the API
/// writes it (hyphenated) names no user.
pub(super) fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    hyphenated_uuid(raw).ok_or(ApiError::NotFound)
}

/// `raw` as a UUID only in the hyphenated form the API writes (JSON
/// Schema's `format: uuid`): `Uuid::parse_str` also takes the simple,
/// braced and URN forms, which would give one resource several names.
pub(super) fn hyphenated_uuid(raw: &str) -> Option<Uuid> {
    if raw.len() != 36 {
        return None;
    }
    Uuid::try_parse(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_only_the_hyphenated_form() {
        let id = Uuid::now_v7();
        assert_eq!(hyphenated_uuid(&id.to_string()), Some(id));
        assert_eq!(hyphenated_uuid(&id.to_string().to_uppercase()), Some(id));
        for other in [id.simple().to_string(), id.braced().to_string(), id.urn().to_string(), String::new()] {
            assert_eq!(hyphenated_uuid(&other), None, "{other}");
        }
    }
}
