//! The WebSocket endpoint: one task per connection ([`Connection`]) that reads client frames,
//! writes queued server frames (many per flush), pings, and closes with the protocol's codes.
//!
//! A connection never blocks the rest of the server: others reach it only through its bounded
//! [`Outbox`]. It must not write to any socket but its own.

pub mod frame;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::commit::{Pending, Reply, error_frame};
use crate::error::{ApiError, ApiResult};
use crate::http::messages::{
    check_message, delete_message, edit_message, move_marker, receipt_frame,
};
use crate::http::{ApiQuery, AppState};
use crate::hub::{Close, ControlEvent, Inbox, Next, Outbound, Outbox, frame, message_frame};
use crate::ids::{MessageId, RoomId};
use crate::moderation::SendRules;
use crate::store::{Marker, NewMessage, UserRecord};
use frame::ClientFrame;

/// The largest frame a client may send (PROTOCOL.md); larger closes with 1009.
pub const MAX_FRAME_BYTES: usize = 65_536;
/// A typing indicator without a refresh turns itself off after this long.
pub const TYPING_TTL: Duration = Duration::from_secs(6);
/// At most one receipt per user, room and kind in this interval.
pub const RECEIPT_INTERVAL: Duration = Duration::from_secs(1);
/// Beyond this many missed messages a resume is not replayed (`recovered: false`).
pub const MAX_REPLAY: i64 = 1000;
/// Rate-limited frames within [`ABUSE_WINDOW`] that close the socket with 4008.
pub const ABUSE_LIMIT: usize = 30;
pub const ABUSE_WINDOW: Duration = Duration::from_secs(10);
/// Bytes read from a socket at a time (tungstenite keeps a buffer of this size per socket).
const READ_BUFFER: usize = 512;
/// At most this many queued frames are written per flush.
const WRITE_BATCH: usize = 64;

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// The socket, written and read as one: no split halves, and no lock between them.
type Sink = WebSocket;

/// `GET /ws`: a token in the handshake is checked before the upgrade (401 if bad).
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    if state.is_draining() {
        return ApiError::Unavailable("the server is draining; connect again".into())
            .into_response();
    }
    let header_token = crate::http::bearer(&headers).map(str::to_string);
    if let Err(e) = check_origin(&state, &headers) {
        return e.into_response();
    }
    let authenticated = match header_token.or(q.token) {
        Some(token) => match state.authenticate(&token).await {
            Ok((user, claims)) => Some((user, claims.exp)),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    if let Some((user, _)) = &authenticated
        && state.hub.connections_of(user.id) >= state.config.max_connections_per_user
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
        .on_upgrade(move |socket| run(state, socket, authenticated))
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

fn quota(per_second: u32, burst: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(per_second.max(1)).expect("non-zero"))
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("non-zero"))
}

fn too_big(e: &axum::Error) -> bool {
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

/// The window the reconnect hints of a draining pod are spread over.
pub const DRAIN_RECONNECT_SPREAD_MS: u64 = 2000;

/// How long a closing socket waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Sends the close frame, then reads until the client answers with its own (or
/// [`CLOSE_LINGER`] passes), as RFC 6455 asks. Closing the TCP connection with frames still
/// unread would make the kernel reset it, and a reset can destroy the close frame, and with it
/// the code that tells the client why, before the client reads it.
///
/// A draining close carries a reconnect hint, `retry_after_ms=N` with N drawn at random for
/// each socket, so that the clients of a pod going away spread their reconnects instead of
/// arriving elsewhere all at once.
async fn send_close(sink: &mut Sink, close: &Close) {
    let reason = if close.code == Close::DRAINING.code {
        let wait = rand::random_range(0..DRAIN_RECONNECT_SPREAD_MS);
        Utf8Bytes::from(format!("{}; retry_after_ms={wait}", close.reason))
    } else {
        Utf8Bytes::from_static(close.reason)
    };
    let frame = CloseFrame {
        code: close.code,
        reason,
    };
    if sink.send(WsMessage::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(_)) = sink.next().await {}
    })
    .await;
}

/// When a token with this `exp` (Unix seconds) runs out, on the monotonic clock.
fn token_deadline(exp: u64) -> tokio::time::Instant {
    let left = exp.saturating_sub(unix_now()).max(1);
    tokio::time::Instant::now() + Duration::from_secs(left)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Waits for an `auth` frame. `None` when the socket should be dropped.
async fn authenticate(state: &AppState, sink: &mut Sink) -> Option<(UserRecord, u64)> {
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
                let reply = match frame::parse(&text) {
                    Ok(ClientFrame::Auth { token }) => match state.authenticate(&token).await {
                        Ok((user, claims)) => return Some((user, claims.exp)),
                        Err(e) => error_frame(&e, None),
                    },
                    Ok(_) => error_frame(&ApiError::unauthorized("send an auth frame first"), None),
                    Err((msg, r)) => error_frame(&ApiError::BadRequest(msg), r.as_deref()),
                };
                if sink.send(WsMessage::Text(reply)).await.is_err() {
                    return None;
                }
            }
        }
    }
}

async fn run(state: AppState, mut socket: WebSocket, authenticated: Option<(UserRecord, u64)>) {
    let (mut user, token_exp) = match authenticated {
        Some(a) => a,
        // Boxed: waiting for the auth frame is over before the connection's long life starts.
        None => match Box::pin(authenticate(&state, &mut socket)).await {
            Some(a) => a,
            None => return,
        },
    };
    // A socket keeps no secret, and nothing it does not use, for as long as it is open.
    user.password_hash = String::new();
    user.ban_reason = None;
    let (outbox, inbox) = Outbox::new(user.id, state.config.outbound_queue, state.metrics.clone());
    state.hub.register(&outbox);
    let policy = state.policies.current();
    let mut conn = Connection {
        muted_until: user.muted_until,
        user,
        token_exp,
        token_deadline: token_deadline(token_exp),
        outbox,
        subs: HashMap::new(),
        rules: HashMap::new(),
        typing: HashMap::new(),
        receipts: HashMap::new(),
        limiter: RateLimiter::direct(quota(policy.messages_per_second, policy.burst)),
        policy_generation: policy.generation,
        limited: VecDeque::new(),
        state,
    };
    // The upgrade's task ends here, and with it what the handshake needed: the socket lives on
    // in a task that holds only the connection, so an idle socket costs no more than that.
    // An async block rather than a method taking `self`: parameters of an async fn are
    // copied into its state, and the copy would double what each socket holds.
    tokio::spawn(async move {
        tracing::debug!(conn = conn.outbox.conn, user = %conn.user.id, "connection open");
        let ended = conn.serve(&mut socket, inbox).await;
        conn.state
            .metrics
            .ws_closed
            .with_label_values(&[ended.reason])
            .inc();
        tracing::debug!(
            conn = conn.outbox.conn,
            reason = ended.reason,
            "connection closed"
        );
        // The connection leaves its rooms at once; the close handshake may take a moment.
        Box::pin(conn.finish()).await;
        if let Some(close) = ended.close {
            send_close(&mut socket, &close).await;
        }
    });
}

/// Why a connection's loop ended, and the close frame it owes the client, if any.
struct Ended {
    reason: &'static str,
    close: Option<Close>,
}

impl Ended {
    fn gone(reason: &'static str) -> Ended {
        Ended {
            reason,
            close: None,
        }
    }

    fn closing(reason: &'static str, close: Close) -> Ended {
        Ended {
            reason,
            close: Some(close),
        }
    }
}

struct Throttle {
    last: Instant,
    pending: Option<i64>,
}

pub struct Connection {
    state: AppState,
    user: UserRecord,
    token_exp: u64,
    /// `token_exp` on the monotonic clock, for the connection's timer.
    token_deadline: tokio::time::Instant,
    outbox: Outbox,
    /// Subscribed rooms and the last message seq this socket was sent in each.
    subs: HashMap<RoomId, i64>,
    /// Send rules of rooms whose membership was checked, so sending needs no query per
    /// message; control events keep them current.
    rules: HashMap<RoomId, SendRules>,
    /// The user's global mute, kept current by control events.
    muted_until: Option<i64>,
    typing: HashMap<RoomId, Instant>,
    receipts: HashMap<(RoomId, bool), Throttle>,
    limiter: DefaultDirectRateLimiter,
    /// The policy generation the limiter was built for.
    policy_generation: u64,
    /// When recent frames were refused by the rate limit (abuse detection).
    limited: VecDeque<Instant>,
}

impl Connection {
    async fn serve(&mut self, sink: &mut Sink, mut inbox: Inbox) -> Ended {
        // Built and dropped before the loop: a local held across it would stay in every
        // idle connection's task.
        let hello = frame(&json!({
            "type": "hello",
            "user": self.state.user_json(&self.user),
            "connection_id": format!("{}-{}", self.state.hub.pod(), self.outbox.conn),
            "heartbeat_ms": self.state.config.heartbeat_ms,
        }));
        if sink.send(WsMessage::Text(hello)).await.is_err() {
            return Ended::gone("client_gone");
        }
        let period = Duration::from_millis(self.state.config.heartbeat_ms);
        // One timer, in this task's state (no allocation), set to the socket's next deadline:
        // its heartbeat, its token's expiry, or a typing/receipt deadline it has.
        let mut ping_at = tokio::time::Instant::now() + period;
        let mut wake_at = self.next_wake().min(ping_at);
        let wake = tokio::time::sleep_until(wake_at);
        tokio::pin!(wake);
        let mut missed_pongs = 0u32;
        loop {
            // Only a client frame (typing, a receipt, a new token) or the timer itself moves
            // the timer's deadline; a delivery does not, so it costs no recomputation.
            let mut rearm = false;
            tokio::select! {
                incoming = sink.next() => {
                    missed_pongs = 0;
                    rearm = true;
                    let text = match incoming {
                        None => return Ended::gone("client_closed"),
                        Some(Ok(WsMessage::Close(_))) => {
                            // Sends the reply tungstenite queued: the close handshake completes.
                            let _ = sink.flush().await;
                            return Ended::gone("client_closed");
                        }
                        Some(Err(e)) => {
                            if too_big(&e) {
                                return Ended::closing("too_big", Close::TOO_BIG);
                            }
                            return Ended::gone("client_gone");
                        }
                        Some(Ok(WsMessage::Text(t))) => t,
                        Some(Ok(WsMessage::Binary(_))) => {
                            let e = ApiError::bad_request("binary frames are not supported; send JSON text");
                            if sink.send(WsMessage::Text(error_frame(&e, None))).await.is_err() {
                                return Ended::gone("client_gone");
                            }
                            continue;
                        }
                        Some(Ok(_)) => continue, // ping/pong: tungstenite answers pings itself
                    };
                    // Boxed: handling a frame awaits the store, and that state is only needed
                    // while a frame is handled, not in every idle connection's task.
                    match Box::pin(self.handle(&text, sink)).await {
                        Ok(None) => {}
                        Ok(Some(c)) => {
                            return Ended::closing("policy", c);
                        }
                        Err(()) => return Ended::gone("client_gone"),
                    }
                }
                next = inbox.recv() => {
                    let item = match next {
                        Next::Item(item) => item,
                        Next::Close(c) => {
                            let reason = match c.code {
                                1001 => "draining",
                                1008 => "slow_consumer",
                                _ => "server",
                            };
                            return Ended::closing(reason, c);
                        }
                    };
                    // Everything queued goes out in one write (up to a bound, so one busy
                    // socket cannot hold its worker thread for long).
                    if self.outbound(item, sink).await.is_err() {
                        return Ended::gone("client_gone");
                    }
                    for _ in 1..WRITE_BATCH {
                        let Some(item) = inbox.try_recv() else { break };
                        if self.outbound(item, sink).await.is_err() {
                            return Ended::gone("client_gone");
                        }
                    }
                    if sink.flush().await.is_err() {
                        return Ended::gone("client_gone");
                    }
                }
                _ = &mut wake => {
                    rearm = true;
                    let now = tokio::time::Instant::now();
                    if now >= ping_at {
                        if missed_pongs >= 2 {
                            return Ended::gone("heartbeat_timeout");
                        }
                        missed_pongs += 1;
                        if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                            return Ended::gone("client_gone");
                        }
                        ping_at = now + period;
                    }
                    if unix_now() >= self.token_exp {
                        return Ended::closing("token_expired", Close::UNAUTHENTICATED);
                    }
                    if now >= self.token_deadline {
                        // The wall clock was behind the monotonic one: look again later.
                        self.token_deadline = token_deadline(self.token_exp);
                    }
                    self.housekeeping();
                }
            }
            if !rearm {
                continue;
            }
            let next = self.next_wake().min(ping_at);
            if next != wake_at {
                wake_at = next;
                wake.as_mut().reset(next);
            }
        }
    }

    /// The next moment this connection has something to do by itself: the token's expiry, a
    /// typing indicator running out, or a coalesced receipt falling due.
    fn next_wake(&self) -> tokio::time::Instant {
        let mut at = self.token_deadline.into_std();
        if let Some(t) = self.typing.values().min() {
            at = at.min(*t);
        }
        for t in self.receipts.values() {
            if t.pending.is_some() {
                at = at.min(t.last + RECEIPT_INTERVAL);
            }
        }
        at.into()
    }

    /// Leaves every room and turns off typing indicators.
    async fn finish(&mut self) {
        for room in std::mem::take(&mut self.typing).into_keys() {
            self.publish_typing(room, false);
        }
        let rooms: Vec<RoomId> = self.subs.drain().map(|(r, _)| r).collect();
        self.state.hub.unregister(&self.outbox, rooms).await;
    }

    /// Writes one queued item. Err when the socket is gone.
    async fn outbound(&mut self, item: Outbound, sink: &mut Sink) -> Result<(), ()> {
        let text = match item {
            Outbound::Direct(text) => *text,
            Outbound::Room(event) => {
                let Some(cursor) = self.subs.get_mut(&event.room) else {
                    return Ok(());
                };
                if event.seq > 0 {
                    if event.seq <= *cursor {
                        return Ok(()); // already sent by the replay
                    }
                    *cursor = event.seq;
                    let latency = (crate::now_ms() - event.created_ms).max(0) as f64 / 1000.0;
                    self.state.metrics.delivery_latency.observe(latency);
                }
                event.text.clone()
            }
            // Boxed like `handle`: rare, and it may read the store.
            Outbound::Control(event) => match Box::pin(self.apply_control(&event)).await {
                Some(text) => text,
                None => return Ok(()),
            },
        };
        sink.feed(WsMessage::Text(text)).await.map_err(|_| ())
    }

    /// Applies a control event to this connection; returns the frame to tell the client, if any.
    async fn apply_control(&mut self, event: &ControlEvent) -> Option<Utf8Bytes> {
        match *event {
            ControlEvent::MemberRemoved {
                room,
                kicked,
                drop_subscription,
                ..
            } => {
                self.rules.remove(&room);
                self.typing.remove(&room);
                let was_subscribed = drop_subscription && self.subs.remove(&room).is_some();
                if was_subscribed {
                    self.state.hub.unsubscribe(room, &self.outbox).await;
                }
                if kicked {
                    Some(frame(&json!({"type": "kicked", "room": room})))
                } else if was_subscribed {
                    Some(frame(&json!({"type": "unsubscribed", "room": room})))
                } else {
                    None
                }
            }
            ControlEvent::MemberMuted { room, until, .. } => {
                if let Some(r) = self.rules.get_mut(&room) {
                    r.member_muted_until = until;
                }
                None
            }
            ControlEvent::UserMuted { until, .. } => {
                self.muted_until = until;
                None
            }
            ControlEvent::MemberAdded { room, .. } => {
                self.rules.remove(&room);
                let (record, member) = self.state.readable_room(room, self.user.id).await.ok()?;
                let room = crate::http::rooms::as_member(&record, member);
                Some(frame(&crate::model::Event {
                    kind: "room_joined",
                    body: &room,
                }))
            }
            ControlEvent::RoomChanged { room } => {
                // Settings changed (read-only, slow mode, archived): read them again when needed.
                self.rules.remove(&room);
                None
            }
            ControlEvent::UserBanned { .. } => None, // the hub closes banned sockets itself
        }
    }

    async fn reply(&self, sink: &mut Sink, text: Utf8Bytes) -> Result<Option<Close>, ()> {
        sink.send(WsMessage::Text(text)).await.map_err(|_| ())?;
        Ok(None)
    }

    async fn handle(&mut self, text: &str, sink: &mut Sink) -> Result<Option<Close>, ()> {
        let parsed = match frame::parse(text) {
            Ok(f) => f,
            Err((msg, r)) => {
                return self
                    .reply(sink, error_frame(&ApiError::BadRequest(msg), r.as_deref()))
                    .await;
            }
        };
        let result = match parsed {
            ClientFrame::Ping => return self.reply(sink, frame(&json!({"type": "pong"}))).await,
            ClientFrame::Auth { token } => self
                .reauthenticate(&token)
                .await
                .map(|_| None)
                .map_err(|e| (e, None)),
            ClientFrame::Subscribe { room, since } => match self.subscribe(room, since, sink).await
            {
                Ok(()) => Ok(None),
                Err(SubscribeError::Api(e)) => Err((e, Some(room.to_string()))),
                Err(SubscribeError::Socket) => return Err(()),
            },
            ClientFrame::Unsubscribe { room } => {
                if self.subs.remove(&room).is_some() {
                    self.state.hub.unsubscribe(room, &self.outbox).await;
                }
                Ok(Some(frame(&json!({"type": "unsubscribed", "room": room}))))
            }
            ClientFrame::Message {
                room,
                body,
                client_id,
                reply_to,
                attachments,
            } => {
                let reference = client_id.clone().unwrap_or_else(|| room.to_string());
                if let Err(e) = self.rate_limit() {
                    if self.abusive() {
                        return Ok(Some(Close::RATE_ABUSE));
                    }
                    return self.reply(sink, error_frame(&e, Some(&reference))).await;
                }
                self.send_message(room, body, client_id, reply_to, attachments)
                    .await
                    .map(|_| None)
                    .map_err(|e| (e, Some(reference)))
            }
            ClientFrame::Edit { room, seq, body } => {
                edit_message(&self.state, &self.user, room, seq, &body)
                    .await
                    .map(|_| None)
                    .map_err(|e| (e, Some(room.to_string())))
            }
            ClientFrame::Delete { room, seq } => {
                let is_admin = self.state.is_admin(&self.user.username);
                delete_message(&self.state, &self.user, is_admin, room, seq)
                    .await
                    .map(|_| None)
                    .map_err(|e| (e, Some(room.to_string())))
            }
            ClientFrame::Typing { room, active } => self
                .typing(room, active)
                .await
                .map(|_| None)
                .map_err(|e| (e, Some(room.to_string()))),
            ClientFrame::Delivered { room, seq } => self
                .receipt(room, Marker::Delivered, seq)
                .await
                .map(|_| None)
                .map_err(|e| (e, Some(room.to_string()))),
            ClientFrame::Read { room, seq } => self
                .receipt(room, Marker::Read, seq)
                .await
                .map(|_| None)
                .map_err(|e| (e, Some(room.to_string()))),
        };
        match result {
            Ok(Some(text)) => self.reply(sink, text).await,
            Ok(None) => Ok(None),
            Err((e, r)) => self.reply(sink, error_frame(&e, r.as_deref())).await,
        }
    }

    async fn reauthenticate(&mut self, token: &str) -> ApiResult<()> {
        let (user, claims) = self.state.authenticate(token).await?;
        if user.id != self.user.id {
            return Err(ApiError::unauthorized("the token belongs to another user"));
        }
        self.token_exp = claims.exp;
        self.token_deadline = token_deadline(claims.exp);
        Ok(())
    }

    /// Takes one message from the connection's allowance (rebuilt when the policy changes, so
    /// a new limit holds on open sockets too).
    fn rate_limit(&mut self) -> ApiResult<()> {
        let policy = self.state.policies.current();
        if policy.generation != self.policy_generation {
            self.limiter = RateLimiter::direct(quota(policy.messages_per_second, policy.burst));
            self.policy_generation = policy.generation;
        }
        let clock = governor::clock::DefaultClock::default();
        self.limiter.check().map_err(|not_until| {
            self.limited.push_back(Instant::now());
            self.state
                .metrics
                .rate_limited
                .with_label_values(&["ws"])
                .inc();
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&clock));
            ApiError::RateLimited {
                message: "too many messages; slow down".into(),
                retry_after_ms: wait.as_millis().max(1) as u64,
            }
        })
    }

    /// True when refusals keep coming: the client ignores `retry_after_ms`.
    fn abusive(&mut self) -> bool {
        let now = Instant::now();
        while self
            .limited
            .front()
            .is_some_and(|t| now.duration_since(*t) > ABUSE_WINDOW)
        {
            self.limited.pop_front();
        }
        self.limited.len() >= ABUSE_LIMIT
    }

    async fn subscribe(
        &mut self,
        room: RoomId,
        since: Option<i64>,
        sink: &mut Sink,
    ) -> Result<(), SubscribeError> {
        if !self.subs.contains_key(&room) && self.subs.len() >= self.state.config.max_subscriptions
        {
            return Err(ApiError::forbidden(format!(
                "at most {} subscriptions per connection; unsubscribe first",
                self.state.config.max_subscriptions
            ))
            .into());
        }
        let (r, member) = self.state.readable_room(room, self.user.id).await?;
        if let Some(m) = &member {
            self.rules.insert(room, SendRules::new(&r, m));
        }
        let cursor = match self.subs.get(&room) {
            Some(&c) => c,
            None => {
                let s = self
                    .state
                    .hub
                    .subscribe(room, &self.outbox)
                    .await
                    .map_err(ApiError::from)?;
                // A client resuming from a pod that was ahead of this one already has
                // everything up to `since`: what this pod delivers late must not reach it again.
                let start = since.map_or(s.cursor, |since| since.max(s.cursor));
                self.subs.insert(room, start);
                start
            }
        };
        let presence = self.state.hub.online(room).await;
        let mut reply = json!({
            "type": "subscribed",
            "room": room,
            "last_seq": cursor,
            "presence": presence,
        });
        let replay = match since {
            Some(since) if since < cursor => {
                let missing = cursor - since.max(0);
                if missing > MAX_REPLAY {
                    reply["recovered"] = json!(false);
                    None
                } else {
                    reply["recovered"] = json!(true);
                    Some(since.max(0))
                }
            }
            Some(_) => {
                reply["recovered"] = json!(true);
                None
            }
            None => None,
        };
        // The reply goes out at once; the replay follows once the store has answered.
        sink.send(WsMessage::Text(frame(&reply)))
            .await
            .map_err(|_| SubscribeError::Socket)?;
        if let Some(since) = replay {
            let rows = self
                .state
                .store
                .messages_after(room, since, cursor - since)
                .await
                .map_err(ApiError::from)?;
            for m in rows.iter().filter(|m| m.seq <= cursor) {
                sink.feed(WsMessage::Text(message_frame(m)))
                    .await
                    .map_err(|_| SubscribeError::Socket)?;
            }
        }
        sink.flush().await.map_err(|_| SubscribeError::Socket)
    }

    /// Membership for sending, checked once per room and then kept until a control event
    /// says otherwise.
    async fn ensure_member(&mut self, room: RoomId) -> ApiResult<SendRules> {
        let rules = match self.rules.get(&room) {
            Some(r) => r.clone(),
            None => {
                let (r, m) = self.state.readable_room(room, self.user.id).await?;
                let m = m.ok_or_else(|| ApiError::forbidden("join the room first"))?;
                let rules = SendRules::new(&r, &m);
                self.rules.insert(room, rules.clone());
                rules
            }
        };
        Ok(rules)
    }

    async fn send_message(
        &mut self,
        room: RoomId,
        body: String,
        client_id: Option<String>,
        reply_to: Option<i64>,
        attachments: Vec<String>,
    ) -> ApiResult<()> {
        check_message(
            &self.state.policies.current(),
            &body,
            client_id.as_deref(),
            reply_to,
        )?;
        let rules = self.ensure_member(room).await?;
        rules.check(self.muted_until, crate::now_ms())?;
        let attachments =
            crate::http::attachments::for_message(&self.state, self.user.id, room, &attachments)
                .await?;
        self.state.slow_mode(&rules, room, self.user.id)?;
        self.state.metrics.messages_received.inc();
        // A message ends the sender's typing indicator.
        if self.typing.remove(&room).is_some() {
            self.publish_typing(room, false);
        }
        self.state
            .writer
            .submit(Pending {
                message: NewMessage {
                    id: MessageId::new(),
                    room_id: room,
                    user_id: self.user.id,
                    username: self.user.username.clone(),
                    body,
                    client_id,
                    reply_to,
                    created_at: crate::now_ms(),
                    attachments,
                },
                reply: Reply::Socket(self.outbox.clone()),
            })
            .await
    }

    fn publish_typing(&self, room: RoomId, active: bool) {
        let text =
            frame(&json!({"type": "typing", "room": room, "user": self.user.id, "active": active}));
        self.state.hub.publish_event(room, text, Some(self.user.id));
    }

    async fn typing(&mut self, room: RoomId, active: bool) -> ApiResult<()> {
        self.ensure_member(room).await?;
        let was_active = if active {
            self.typing
                .insert(room, Instant::now() + TYPING_TTL)
                .is_some()
        } else {
            self.typing.remove(&room).is_some()
        };
        // Refreshes of an active indicator only extend its life; subscribers hear changes.
        if active != was_active {
            self.publish_typing(room, active);
        }
        Ok(())
    }

    async fn receipt(&mut self, room: RoomId, marker: Marker, seq: i64) -> ApiResult<()> {
        self.ensure_member(room).await?;
        if !move_marker(&self.state, room, self.user.id, marker, seq).await? {
            return Ok(());
        }
        let key = (room, marker == Marker::Read);
        let now = Instant::now();
        match self.receipts.get_mut(&key) {
            Some(t) if now.duration_since(t.last) < RECEIPT_INTERVAL => t.pending = Some(seq),
            _ => {
                self.receipts.insert(
                    key,
                    Throttle {
                        last: now,
                        pending: None,
                    },
                );
                self.state.hub.publish_event(
                    room,
                    receipt_frame(room, self.user.id, marker, seq),
                    None,
                );
            }
        }
        Ok(())
    }

    /// Expires typing indicators and sends coalesced receipts.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        let expired: Vec<RoomId> = self
            .typing
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(r, _)| *r)
            .collect();
        for room in expired {
            self.typing.remove(&room);
            self.publish_typing(room, false);
        }
        for ((room, read), t) in self.receipts.iter_mut() {
            if now.duration_since(t.last) >= RECEIPT_INTERVAL
                && let Some(seq) = t.pending.take()
            {
                t.last = now;
                let marker = if *read {
                    Marker::Read
                } else {
                    Marker::Delivered
                };
                self.state.hub.publish_event(
                    *room,
                    receipt_frame(*room, self.user.id, marker, seq),
                    None,
                );
            }
        }
    }
}

enum SubscribeError {
    Api(ApiError),
    Socket,
}

impl From<ApiError> for SubscribeError {
    fn from(e: ApiError) -> Self {
        SubscribeError::Api(e)
    }
}
