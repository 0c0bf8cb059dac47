//! Accounts and sessions: register, login, refresh, logout, and user lookups.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router, routing::get, routing::post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::ids::UserId;
use crate::model::{Tokens, User};
use crate::store::UserRecord;

/// Register and login: the endpoints that take passwords get a stricter rate limit.
pub fn credentials_router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/providers", get(providers))
        .route("/api/v1/auth/refresh", post(refresh))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/users/me", get(me))
        .route("/api/v1/users", get(directory))
        .route("/api/v1/users/{id}", get(user))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DirectoryQuery {
    /// Part of a username; empty lists the first users by name.
    #[param(max_length = 64)]
    q: Option<String>,
    /// At most this many (default 20, at most 50).
    #[param(minimum = 1, maximum = 50)]
    limit: Option<i64>,
}

/// Users whose username contains `q`, for finding someone to message: the public `User`
/// fields only, never ban or mute state.
#[utoipa::path(get, path = "/api/v1/users", tag = "auth", params(DirectoryQuery),
    responses((status = 200, description = "{\"users\": [User]}"), (status = 400)))]
pub async fn directory(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(q): ApiQuery<DirectoryQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=50).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 50"));
    }
    let query = q.q.unwrap_or_default();
    if query.chars().count() > 64 {
        return Err(ApiError::bad_request("q must be at most 64 characters"));
    }
    let users: Vec<User> = state
        .store
        .find_users(&query.to_lowercase(), limit)
        .await?
        .iter()
        .map(|u| state.user_json(u))
        .collect();
    Ok(Json(json!({"users": users})))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RegisterBody {
    /// 3-32 of `a-z`, `0-9`, `_`, `.`, `-` (the pattern is set from `validate::USERNAME`).
    username: String,
    #[schema(min_length = 8)]
    password: String,
    /// Shown to others; the username when absent. No control or directional characters,
    /// and something visible (the pattern is set from `validate::SHOWN_TEXT`).
    #[schema(min_length = 1, max_length = 64)]
    display_name: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct LoginBody {
    username: String,
    password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RefreshBody {
    refresh_token: String,
}

/// A real argon2id hash of nothing, so that a login for an unknown user costs the same time.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3Xy9KFa6KbAiwXOk2Ah0xNjF1l1EMH9lLg2YvqNqmfY";

#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", security(()), request_body = RegisterBody,
    responses((status = 201, description = "{\"user\": User}"), (status = 400), (status = 409)))]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !state.config.local_accounts {
        return Err(local_accounts_off());
    }
    if !state.policies.current().registration_open {
        return Err(ApiError::forbidden("registration is closed"));
    }
    if !crate::validate::username(&body.username) {
        return Err(ApiError::bad_request(
            "username must be 3-32 characters of a-z, 0-9, '_', '.', '-'",
        ));
    }
    if body.password.chars().count() < 8 {
        return Err(ApiError::bad_request(
            "password must be at least 8 characters",
        ));
    }
    let display_name = body.display_name.unwrap_or_else(|| body.username.clone());
    if display_name.chars().count() > 64 {
        return Err(ApiError::bad_request(
            "display_name must be 1-64 characters",
        ));
    }
    crate::validate::shown_text("display_name", &display_name, false)
        .map_err(ApiError::BadRequest)?;
    let record = UserRecord::new(
        body.username,
        display_name,
        state.hashing.hash(body.password).await?,
    );
    state.store.create_user(&record).await?;
    tracing::info!(user = %record.id, "user registered");
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": state.user_json(&record)})),
    ))
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", security(()), request_body = LoginBody,
    responses((status = 200, body = Tokens), (status = 401)))]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginBody>,
) -> ApiResult<Json<Tokens>> {
    if !state.config.local_accounts {
        return Err(local_accounts_off());
    }
    let user = state.store.user_by_name(&body.username).await?;
    let hash = user
        .as_ref()
        .filter(|u| !(u.external || u.bot))
        .map_or(DUMMY_HASH.to_string(), |u| u.password_hash.clone());
    let ok = state.hashing.verify(body.password, hash).await?;
    let user = match user {
        // Accounts of the OpenID provider and bots have no password to sign in with.
        Some(u) if ok && !(u.external || u.bot) => u,
        _ => return Err(ApiError::unauthorized("wrong username or password")),
    };
    if user.banned_at(crate::now_ms()) {
        return Err(ApiError::forbidden("the user is banned"));
    }
    Ok(Json(state.auth.issue_pair(&*state.store, user.id).await?))
}

fn local_accounts_off() -> ApiError {
    ApiError::forbidden("confab passwords are turned off here; sign in with the identity provider")
}

/// How people sign in here: confab passwords, and the OpenID provider's details for a
/// "Sign in with …" button (authorization code with PKCE).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Providers {
    /// Whether `/auth/register` and `/auth/login` take confab passwords.
    local: bool,
    /// The OpenID provider, or null when there is none (or it has no client id for browsers).
    oidc: Option<OidcProvider>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OidcProvider {
    issuer: String,
    client_id: String,
}

#[utoipa::path(get, path = "/api/v1/auth/providers", tag = "auth", security(()),
    responses((status = 200, body = Providers)))]
pub async fn providers(State(state): State<AppState>) -> Json<Providers> {
    let oidc = state.oidc.as_ref().and_then(|o| {
        o.client_id.as_ref().map(|client_id| OidcProvider {
            issuer: o.issuer.clone(),
            client_id: client_id.clone(),
        })
    });
    Json(Providers {
        local: state.config.local_accounts,
        oidc,
    })
}

#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", security(()), request_body = RefreshBody,
    responses((status = 200, body = Tokens), (status = 401)))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> ApiResult<Json<Tokens>> {
    let (_, tokens) = state
        .auth
        .refresh(&*state.store, &body.refresh_token)
        .await?;
    Ok(Json(tokens))
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(()), request_body = RefreshBody,
    responses((status = 204)))]
pub async fn logout(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> ApiResult<StatusCode> {
    state
        .auth
        .logout(&*state.store, &body.refresh_token)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", responses((status = 200, body = User)))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> Json<User> {
    Json(state.user_json(&caller.user))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = uuid::Uuid, Path, description = "user id")),
    responses((status = 200, body = User), (status = 404)))]
pub async fn user(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(id): ApiPath<UserId>,
) -> ApiResult<Json<User>> {
    let u = state
        .store
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(Json(state.user_json(&u)))
}

pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(b) = serde_json::from_slice::<RegisterBody>(data) {
        let _ = crate::validate::username(&b.username);
        let _ = b.password.chars().count();
    }
    let _ = serde_json::from_slice::<LoginBody>(data);
    let _ = serde_json::from_slice::<RefreshBody>(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_dummy_hash_is_a_real_argon2_hash() {
        // If it did not parse, logins for unknown users would answer measurably faster.
        use argon2::password_hash::phc::PasswordHash;
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        let hashing = crate::auth::PasswordHashing::new(1, 1, None);
        assert!(
            !hashing
                .verify("whatever".into(), DUMMY_HASH.into())
                .await
                .unwrap()
        );
    }
}
