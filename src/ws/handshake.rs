//! The WebSocket handshake: the origin check, a token in the upgrade request (401 before the
//! upgrade if it is bad) or an `auth` frame as the first frame, and the per-user connection
//! limit. What it hands on is an authenticated user; it never reads a command.

use std::time::Duration;

use axum::extract::Query;
use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message as WsMessage, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;

use super::{MAX_FRAME_BYTES, READ_BUFFER, Socket, send_close};
use crate::auth::Identity;
use crate::error::{ApiError, ApiResult};
use crate::hub::Close;
use crate::protocol::{self, ClientFrame};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /ws`: a token in the handshake is checked before the upgrade (401 if bad).
pub(super) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, QueryRejection>,
    ws: WebSocketUpgrade,
) -> Response {
    if state.is_draining() {
        return ApiError::Unavailable("the server is draining; connect again".into())
            .into_response();
    }
    if let Some(busy) = admission(&state) {
        return busy.into_response();
    }
    let Ok(Query(q)) = query else {
        return ApiError::bad_request("the query string is not valid: token=<access token>")
            .into_response();
    };
    let header_token = crate::auth::bearer(&headers).map(str::to_string);
    if let Err(e) = check_origin(&state, &headers) {
        return e.into_response();
    }
    let authenticated = match header_token.or(q.token) {
        Some(token) => match state.authenticate(&token).await {
            Ok(identity) => Some(identity),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    if let Some(identity) = &authenticated
        && state.hub.connections_of(identity.user.id) >= state.config.max_connections_per_user
    {
        return ApiError::RateLimited {
            message: format!(
                "at most {} connections per user; close one first",
                state.config.max_connections_per_user
            ),
            retry_after_ms: 5_000,
        }
        .into_response();
    }
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        // Client frames are small; a larger one grows the buffer for its own length. What is
        // set here is held by every idle socket.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| super::run(state, socket, authenticated))
}

/// Store reads a pod answers per second during a reconnect storm (measured: 15,000 sockets
/// resuming 20 rooms each on two pods, `docs/BENCHMARKS.md`), for the retry hint.
const READS_PER_SECOND: usize = 40_000;

/// Admission control: while this pod's store reads for sign-ins and subscribes are further
/// behind than `--ws-admission-backlog`, a new socket would only wait behind them (and its
/// client give up and come back, adding to the pile): it is refused at once with 503 and a
/// `Retry-After` of about the time the backlog takes, spread at random so that the refused
/// do not all come back together.
fn admission(state: &AppState) -> Option<ApiError> {
    let limit = state.config.ws_admission_backlog;
    let waiting = state.resumes.waiting();
    if limit == 0 || waiting < limit {
        return None;
    }
    state
        .metrics
        .rate_limited
        .with_label_values(&["ws_admission"])
        .inc();
    let drain_ms = (waiting * 1000 / READS_PER_SECOND).clamp(1000, 30_000) as u64;
    Some(ApiError::Busy {
        message:
            "the server is catching up with other connections; connect again after Retry-After"
                .into(),
        retry_after_ms: drain_ms + rand::random_range(0..drain_ms),
    })
}

/// Browsers send `Origin`; a page on another site must not open sockets with a user's token
/// (cross-site WebSocket hijacking). Same-origin and listed origins pass; `*` lets any through.
/// Clients that send no `Origin` (apps, bots) are not browsers and pass.
fn check_origin(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(origin) = headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let allowed = &state.config.allowed_origins;
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok());
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    if host.is_some() && origin_host.is_some_and(|o| Some(o) == host) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "origin {origin} is not allowed to open WebSockets here"
    )))
}

pub(super) fn too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(tokio_tungstenite::tungstenite::Error::Capacity(_)) =
            s.downcast_ref::<tokio_tungstenite::tungstenite::Error>()
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// When a token with this `exp` (Unix seconds) runs out, on the monotonic clock.
pub(super) fn token_deadline(exp: u64) -> tokio::time::Instant {
    let left = exp.saturating_sub(crate::now_secs()).max(1);
    tokio::time::Instant::now() + Duration::from_secs(left)
}

/// Waits for an `auth` frame. `None` when the socket should be dropped.
pub(super) async fn authenticate<S: Socket>(state: &AppState, sink: &mut S) -> Option<Identity> {
    let deadline = tokio::time::sleep(Duration::from_millis(state.config.ws_auth_timeout_ms));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => {
                send_close(sink, &Close::UNAUTHENTICATED).await;
                return None;
            }
            msg = sink.next() => {
                let text = match msg {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(_))) | None => return None,
                    Some(Err(e)) => {
                        if too_big(&e) {
                            send_close(sink, &Close::TOO_BIG).await;
                        }
                        return None;
                    }
                    Some(Ok(_)) => continue,
                };
                let reply = match protocol::parse(&text) {
                    Ok(ClientFrame::Auth { token }) => match state.authenticate(&token).await {
                        Ok(identity) => return Some(identity),
                        Err(e) => crate::protocol::error_frame(&e, None),
                    },
                    Ok(_) => crate::protocol::error_frame(&ApiError::unauthorized("send an auth frame first"), None),
                    Err((msg, r)) => crate::protocol::error_frame(&ApiError::BadRequest(msg), r.as_deref()),
                };
                if sink.send(WsMessage::Text(reply)).await.is_err() {
                    return None;
                }
            }
        }
    }
}
