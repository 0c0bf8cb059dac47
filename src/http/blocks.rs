//! A user's blocks (protocol v1.1): `PUT`/`DELETE /api/v1/users/me/blocks/{user_id}` and the
//! list. What a block does is enforced where it matters: direct rooms and invitations
//! (`http::rooms`, `AppState::writable_room`), mentions (the writer), notifications (the hub)
//! and typing (each socket).

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router, routing::get, routing::put};
use serde_json::{Value, json};

use super::{ApiPath, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::hub::ControlEvent;
use crate::ids::UserId;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users/me/blocks", get(list))
        .route(
            "/api/v1/users/me/blocks/{user_id}",
            put(block).delete(unblock),
        )
}

#[utoipa::path(get, operation_id = "list_blocks", path = "/api/v1/users/me/blocks", tag = "users",
    responses((status = 200, description = "{\"users\": [User]}: the people the caller blocks")))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let users: Vec<_> = state
        .store
        .blocked_users(caller.user.id)
        .await?
        .iter()
        .map(|u| state.user_json(u))
        .collect();
    Ok(Json(json!({ "users": users })))
}

#[utoipa::path(put, operation_id = "block_user", path = "/api/v1/users/me/blocks/{user_id}", tag = "users",
    params(("user_id" = uuid::Uuid, Path, description = "the user to block")),
    responses((status = 204), (status = 400, description = "the caller's own id"), (status = 404)))]
pub async fn block(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(other): ApiPath<UserId>,
) -> ApiResult<StatusCode> {
    set(&state, &caller, other, true).await
}

#[utoipa::path(delete, operation_id = "unblock_user", path = "/api/v1/users/me/blocks/{user_id}", tag = "users",
    params(("user_id" = uuid::Uuid, Path, description = "the user to unblock")),
    responses((status = 204), (status = 400, description = "the caller's own id"), (status = 404)))]
pub async fn unblock(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(other): ApiPath<UserId>,
) -> ApiResult<StatusCode> {
    set(&state, &caller, other, false).await
}

async fn set(
    state: &AppState,
    caller: &Caller,
    other: UserId,
    blocked: bool,
) -> ApiResult<StatusCode> {
    if other == caller.user.id {
        return Err(ApiError::bad_request(
            "user_id must be another user: nobody blocks themselves",
        ));
    }
    state
        .store
        .user(other)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    let changed = state
        .store
        .set_block(caller.user.id, other, blocked, crate::now_ms())
        .await?;
    if changed {
        // Both people's sockets on every pod re-read what depends on it.
        state.hub.control(ControlEvent::Blocked {
            user: caller.user.id,
            other,
        });
    }
    Ok(StatusCode::NO_CONTENT)
}
