//! The HTTP routes, one module per area.

mod admin;
mod auth;
mod ops;
mod users;

use axum::{
    Router,
    routing::{delete, get, post, put},
};

use crate::{AppState, error::ApiError};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/signup", post(auth::signup))
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/logout-all", post(auth::logout_all))
        .route("/users/me", get(users::me))
        .route("/users/me/password", post(users::change_password))
        .route("/admin/users", get(admin::list_users))
        .route("/admin/users/{id}", get(admin::get_user).delete(admin::delete_user))
        .route("/admin/users/{id}/roles", put(admin::set_roles))
        .route("/admin/users/{id}/ban", post(admin::ban))
        .route("/admin/users/{id}/unban", post(admin::unban))
        .route("/admin/roles", get(admin::list_roles).post(admin::create_role))
        .route("/admin/roles/{name}", delete(admin::delete_role))
        .route("/admin/audit", get(admin::list_audit))
        .route("/.well-known/jwks.json", get(ops::jwks))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
