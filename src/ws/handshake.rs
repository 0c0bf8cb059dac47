//! The WebSocket handshake: the origin check, a token in the upgrade request (401 before the
//! upgrade if it is bad) or an `auth` frame as the first frame, and the per-user connection
//! limit. What it hands on is an authenticated user; it never reads a command.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::socket::WsSocket;
use super::{Socket, send_close};
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
    ws: Upgrade,
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
    ws.accept(move |socket| super::run(state, socket, authenticated))
}

/// A WebSocket upgrade request (RFC 6455, section 4.2.1), taken apart: the key to answer and
/// the connection to take over once the answer is sent.
pub(super) struct Upgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        let has_token = |name: header::HeaderName, token: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
            return Err(ApiError::bad_request(
                "this is the WebSocket endpoint: open it with a WebSocket client \
                 (Connection: upgrade, Upgrade: websocket)",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(ApiError::bad_request(
                "the WebSocket version is not supported: send Sec-WebSocket-Version: 13",
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(ApiError::bad_request(
                "the WebSocket upgrade has no Sec-WebSocket-Key",
            ));
        };
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(ApiError::bad_request(
                "this connection cannot be upgraded to a WebSocket",
            ));
        };
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers 101 and, once the answer is sent, hands the connection to `serve`.
    fn accept<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(WsSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket upgrade failed");
                    return;
                }
            };
            // The server serves HTTP on TCP connections (`server::serve_http`): this is one.
            let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
                tracing::error!("a WebSocket upgrade on a connection that is not TCP");
                return;
            };
            serve(WsSocket::new(parts.io.into_inner(), parts.read_buf)).await;
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
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

pub(super) fn too_big(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_))
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
