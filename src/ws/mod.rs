//! The WebSocket endpoint: one task per connection ([`Connection`]) that reads client frames,
//! writes queued server frames (many per flush), pings, and closes with the protocol's codes.
//!
//! A connection never blocks the rest of the server: others reach it only through its bounded
//! [`Outbox`]. It must not write to any socket but its own.

pub mod frame;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::commit::{Pending, Reply, error_frame};
use crate::error::{ApiError, ApiResult};
use crate::http::messages::{check_message, move_marker, receipt_frame};
use crate::http::{ApiQuery, AppState};
use crate::hub::{Close, Outbound, Outbox, frame, message_frame};
use crate::ids::{MessageId, RoomId};
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

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

type Sink = futures::stream::SplitSink<WebSocket, WsMessage>;
type Stream = futures::stream::SplitStream<WebSocket>;

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
    let header_token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let authenticated = match header_token.or(q.token) {
        Some(token) => match state.authenticate(&token).await {
            Ok((user, claims)) => Some((user, claims.exp)),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| run(state, socket, authenticated))
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

async fn send_close(sink: &mut Sink, close: &Close) {
    let frame = CloseFrame {
        code: close.code,
        reason: Utf8Bytes::from_static(close.reason),
    };
    let _ = sink.send(WsMessage::Close(Some(frame))).await;
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Waits for an `auth` frame. `None` when the socket should be dropped.
async fn authenticate(
    state: &AppState,
    sink: &mut Sink,
    stream: &mut Stream,
) -> Option<(UserRecord, u64)> {
    let deadline = tokio::time::sleep(Duration::from_millis(state.config.ws_auth_timeout_ms));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => {
                send_close(sink, &Close::UNAUTHENTICATED).await;
                return None;
            }
            msg = stream.next() => {
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

async fn run(state: AppState, socket: WebSocket, authenticated: Option<(UserRecord, u64)>) {
    let (mut sink, mut stream) = socket.split();
    let (user, token_exp) = match authenticated {
        Some(a) => a,
        None => match authenticate(&state, &mut sink, &mut stream).await {
            Some(a) => a,
            None => return,
        },
    };
    let (outbox, rx, close_rx) =
        Outbox::new(user.id, state.config.outbound_queue, state.metrics.clone());
    state.hub.register(&outbox);
    let mut conn = Connection {
        state: state.clone(),
        user,
        token_exp,
        outbox,
        subs: HashMap::new(),
        members: HashSet::new(),
        typing: HashMap::new(),
        receipts: HashMap::new(),
    };
    tracing::debug!(conn = conn.outbox.conn, user = %conn.user.id, "connection open");
    let reason = conn.serve(&mut sink, &mut stream, rx, close_rx).await;
    conn.finish().await;
    state.metrics.ws_closed.with_label_values(&[reason]).inc();
    tracing::debug!(conn = conn.outbox.conn, reason, "connection closed");
}

struct Throttle {
    last: Instant,
    pending: Option<i64>,
}

pub struct Connection {
    state: AppState,
    user: UserRecord,
    token_exp: u64,
    outbox: Outbox,
    /// Subscribed rooms and the last message seq this socket was sent in each.
    subs: HashMap<RoomId, i64>,
    /// Rooms whose membership was checked, so sending needs no query per message.
    members: HashSet<RoomId>,
    typing: HashMap<RoomId, Instant>,
    receipts: HashMap<(RoomId, bool), Throttle>,
}

impl Connection {
    async fn serve(
        &mut self,
        sink: &mut Sink,
        stream: &mut Stream,
        mut rx: mpsc::Receiver<Outbound>,
        mut close_rx: watch::Receiver<Option<Close>>,
    ) -> &'static str {
        let hello = json!({
            "type": "hello",
            "user": self.state.user_json(&self.user),
            "connection_id": format!("{}-{}", self.state.hub.pod(), self.outbox.conn),
            "heartbeat_ms": self.state.config.heartbeat_ms,
        });
        if sink.send(WsMessage::Text(frame(&hello))).await.is_err() {
            return "client_gone";
        }
        let period = Duration::from_millis(self.state.config.heartbeat_ms);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut house = tokio::time::interval(Duration::from_millis(250));
        let mut missed_pongs = 0u32;
        let mut batch = Vec::with_capacity(64);
        loop {
            tokio::select! {
                incoming = stream.next() => {
                    missed_pongs = 0;
                    let text = match incoming {
                        None | Some(Ok(WsMessage::Close(_))) => return "client_closed",
                        Some(Err(e)) => {
                            if too_big(&e) {
                                send_close(sink, &Close::TOO_BIG).await;
                                return "too_big";
                            }
                            return "client_gone";
                        }
                        Some(Ok(WsMessage::Text(t))) => t,
                        Some(Ok(WsMessage::Binary(_))) => {
                            let e = ApiError::bad_request("binary frames are not supported; send JSON text");
                            if sink.send(WsMessage::Text(error_frame(&e, None))).await.is_err() {
                                return "client_gone";
                            }
                            continue;
                        }
                        Some(Ok(_)) => continue, // ping/pong: tungstenite answers pings itself
                    };
                    match self.handle(&text, sink).await {
                        Ok(None) => {}
                        Ok(Some(c)) => {
                            send_close(sink, &c).await;
                            return "policy";
                        }
                        Err(()) => return "client_gone",
                    }
                }
                n = rx.recv_many(&mut batch, 64) => {
                    if n == 0 {
                        return "server";
                    }
                    for item in batch.drain(..) {
                        if self.outbound(item, sink).await.is_err() {
                            return "client_gone";
                        }
                    }
                    if sink.flush().await.is_err() {
                        return "client_gone";
                    }
                }
                _ = close_rx.changed() => {
                    let close = close_rx.borrow().clone();
                    if let Some(c) = close {
                        send_close(sink, &c).await;
                        return match c.code {
                            1001 => "draining",
                            1008 => "slow_consumer",
                            _ => "server",
                        };
                    }
                }
                _ = ping.tick() => {
                    if missed_pongs >= 2 {
                        return "heartbeat_timeout";
                    }
                    missed_pongs += 1;
                    if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                        return "client_gone";
                    }
                }
                _ = house.tick() => {
                    if unix_now() >= self.token_exp {
                        send_close(sink, &Close::UNAUTHENTICATED).await;
                        return "token_expired";
                    }
                    self.housekeeping();
                }
            }
        }
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
            Outbound::Direct(text) => text,
            Outbound::Room { room, seq, text } => {
                let Some(cursor) = self.subs.get_mut(&room) else {
                    return Ok(());
                };
                if seq > 0 {
                    if seq <= *cursor {
                        return Ok(()); // already sent by the replay
                    }
                    *cursor = seq;
                }
                text
            }
            Outbound::Removed {
                room,
                kicked,
                drop_subscription,
            } => {
                self.members.remove(&room);
                self.typing.remove(&room);
                let was_subscribed = drop_subscription && self.subs.remove(&room).is_some();
                if was_subscribed {
                    self.state.hub.unsubscribe(room, &self.outbox).await;
                }
                if kicked {
                    frame(&json!({"type": "kicked", "room": room}))
                } else if was_subscribed {
                    frame(&json!({"type": "unsubscribed", "room": room}))
                } else {
                    return Ok(());
                }
            }
        };
        sink.feed(WsMessage::Text(text)).await.map_err(|_| ())
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
                self.send_message(room, body, client_id, reply_to, attachments)
                    .await
                    .map(|_| None)
                    .map_err(|e| (e, Some(reference)))
            }
            ClientFrame::Edit { room, .. } | ClientFrame::Delete { room, .. } => Err((
                ApiError::bad_request("edit and delete are not available on this server yet"),
                Some(room.to_string()),
            )),
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
        Ok(())
    }

    async fn subscribe(
        &mut self,
        room: RoomId,
        since: Option<i64>,
        sink: &mut Sink,
    ) -> Result<(), SubscribeError> {
        let (r, member) = self.state.readable_room(room, self.user.id).await?;
        if member.is_some() && !r.archived {
            self.members.insert(room);
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
                self.subs.insert(room, s.cursor);
                s.cursor
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
        sink.feed(WsMessage::Text(frame(&reply)))
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
    async fn ensure_member(&mut self, room: RoomId) -> ApiResult<()> {
        if self.members.contains(&room) {
            return Ok(());
        }
        self.state.writable_room(room, self.user.id).await?;
        self.members.insert(room);
        Ok(())
    }

    async fn send_message(
        &mut self,
        room: RoomId,
        body: String,
        client_id: Option<String>,
        reply_to: Option<i64>,
        attachments: Vec<String>,
    ) -> ApiResult<()> {
        check_message(&body, client_id.as_deref(), reply_to)?;
        if !attachments.is_empty() {
            return Err(ApiError::bad_request(
                "attachments are not available on this server yet",
            ));
        }
        self.ensure_member(room).await?;
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
