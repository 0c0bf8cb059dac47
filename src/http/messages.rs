//! History paging, sending over REST (bots and backends), and the read marker.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router, routing::get, routing::patch, routing::post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller};
use crate::chat::{self, Draft, check_message};
use crate::error::{ApiError, ApiResult};
use crate::ids::RoomId;
use crate::model::Message;
use crate::policy::Policy;
use crate::store::Marker;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/rooms/{id}/messages", get(history).post(send))
        .route(
            "/api/v1/rooms/{id}/messages/{seq}",
            patch(edit).delete(delete),
        )
        .route("/api/v1/rooms/{id}/read", post(read))
        .route("/api/v1/rooms/{id}/search", get(search_room))
        .route("/api/v1/search", get(search_all))
}

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Messages before this seq, newest first in the page (the default: from the newest).
    before: Option<i64>,
    /// Messages after this seq, oldest first (not together with `before`).
    after: Option<i64>,
    /// At most this many (default 50; more than 200 gives 200).
    #[param(minimum = 1)]
    limit: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SendBody {
    /// The text; not only white space. At most the policy's `maxMessageBytes` (413 beyond).
    #[schema(pattern = r"\S")]
    body: String,
    /// The sender's id for the message; a repeat returns the first message.
    #[schema(min_length = 1, max_length = 128)]
    client_id: Option<String>,
    /// The seq of the message this one answers.
    #[schema(minimum = 1)]
    reply_to: Option<i64>,
    /// Ids of attachments the sender uploaded to this room.
    #[schema(max_items = 10, value_type = Option<Vec<uuid::Uuid>>)]
    attachments: Option<Vec<String>>,
    /// A reply in the thread of the message with this seq (a top-level message of the room).
    #[schema(minimum = 1)]
    thread: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ReadBody {
    #[schema(minimum = 0)]
    seq: i64,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct EditBody {
    #[schema(pattern = r"\S")]
    body: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to find (all of them), at most 256 characters. The pattern is set from
    /// `validate::SEARCH_TEXT` in the OpenAPI document.
    #[param(max_length = 256)]
    q: String,
    /// At most this many (default 20; more than 100 gives 100).
    #[param(minimum = 1)]
    limit: Option<i64>,
}

pub const DEFAULT_SEARCH: i64 = 20;
pub const MAX_SEARCH: i64 = 100;
pub const MAX_QUERY: usize = 256;

#[utoipa::path(get, path = "/api/v1/rooms/{id}/messages", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "room id"), HistoryQuery),
    responses((status = 200, description = "{\"messages\": [Message], \"has_more\": bool}"), (status = 400), (status = 404)))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<Value>> {
    state.readable_room(id, caller.user.id).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit < 1 {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    let limit = limit.min(MAX_PAGE);
    let (rows, has_more) = match (q.before, q.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either before or after, not both",
            ));
        }
        (None, Some(after)) => {
            let mut rows = state
                .store
                .messages_after(id, after.max(0), limit + 1)
                .await?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            (rows, more)
        }
        (before, None) => {
            let mut rows = state
                .store
                .messages_before(id, before.unwrap_or(i64::MAX), limit + 1)
                .await?;
            let more = rows.len() as i64 > limit;
            if more {
                rows.remove(0);
            }
            (rows, more)
        }
    };
    let messages: Vec<Message> = rows.iter().map(Message::from).collect();
    Ok(Json(json!({"messages": messages, "has_more": has_more})))
}

#[utoipa::path(post, path = "/api/v1/rooms/{id}/messages", tag = "messages", request_body = SendBody,
    params(("id" = uuid::Uuid, Path, description = "room id")),
    responses((status = 201, body = Message), (status = 200, body = Message, description = "a repeated client_id"),
        (status = 403), (status = 404), (status = 413)))]
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
    ApiJson(body): ApiJson<SendBody>,
) -> ApiResult<(StatusCode, Json<Message>)> {
    let draft = Draft {
        body: body.body,
        client_id: body.client_id,
        reply_to: body.reply_to,
        attachments: body.attachments.unwrap_or_default(),
        thread: body.thread,
    };
    let (m, new) = chat::send_message(&state, &caller.user, id, draft).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(Message::from(&m))))
}

#[utoipa::path(post, path = "/api/v1/rooms/{id}/read", tag = "messages", request_body = ReadBody,
    params(("id" = uuid::Uuid, Path, description = "room id")),
    responses((status = 204), (status = 400), (status = 403), (status = 404)))]
pub async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
    ApiJson(body): ApiJson<ReadBody>,
) -> ApiResult<StatusCode> {
    let (room, member) = state.readable_room(id, caller.user.id).await?;
    if member.is_none() {
        return Err(ApiError::forbidden("join the room first"));
    }
    let seq = body.seq.min(room.last_seq);
    if chat::move_marker(&state, id, caller.user.id, Marker::Read, seq).await? {
        chat::publish_receipt(&state, id, caller.user.id, Marker::Read, seq);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/api/v1/rooms/{id}/messages/{seq}", tag = "messages", request_body = EditBody,
    params(("id" = uuid::Uuid, Path, description = "room id"), ("seq" = i64, Path, description = "message seq")),
    responses((status = 200, body = Message), (status = 403), (status = 404)))]
pub async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, seq)): ApiPath<(RoomId, i64)>,
    ApiJson(body): ApiJson<EditBody>,
) -> ApiResult<Json<Message>> {
    let m = chat::edit_message(&state, (&caller.user).into(), id, seq, &body.body).await?;
    Ok(Json(Message::from(&m)))
}

#[utoipa::path(delete, path = "/api/v1/rooms/{id}/messages/{seq}", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "room id"), ("seq" = i64, Path, description = "message seq")),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, seq)): ApiPath<(RoomId, i64)>,
) -> ApiResult<StatusCode> {
    chat::delete_message(&state, (&caller.user).into(), id, seq).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn search_params(q: SearchQuery) -> ApiResult<(String, i64)> {
    crate::validate::search_text(&q.q).map_err(ApiError::BadRequest)?;
    if q.q.chars().count() > MAX_QUERY {
        return Err(ApiError::bad_request(format!(
            "q must be at most {MAX_QUERY} characters"
        )));
    }
    let text = q.q.trim();
    let limit = q.limit.unwrap_or(DEFAULT_SEARCH);
    if limit < 1 {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    Ok((text.to_string(), limit.min(MAX_SEARCH)))
}

#[utoipa::path(get, path = "/api/v1/rooms/{id}/search", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "room id"), SearchQuery),
    responses((status = 200, description = "{\"messages\": [Message]}, best match first"), (status = 400), (status = 404)))]
pub async fn search_room(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<Value>> {
    let (text, limit) = search_params(q)?;
    state.readable_room(id, caller.user.id).await?;
    let rows = state.store.search_room(id, &text, limit).await?;
    let messages: Vec<Message> = rows.iter().map(Message::from).collect();
    Ok(Json(json!({"messages": messages})))
}

#[utoipa::path(get, path = "/api/v1/search", tag = "messages", params(SearchQuery),
    responses((status = 200, description = "{\"messages\": [Message]} over the caller's rooms, best match first"), (status = 400)))]
pub async fn search_all(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<Value>> {
    let (text, limit) = search_params(q)?;
    let rows = state
        .store
        .search_rooms_of(caller.user.id, &text, limit)
        .await?;
    let messages: Vec<Message> = rows.iter().map(Message::from).collect();
    Ok(Json(json!({"messages": messages})))
}

pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(b) = serde_json::from_slice::<SendBody>(data) {
        let _ = check_message(
            &Policy::default(),
            &b.body,
            b.client_id.as_deref(),
            b.reply_to,
        );
    }
    if let Ok(b) = serde_json::from_slice::<EditBody>(data) {
        let _ = check_message(&Policy::default(), &b.body, None, None);
    }
    let _ = serde_json::from_slice::<ReadBody>(data);
    if let Ok(q) = serde_json::from_slice::<SearchQuery>(data) {
        let _ = search_params(q);
    }
}
