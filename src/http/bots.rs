//! Bots and their API keys (protocol v1.1), for admins: a bot is a user that authenticates
//! with `Authorization: Bearer cfk_…` on REST and the WebSocket. Keys are shown once, kept as
//! SHA-256 hashes, and revoking one closes the sockets opened with it on every pod.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router, routing::delete, routing::post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiJson, ApiPath, AppState, Caller};
use crate::auth::NewApiKey;
use crate::error::{ApiError, ApiResult};
use crate::hub::ControlEvent;
use crate::ids::UserId;
use crate::model::User;
use crate::store::UserRecord;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/bots", post(create).get(list))
        .route("/api/v1/admin/bots/{id}", delete(remove))
        .route("/api/v1/admin/bots/{id}/keys", post(add_key))
        .route("/api/v1/admin/bots/{id}/keys/{key_id}", delete(revoke_key))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewBot {
    /// 3-32 of `a-z`, `0-9`, `_`, `.`, `-`, like every username.
    username: String,
    /// Shown to others; the username when absent.
    #[schema(min_length = 1, max_length = 64)]
    display_name: Option<String>,
    /// A global admin: may use the admin API and add members (itself included) to any room.
    #[serde(default)]
    admin: bool,
}

/// A new API key: shown once, never again.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    api_key: String,
    key_id: String,
}

/// A new bot with its first key.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedBot {
    user: User,
    api_key: String,
    key_id: String,
}

/// Makes and stores a new key of `bot`.
async fn new_key(state: &AppState, bot: UserId) -> ApiResult<ApiKey> {
    let key = NewApiKey::generate();
    state
        .store
        .insert_api_key(&key.key_id, bot, &key.hash)
        .await?;
    Ok(ApiKey {
        api_key: key.api_key,
        key_id: key.key_id,
    })
}

/// The bot `id`, or 404.
async fn bot(state: &AppState, id: UserId) -> ApiResult<UserRecord> {
    match state.store.user(id).await? {
        Some(u) if u.bot => Ok(u),
        _ => Err(ApiError::not_found("no such bot")),
    }
}

#[utoipa::path(post, operation_id = "create_bot", path = "/api/v1/admin/bots", tag = "admin", request_body = NewBot,
    responses((status = 201, body = CreatedBot, description = "the key is shown only now"),
        (status = 403), (status = 409, description = "the username is taken")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewBot>,
) -> ApiResult<(StatusCode, Json<CreatedBot>)> {
    caller.require_admin()?;
    if !crate::validate::username(&body.username) {
        return Err(ApiError::bad_request(
            "username must be 3-32 characters of a-z, 0-9, '_', '.', '-'",
        ));
    }
    let display_name = body.display_name.unwrap_or_else(|| body.username.clone());
    if display_name.chars().count() > 64 || display_name.trim().is_empty() {
        return Err(ApiError::bad_request(
            "display_name must be 1-64 characters",
        ));
    }
    crate::validate::shown_text("display_name", &display_name, false)
        .map_err(ApiError::BadRequest)?;
    // No password: a bot signs in with its keys only.
    let mut record = UserRecord::new(body.username, display_name, String::new());
    record.bot = true;
    record.admin = body.admin;
    // A taken username is a 409 "the username is taken".
    state.store.create_user(&record).await?;
    let key = new_key(&state, record.id).await?;
    tracing::info!(bot = %record.id, by = %caller.user.id, key = %key.key_id, "bot created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedBot {
            user: state.user_json(&record),
            api_key: key.api_key,
            key_id: key.key_id,
        }),
    ))
}

#[utoipa::path(get, operation_id = "list_bots", path = "/api/v1/admin/bots", tag = "admin",
    responses((status = 200, description = "{\"bots\": [User]}"), (status = 403)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let bots: Vec<User> = state
        .store
        .bots()
        .await?
        .iter()
        .map(|u| state.user_json(u))
        .collect();
    Ok(Json(json!({ "bots": bots })))
}

#[utoipa::path(post, operation_id = "create_bot_key", path = "/api/v1/admin/bots/{id}/keys", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "the bot's user id")),
    responses((status = 201, body = ApiKey, description = "a new key; the bot's other keys stay valid"),
        (status = 403), (status = 404)))]
pub async fn add_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<UserId>,
) -> ApiResult<(StatusCode, Json<ApiKey>)> {
    caller.require_admin()?;
    let bot = bot(&state, id).await?;
    let key = new_key(&state, bot.id).await?;
    tracing::info!(bot = %bot.id, by = %caller.user.id, key = %key.key_id, "bot key created");
    Ok((StatusCode::CREATED, Json(key)))
}

#[utoipa::path(delete, operation_id = "revoke_bot_key", path = "/api/v1/admin/bots/{id}/keys/{key_id}", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "the bot's user id"),
        ("key_id" = String, Path, description = "the key's id")),
    responses((status = 204, description = "revoked: sockets opened with it close with 4001"),
        (status = 403), (status = 404)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, key_id)): ApiPath<(UserId, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let bot = bot(&state, id).await?;
    if !state.store.delete_api_key(bot.id, &key_id).await? {
        return Err(ApiError::not_found("no such key"));
    }
    state.hub.control(ControlEvent::KeyRevoked { key: key_id });
    tracing::info!(bot = %bot.id, by = %caller.user.id, "bot key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, operation_id = "delete_bot", path = "/api/v1/admin/bots/{id}", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "the bot's user id")),
    responses((status = 204, description = "removed: its keys stop working and its sockets close with 4001"),
        (status = 403), (status = 404)))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<UserId>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let bot = bot(&state, id).await?;
    if !super::account::delete_account(&state, bot.id, false).await? {
        return Err(ApiError::not_found("no such bot"));
    }
    tracing::info!(bot = %bot.id, by = %caller.user.id, "bot removed");
    Ok(StatusCode::NO_CONTENT)
}
