//! `/admin/*`: user, role and audit administration. Every handler takes an
//! [`AdminCaller`], so each route requires the `admin` role (401 without a
//! token, 403 without the role), and every change is audited by the store
//! in the change's own transaction.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use bouncer_core::{
    audit::{Action, AuditRecord, Outcome},
    email::lookup_key,
    problem::FieldError,
    role::is_valid_role_name,
};
use bouncer_store::{AuditFilter, Role, User, UserFilter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use crate::{
    AppState,
    error::ApiError,
    extract::{AdminCaller, ClientInfo, JsonBody, QueryParams, storable_text},
};

/// Default and largest page sizes of list endpoints.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

/// A user as administrators see it.
#[derive(Debug, Serialize)]
pub struct AdminUserView {
    id: Uuid,
    email: String,
    roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    banned: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    banned_at: Option<OffsetDateTime>,
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

#[derive(Debug, Serialize)]
pub struct Page<T> {
    items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct UsersQuery {
    email: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

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

pub async fn get_user(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<AdminUserView>, ApiError> {
    let id = path_id(&id)?;
    let user = state.store.user(id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(user.into()))
}

#[derive(Debug, Deserialize)]
pub struct RolesBody {
    roles: Vec<String>,
}

pub async fn set_roles(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RolesBody>,
) -> Result<Json<AdminUserView>, ApiError> {
    let id = path_id(&id)?;
    if let Some(bad) = body.roles.iter().find(|r| !is_valid_role_name(r)) {
        return Err(ApiError::field("roles", format!("{bad:?} is not a role name")));
    }
    if id == admin.user.id && !body.roles.iter().any(|r| r == "admin") {
        return Err(ApiError::SelfLockout("remove own admin role"));
    }
    let now = OffsetDateTime::now_utc();
    let ctx = client.audit(Some(admin.user.id.to_string()));
    let (user, revoked) = state.store.set_roles(id, &body.roles, now, &ctx).await?;
    state.announce(&revoked);
    state.metrics.audited();
    tracing::info!(user_id = %id, admin = %admin.user.id, roles = ?user.roles, "roles changed");
    Ok(Json(user.into()))
}

#[derive(Debug, Deserialize)]
pub struct BanBody {
    reason: String,
}

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
    state.metrics.audited();
    state.metrics.banned();
    tracing::info!(user_id = %id, admin = %admin.user.id, "user banned");
    Ok(Json(user.into()))
}

pub async fn unban(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<String>,
) -> Result<Json<AdminUserView>, ApiError> {
    let id = path_id(&id)?;
    let ctx = client.audit(Some(admin.user.id.to_string()));
    let user = state.store.unban_user(id, OffsetDateTime::now_utc(), &ctx).await?;
    state.metrics.audited();
    tracing::info!(user_id = %id, admin = %admin.user.id, "user unbanned");
    Ok(Json(user.into()))
}

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
    state.metrics.audited();
    tracing::info!(user_id = %id, admin = %admin.user.id, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
pub struct RoleView {
    name: String,
    description: String,
    builtin: bool,
}

pub async fn list_roles(State(state): State<AppState>, _admin: AdminCaller) -> Result<Json<Value>, ApiError> {
    let roles: Vec<RoleView> = state
        .store
        .roles()
        .await?
        .into_iter()
        .map(|r| RoleView { name: r.name, description: r.description, builtin: r.builtin })
        .collect();
    Ok(Json(json!({ "items": roles })))
}

#[derive(Debug, Deserialize)]
pub struct NewRoleBody {
    name: String,
    #[serde(default)]
    description: String,
}

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
    let now = OffsetDateTime::now_utc();
    let details = json!({ "description": role.description });
    let audit = client.audit(Some(admin.user.id.to_string())).event(
        now,
        Action::RoleCreated,
        Some(role.name.clone()),
        Outcome::Success,
        &details,
    );
    state.store.create_role(&role, audit).await?;
    state.metrics.audited();
    Ok((
        StatusCode::CREATED,
        Json(RoleView { name: role.name, description: role.description, builtin: false }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct DeleteRoleQuery {
    force: Option<bool>,
}

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
    state.metrics.audited();
    tracing::info!(role = %name, admin = %admin.user.id, "role deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    actor: Option<String>,
    subject: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// An audit record as administrators see it.
#[derive(Debug, Serialize)]
pub struct AuditView {
    seq: i64,
    id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    actor: Option<String>,
    action: &'static str,
    subject: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    outcome: &'static str,
    details: Value,
    prev_hash: String,
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

/// A user id from the path; anything that is not a UUID as the API
/// writes it (hyphenated) names no user.
fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    hyphenated_uuid(raw).ok_or(ApiError::NotFound)
}

/// `raw` as a UUID only in the hyphenated form the API writes (JSON
/// Schema's `format: uuid`): `Uuid::parse_str` also takes the simple,
/// braced and URN forms, which would give one resource several names.
fn hyphenated_uuid(raw: &str) -> Option<Uuid> {
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
