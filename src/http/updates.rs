//! Changes to existing messages over REST: reactions, pins, threads and the `rev` changes feed
//! (protocol v1.1). The operations themselves are in `crate::chat`, shared with the WebSocket.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router, routing::get, routing::put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiPath, ApiQuery, AppState, Caller};
use crate::chat;
use crate::error::{ApiError, ApiResult};
use crate::ids::RoomId;
use crate::model::Message;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/rooms/{id}/messages/{seq}/reactions/{emoji}",
            put(react).delete(unreact),
        )
        .route("/api/v1/rooms/{id}/pins", get(pins))
        .route("/api/v1/rooms/{id}/pins/{seq}", put(pin).delete(unpin))
        .route("/api/v1/rooms/{id}/changes", get(changes))
        .route("/api/v1/rooms/{id}/threads/{seq}", get(thread))
}

const DEFAULT_CHANGES: i64 = 100;
const MAX_CHANGES: i64 = 500;
const DEFAULT_THREAD_PAGE: i64 = 50;
const MAX_THREAD_PAGE: i64 = 200;

/// A page size: `default` when absent, at least 1, at most `max`.
fn page(limit: Option<i64>, default: i64, max: i64) -> ApiResult<i64> {
    match limit {
        None => Ok(default),
        Some(n) if n < 1 => Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) => Ok(n.min(max)),
    }
}

#[utoipa::path(put, path = "/api/v1/rooms/{id}/messages/{seq}/reactions/{emoji}", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "room id"), ("seq" = i64, Path, description = "message seq"),
        ("emoji" = String, Path, description = "one emoji, URL-encoded, or a :shortcode:")),
    responses((status = 204, description = "the caller reacts with this emoji (a repeat changes nothing)"),
        (status = 400), (status = 403), (status = 404), (status = 409)))]
pub async fn react(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, seq, emoji)): ApiPath<(RoomId, i64, String)>,
) -> ApiResult<StatusCode> {
    chat::react(&state, (&caller.user).into(), id, seq, &emoji, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/rooms/{id}/messages/{seq}/reactions/{emoji}", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "room id"), ("seq" = i64, Path, description = "message seq"),
        ("emoji" = String, Path, description = "one emoji, URL-encoded, or a :shortcode:")),
    responses((status = 204, description = "the caller no longer reacts with this emoji"),
        (status = 400), (status = 403), (status = 404)))]
pub async fn unreact(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, seq, emoji)): ApiPath<(RoomId, i64, String)>,
) -> ApiResult<StatusCode> {
    chat::react(&state, (&caller.user).into(), id, seq, &emoji, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/rooms/{id}/pins", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "room id")),
    responses((status = 200, description = "{\"messages\": [Message]}, most recently pinned first"), (status = 404)))]
pub async fn pins(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
) -> ApiResult<Json<Value>> {
    state.readable_room(id, caller.user.id).await?;
    let rows = state.store.pins(id).await?;
    let messages: Vec<Message> = rows.iter().map(Message::from).collect();
    Ok(Json(json!({ "messages": messages })))
}

#[utoipa::path(put, path = "/api/v1/rooms/{id}/pins/{seq}", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "room id"), ("seq" = i64, Path, description = "message seq")),
    responses((status = 204), (status = 403), (status = 404), (status = 409)))]
pub async fn pin(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, seq)): ApiPath<(RoomId, i64)>,
) -> ApiResult<StatusCode> {
    chat::pin(&state, &caller.user, id, seq, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/rooms/{id}/pins/{seq}", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "room id"), ("seq" = i64, Path, description = "message seq")),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn unpin(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, seq)): ApiPath<(RoomId, i64)>,
) -> ApiResult<StatusCode> {
    chat::pin(&state, &caller.user, id, seq, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// Messages changed after this rev (0: every change since the counter started).
    #[param(minimum = 0)]
    since_rev: Option<i64>,
    /// At most this many (default 100; more than 500 gives 500).
    #[param(minimum = 1)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/rooms/{id}/changes", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "room id"), ChangesQuery),
    responses((status = 200, description = "{\"messages\": [Message with rev > since_rev, ascending rev], \"rev\": the room's, \"has_more\": bool}"),
        (status = 400), (status = 404)))]
pub async fn changes(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> ApiResult<Json<Value>> {
    let (room, _) = state.readable_room(id, caller.user.id).await?;
    let since_rev = q.since_rev.unwrap_or(0);
    if since_rev < 0 {
        return Err(ApiError::bad_request("since_rev must not be negative"));
    }
    let limit = page(q.limit, DEFAULT_CHANGES, MAX_CHANGES)?;
    let mut rows = state
        .store
        .changes(id, since_rev, i64::MAX, limit + 1)
        .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    // The room's rev, read before the page (a change committed meanwhile may be in the page:
    // then its rev is the room's). A client with `has_more` continues from the last message's rev.
    let rev = rows.iter().map(|m| m.rev).fold(room.rev, i64::max);
    let messages: Vec<Message> = rows.iter().map(Message::from).collect();
    Ok(Json(
        json!({ "messages": messages, "rev": rev, "has_more": has_more }),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThreadQuery {
    /// Replies after this seq (default: from the first reply).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most this many (default 50; more than 200 gives 200).
    #[param(minimum = 1)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/rooms/{id}/threads/{seq}", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "room id"), ("seq" = i64, Path, description = "the root's seq"), ThreadQuery),
    responses((status = 200, description = "{\"root\": Message, \"messages\": [replies, ascending seq], \"has_more\": bool}"),
        (status = 400), (status = 404)))]
pub async fn thread(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, seq)): ApiPath<(RoomId, i64)>,
    ApiQuery(q): ApiQuery<ThreadQuery>,
) -> ApiResult<Json<Value>> {
    state.readable_room(id, caller.user.id).await?;
    let limit = page(q.limit, DEFAULT_THREAD_PAGE, MAX_THREAD_PAGE)?;
    let root = state
        .store
        .message(id, seq)
        .await?
        .filter(|m| m.thread.is_none())
        .ok_or_else(|| ApiError::not_found("no such thread"))?;
    let mut rows = state
        .store
        .thread_replies(id, seq, q.after.unwrap_or(0).max(0), limit + 1)
        .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let messages: Vec<Message> = rows.iter().map(Message::from).collect();
    Ok(Json(json!({
        "root": Message::from(&root),
        "messages": messages,
        "has_more": has_more,
    })))
}
