//! A person's data (protocol v1.1): the export of what they wrote, streamed as NDJSON in
//! constant memory; account deletion, by the person or an admin, optionally erasing their
//! messages; and an admin's export of a room.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::{Router, routing::delete, routing::get};
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiPath, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::hub::ControlEvent;
use crate::ids::{MessageId, RoomId, UserId};
use crate::model::{Message, Room};
use crate::protocol::Encode as _;
use crate::protocol::ServerFrame;
use crate::store::{MessageRecord, StoreResult};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users/me/export", get(export_me))
        .route("/api/v1/users/me", delete(delete_me))
        .route("/api/v1/admin/users/{id}", delete(delete_user))
        .route("/api/v1/admin/rooms/{id}/export", get(export_room))
}

/// Rows read from the store per query while streaming an export.
const EXPORT_PAGE: i64 = 500;

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct DeleteMeBody {
    /// The account's password; required for accounts that have one (not for accounts of the
    /// OpenID provider or bots).
    password: Option<String>,
    /// Also erase every message the account wrote (they keep their seq, with an empty body).
    #[serde(default)]
    erase_messages: bool,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct DeleteUserBody {
    /// Also erase every message the account wrote.
    #[serde(default)]
    erase_messages: bool,
}

/// One NDJSON line: `{"type": kind, …fields of value}`.
fn line(kind: &str, value: impl serde::Serialize) -> Bytes {
    let mut v = serde_json::to_value(value).expect("export rows serialize");
    if let Value::Object(map) = &mut v {
        let mut with_type = serde_json::Map::with_capacity(map.len() + 1);
        with_type.insert("type".into(), Value::String(kind.into()));
        with_type.extend(std::mem::take(map));
        v = Value::Object(with_type);
    }
    let mut text = serde_json::to_vec(&v).expect("export rows serialize");
    text.push(b'\n');
    Bytes::from(text)
}

fn ndjson(body: BoxStream<'static, Result<Bytes, std::io::Error>>, name: &str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}.ndjson\""),
        )
        .body(Body::from_stream(body))
        .expect("a valid response")
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// NDJSON `message` lines read a page at a time: `page(cursor)` reads the rows after a cursor,
/// `cursor_of` gives the cursor after a row. A short page ends the stream.
fn paged<C, P, F>(
    start: C,
    page: P,
    cursor_of: fn(&MessageRecord) -> C,
) -> BoxStream<'static, Result<Bytes, std::io::Error>>
where
    C: Send + 'static,
    P: Fn(C) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = StoreResult<Vec<MessageRecord>>> + Send + 'static,
{
    stream::unfold(Some(start), move |cursor| {
        let read = cursor.map(&page);
        async move {
            match read?.await {
                Err(e) => Some((vec![Err(io_error(e))], None)),
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = (rows.len() as i64 == EXPORT_PAGE)
                        .then(|| rows.last().map(cursor_of))
                        .flatten();
                    let lines = rows
                        .iter()
                        .map(|m| Ok(line("message", Message::from(m))))
                        .collect();
                    Some((lines, next))
                }
            }
        }
    })
    .flat_map(stream::iter)
    .boxed()
}

/// Every message `user` wrote, in time order.
fn messages_by(state: AppState, user: UserId) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let start = (i64::MIN, MessageId(uuid::Uuid::nil()));
    paged(
        start,
        move |after| {
            let state = state.clone();
            async move { state.store.messages_by(user, after, EXPORT_PAGE).await }
        },
        |m| (m.created_at, m.id),
    )
}

/// Every message of `room`, in seq order.
fn messages_of(state: AppState, room: RoomId) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    paged(
        0i64,
        move |after| {
            let state = state.clone();
            async move { state.store.messages_after(room, after, EXPORT_PAGE).await }
        },
        |m| m.seq,
    )
}

#[utoipa::path(get, path = "/api/v1/users/me/export", tag = "users",
    responses((status = 200, content_type = "application/x-ndjson",
        description = "one {\"type\":\"user\"} line, one {\"type\":\"room\"} per room, one {\"type\":\"message\"} per message the caller wrote (ascending time)")))]
pub async fn export_me(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let user = state.user_json(&caller.user);
    let rooms: Vec<Bytes> = state
        .store
        .rooms_of(caller.user.id)
        .await?
        .iter()
        .map(|l| {
            let mut r = Room::from(&l.room);
            r.role = Some(l.role);
            r.last_read_seq = Some(l.last_read_seq);
            line("room", r)
        })
        .collect();
    let head = stream::iter(
        std::iter::once(line("user", user))
            .chain(rooms)
            .map(Ok::<_, std::io::Error>),
    );
    let body = head.chain(messages_by(state, caller.user.id)).boxed();
    Ok(ndjson(body, &format!("confab-{}", caller.user.username)))
}

#[utoipa::path(get, path = "/api/v1/admin/rooms/{id}/export", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "room id")),
    responses((status = 200, content_type = "application/x-ndjson",
        description = "one {\"type\":\"room\"} line, one {\"type\":\"member\"} per member, one {\"type\":\"message\"} per message (ascending seq)"),
        (status = 403), (status = 404)))]
pub async fn export_room(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let room = state
        .store
        .room(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such room"))?;
    let members: Vec<Bytes> = state
        .store
        .members(id)
        .await?
        .iter()
        .map(|m| {
            let mut v = serde_json::to_value(state.user_json(&m.user)).expect("user serializes");
            v["role"] = json!(m.role);
            v["last_read_seq"] = json!(m.last_read_seq);
            line("member", v)
        })
        .collect();
    let head = stream::iter(
        std::iter::once(line("room", Room::from(&room)))
            .chain(members)
            .map(Ok::<_, std::io::Error>),
    );
    let body = head.chain(messages_of(state, id)).boxed();
    Ok(ndjson(body, &format!("confab-room-{}", room.name)))
}

#[utoipa::path(delete, path = "/api/v1/users/me", tag = "users", request_body(content = Option<DeleteMeBody>),
    responses((status = 204, description = "the account is gone; its sockets close with 4001"),
        (status = 403, description = "the password is wrong or missing (accounts with one): nothing is deleted")))]
pub async fn delete_me(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<StatusCode> {
    // Accounts of the OpenID provider and bots have no password and may send no body.
    let body: DeleteMeBody = super::optional_json(&body)?;
    let has_password = !(caller.user.external || caller.user.bot);
    if has_password {
        // A missing password is as wrong as a wrong one: nothing is deleted.
        let password = body.password.unwrap_or_default();
        let hash = caller.user.password_hash.clone();
        if !state.hashing.verify(password, hash).await? {
            return Err(ApiError::forbidden(
                "the password is wrong or missing; nothing was deleted",
            ));
        }
    }
    delete_account(&state, caller.user.id, body.erase_messages).await?;
    tracing::info!(user = %caller.user.id, erase = body.erase_messages, "account deleted by its owner");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/admin/users/{id}", tag = "admin", request_body(content = Option<DeleteUserBody>),
    params(("id" = uuid::Uuid, Path, description = "user id")),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<UserId>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    // The body is optional: none keeps the messages.
    let erase = super::optional_json::<DeleteUserBody>(&body)?.erase_messages;
    if !delete_account(&state, id, erase).await? {
        return Err(ApiError::not_found("no such user"));
    }
    tracing::info!(user = %id, by = %caller.user.id, erase, "account deleted by an admin");
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the account and tells every pod: its sockets close with 4001, and subscribers
/// of its rooms learn of each erased message. False when there was no such account.
pub(super) async fn delete_account(state: &AppState, user: UserId, erase: bool) -> ApiResult<bool> {
    let Some(erased) = state
        .store
        .delete_user(user, erase, crate::now_ms())
        .await?
    else {
        return Ok(false);
    };
    state.hub.control(ControlEvent::UserDeleted { user });
    for e in erased {
        let frame = ServerFrame::MessageDeleted {
            room: e.room,
            seq: e.seq,
            id: e.id,
            rev: e.rev,
        }
        .encode();
        state.hub.publish_event(e.room, frame, None);
    }
    Ok(true)
}
