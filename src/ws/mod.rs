//! The WebSocket endpoint: one task per connection ([`Connection`]) that reads client frames,
//! writes queued server frames (many per flush), pings, and closes with the protocol's codes.
//!
//! A connection never blocks the rest of the server: others reach it only through its bounded
//! [`Outbox`]. It must not write to any socket but its own.

mod handshake;
pub mod limits;
mod rooms;
mod socket;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage, Utf8Bytes};

use crate::auth::Identity;
use crate::chat::{self, Author, Draft};
use crate::commit::Reply;
use crate::error::{ApiError, ApiResult};
use crate::hub::{Close, ControlEvent, Inbox, Next, Outbound, Outbox};
use crate::ids::{RoomId, UserId};
use crate::model::Message;
use crate::moderation::SendRules;
use crate::protocol::Encode as _;
use crate::protocol::{self, ClientFrame, ServerFrame};
use crate::resume::Gate;
use crate::state::AppState;
use crate::store::{Marker, MessageRecord, Span, StoreResult};
use handshake::{authenticate, token_deadline, too_big};
use limits::{FrameKind, Limits, Verdict};
use rooms::Rooms;

pub use limits::{ABUSE_LIMIT, ABUSE_WINDOW};

/// What a connection reads frames from and writes frames to: a [`socket::WsSocket`] in the
/// server, an in-memory pair in the unit tests.
pub trait Socket:
    Sink<WsMessage, Error = WsError>
    + Stream<Item = Result<WsMessage, WsError>>
    + Unpin
    + Send
    + 'static
{
}

impl<T> Socket for T where
    T: Sink<WsMessage, Error = WsError>
        + Stream<Item = Result<WsMessage, WsError>>
        + Unpin
        + Send
        + 'static
{
}

/// The WebSocket route, `GET /ws`.
pub fn router() -> Router<AppState> {
    Router::new().route("/ws", get(handshake::upgrade))
}

/// The largest frame a client may send (docs/protocol.md); larger closes with 1009.
pub const MAX_FRAME_BYTES: usize = 65_536;
/// A typing indicator without a refresh turns itself off after this long.
pub const TYPING_TTL: Duration = Duration::from_secs(6);
/// At most one receipt per user, room and kind in this interval.
pub const RECEIPT_INTERVAL: Duration = Duration::from_secs(1);
/// Whether an encoded room event is a typing indicator.
fn is_typing(text: &str) -> bool {
    text.starts_with("{\"type\":\"typing\"")
}

/// Beyond this many missed messages a resume is not replayed (`recovered: false`).
pub const MAX_REPLAY: i64 = 1000;
/// Bytes read from a socket at a time (tungstenite's read buffer, held while a frame is in
/// flight; a larger frame is read in reads of this size into a buffer of the frame's length).
const READ_BUFFER: usize = 256;
/// How long a connection closed by the server waits for the acks of messages it submitted.
const ACK_LINGER: Duration = Duration::from_secs(1);
/// At most this many queued frames are written per flush.
const WRITE_BATCH: usize = 64;

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
async fn send_close<S: Socket>(sink: &mut S, close: &Close) {
    let reason = if close.code == Close::DRAINING.code {
        let wait = rand::random_range(0..DRAIN_RECONNECT_SPREAD_MS);
        Utf8Bytes::from(format!("{}; retry_after_ms={wait}", close.reason))
    } else {
        Utf8Bytes::from_static(close.reason)
    };
    let frame = CloseFrame {
        code: close.code.into(),
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

async fn run<S: Socket>(state: AppState, mut socket: S, authenticated: Option<Identity>) {
    let identity = match authenticated {
        Some(a) => a,
        // Boxed: waiting for the auth frame is over before the connection's long life starts.
        None => match Box::pin(authenticate(&state, &mut socket)).await {
            Some(a) => a,
            None => return,
        },
    };
    let Identity {
        mut user,
        exp: token_exp,
        key,
    } = identity;
    // A socket keeps no secret, and nothing it does not use, for as long as it is open.
    user.password_hash = String::new();
    user.ban_reason = None;
    let (outbox, inbox) = Outbox::new(user.id, state.config.outbound_queue, state.metrics.clone());
    state.hub.register(&outbox);
    if let Some(key) = key {
        // Revoking the key closes this socket on whichever pod it is.
        state.hub.register_key(&outbox, key);
    }
    let policy = state.policies.current();
    let hello = ServerFrame::Hello {
        user: state.user_json(&user),
        connection_id: format!("{}-{}", state.hub.pod(), outbox.conn),
        heartbeat_ms: state.config.heartbeat_ms,
    }
    .encode();
    let mut conn = Connection {
        muted_until: user.muted_until,
        admin: user.admin,
        user: SocketUser {
            id: user.id,
            username: user.username.into_boxed_str(),
        },
        token_exp,
        token_deadline: token_deadline(token_exp),
        outbox,
        rooms: Rooms::new(),
        extras: None,
        limits: Box::new(Limits::new(
            state.config.ws_frames_per_second,
            state.config.ws_frames_burst,
            &policy,
        )),
        unacked: 0,
        state: state.shared(),
    };
    // The hello goes out from the upgrade's task, which still has the whole account record;
    // the connection keeps only what it uses.
    let greeted = socket.send(WsMessage::Text(hello)).await.is_ok();
    // The upgrade's task ends here, and with it what the handshake needed: the socket lives on
    // in a task that holds only the connection, so an idle socket costs no more than that.
    // An async block rather than a method taking `self`: parameters of an async fn are
    // copied into its state, and the copy would double what each socket holds.
    tokio::spawn(async move {
        tracing::debug!(conn = conn.outbox.conn, user = %conn.user.id, "connection open");
        let mut inbox = inbox;
        let ended = if greeted {
            conn.serve(&mut socket, &mut inbox).await
        } else {
            Ended::gone("client_gone")
        };
        // Boxed: the end of a connection is not held by every open one.
        Box::pin(conn.end(ended, socket, inbox)).await;
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

/// What a connection keeps only once it types, sends receipts or is sent someone's typing:
/// boxed, so that a socket that does none of these holds one pointer for it.
#[derive(Default)]
struct Extras {
    /// The users this user blocks (their typing is not shown), read when first needed.
    blocked: Option<Box<[UserId]>>,
    /// The rooms this user is shown typing in, and when each indicator runs out.
    typing: HashMap<RoomId, Instant>,
    receipts: HashMap<(RoomId, bool), Throttle>,
}

pub struct Connection {
    /// The pod's one shared copy: a pointer, not a copy of every handle.
    state: std::sync::Arc<AppState>,
    /// What the socket uses of its account; the hello had the rest.
    user: SocketUser,
    /// An admin by its own account (`--admins` is checked by username).
    admin: bool,
    token_exp: u64,
    /// `token_exp` on the monotonic clock, for the connection's timer.
    token_deadline: tokio::time::Instant,
    outbox: Outbox,
    /// Subscribed rooms with the last message seq this socket was sent in each, and the send
    /// rules of rooms whose membership was checked, so sending needs no query per message
    /// (control events keep them current).
    rooms: Rooms,
    /// The user's global mute, kept current by control events.
    muted_until: Option<i64>,
    /// Typing, receipts and the block list, made when first needed.
    extras: Option<Box<Extras>>,
    /// Boxed: with it out of line, the task's cell fits the allocator's 1,024-byte class.
    limits: Box<Limits>,
    /// Messages submitted whose ack or error has not been written yet.
    unacked: u32,
}

/// The parts of the account a socket uses after its hello: 32 bytes in the task, where the
/// whole record was a 160-byte allocation with a string or two beside it.
struct SocketUser {
    id: UserId,
    username: Box<str>,
}

impl SocketUser {
    /// The user as the chat operations check it, with the mute and admin flag the connection
    /// keeps beside it. A method here, not on `Connection`, so that it borrows only the user.
    fn author(&self, muted_until: Option<i64>, admin: bool) -> Author<'_> {
        Author {
            id: self.id,
            username: &self.username,
            muted_until,
            admin,
        }
    }
}

/// Every idle socket holds a `Connection` for its whole life: a field added here is paid
/// once per socket (it was 768 bytes before the steps in docs/BENCHMARKS.md, "Idle memory").
const _: () = assert!(std::mem::size_of::<Connection>() <= 144);

impl Connection {
    /// After the loop: counts why it ended, answers what the client sent, leaves the rooms
    /// and closes the socket.
    async fn end<S: Socket>(&mut self, ended: Ended, mut socket: S, mut inbox: Inbox) {
        self.state
            .metrics
            .ws_closed
            .with_label_values(&[ended.reason])
            .inc();
        tracing::debug!(
            conn = self.outbox.conn,
            reason = ended.reason,
            "connection closed"
        );
        if ended.close.is_some() {
            // A close the client did not ask for: the answers to its messages go first.
            self.write_replies(&mut socket, &mut inbox).await;
        }
        drop(inbox);
        // The connection leaves its rooms at once; the close handshake may take a moment.
        self.finish().await;
        if let Some(close) = ended.close {
            send_close(&mut socket, &close).await;
        }
    }

    async fn serve<S: Socket>(&mut self, sink: &mut S, inbox: &mut Inbox) -> Ended {
        // One timer, in this task's state (no allocation), set to the socket's next deadline:
        // its heartbeat, its token's expiry, or a typing/receipt deadline it has.
        let mut ping_at = tokio::time::Instant::now() + self.heartbeat();
        let wake = tokio::time::sleep_until(self.next_wake().min(ping_at));
        tokio::pin!(wake);
        let mut missed_pongs = 0u32;
        loop {
            // Only a client frame (typing, a receipt, a new token) or the timer itself moves
            // the timer's deadline; a delivery does not, so it costs no recomputation.
            let mut rearm = false;
            tokio::select! {
                incoming = sink.next() => {
                    missed_pongs = 0;
                    // A heartbeat's pong (or a client's ping, which tungstenite answers
                    // itself) moves no deadline and needs no handling.
                    if matches!(incoming, Some(Ok(WsMessage::Pong(_) | WsMessage::Ping(_)))) {
                        continue;
                    }
                    rearm = true;
                    // Boxed: handling a frame awaits the store, and that state is only needed
                    // while a frame is handled, not in every idle connection's task.
                    if let Err(ended) = Box::pin(self.frames(incoming, sink)).await {
                        return ended;
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
                    // Boxed: what writing awaits is only needed while it writes.
                    if Box::pin(self.deliver(item, sink, inbox)).await.is_err() {
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
                        let ping = sink.send(WsMessage::Ping(Default::default()));
                        if Box::pin(ping).await.is_err() {
                            return Ended::gone("client_gone");
                        }
                        ping_at = now + self.heartbeat();
                    }
                    if crate::now_secs() >= self.token_exp {
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
            if next != wake.deadline() {
                wake.as_mut().reset(next);
            }
        }
    }

    /// Writes what is queued in one write (up to a bound, so one busy socket cannot hold its
    /// worker thread for long). Err when the socket is gone.
    async fn deliver<S: Socket>(
        &mut self,
        first: Outbound,
        sink: &mut S,
        inbox: &mut Inbox,
    ) -> Result<(), ()> {
        self.outbound(first, sink).await?;
        for _ in 1..WRITE_BATCH {
            let Some(item) = inbox.try_recv() else { break };
            self.outbound(item, sink).await?;
        }
        sink.flush().await.map_err(|_| ())
    }

    /// Acts on what the socket read, and on the frames a burst read past it.
    async fn frames<S: Socket>(&mut self, first: Incoming, sink: &mut S) -> Result<(), Ended> {
        let mut item = first;
        while let Some(next) = self.incoming(item, sink).await? {
            item = next;
        }
        Ok(())
    }

    /// The heartbeat's period.
    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.state.config.heartbeat_ms)
    }

    /// Acts on what the socket read: a frame, its end or a failure. A burst of `subscribe`
    /// frames reads on past the first; what it read and did not take is returned, to be
    /// handled next.
    async fn incoming<S: Socket>(
        &mut self,
        item: Incoming,
        sink: &mut S,
    ) -> Result<Option<Incoming>, Ended> {
        let text = match item {
            None => return Err(Ended::gone("client_closed")),
            Some(Ok(WsMessage::Close(_))) => {
                // Sends the reply tungstenite queued: the close handshake completes.
                let _ = sink.flush().await;
                return Err(Ended::gone("client_closed"));
            }
            Some(Err(e)) => {
                if too_big(&e) {
                    return Err(Ended::closing("too_big", Close::TOO_BIG));
                }
                return Err(Ended::gone("client_gone"));
            }
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Binary(_))) => {
                let e = ApiError::bad_request("binary frames are not supported; send JSON text");
                let text = crate::protocol::error_frame(&e, None);
                if sink.send(WsMessage::Text(text)).await.is_err() {
                    return Err(Ended::gone("client_gone"));
                }
                return Ok(None);
            }
            Some(Ok(_)) => return Ok(None), // ping/pong: tungstenite answers pings itself
        };
        let mut next = None;
        match self.handle(&text, sink, &mut next).await {
            Ok(None) => Ok(next),
            Ok(Some(c)) => Err(Ended::closing("policy", c)),
            Err(()) => Err(Ended::gone("client_gone")),
        }
    }

    /// The next moment this connection has something to do by itself: the token's expiry, a
    /// typing indicator running out, or a coalesced receipt falling due.
    fn next_wake(&self) -> tokio::time::Instant {
        let mut at = self.token_deadline.into_std();
        let Some(extras) = &self.extras else {
            return at.into();
        };
        if let Some(t) = extras.typing.values().min() {
            at = at.min(*t);
        }
        for t in extras.receipts.values() {
            if t.pending.is_some() {
                at = at.min(t.last + RECEIPT_INTERVAL);
            }
        }
        at.into()
    }

    /// Leaves every room and turns off typing indicators.
    async fn finish(&mut self) {
        let typing = self.extras.as_mut().map(|x| std::mem::take(&mut x.typing));
        for room in typing.unwrap_or_default().into_keys() {
            self.publish_typing(room, false);
        }
        let rooms = self.rooms.take_subscribed();
        self.state.hub.unregister(&self.outbox, rooms).await;
    }

    /// Before a close the client did not ask for: writes the acks and errors already queued
    /// for its messages and, when the connection closes by its own decision (abuse, token
    /// expiry), waits (at most [`ACK_LINGER`]) for those still being committed, so that a
    /// committed message is not left without its ack.
    async fn write_replies<S: Socket>(&mut self, sink: &mut S, inbox: &mut Inbox) {
        let deadline = tokio::time::Instant::now() + ACK_LINGER;
        let written = async {
            loop {
                for text in inbox.take_direct() {
                    self.unacked = self.unacked.saturating_sub(1);
                    sink.feed(WsMessage::Text(text)).await?;
                }
                sink.flush().await?;
                // A queue closed by the server takes nothing more: what was queued is all.
                if self.unacked == 0 || inbox.closing() {
                    return Ok::<(), WsError>(());
                }
                inbox.direct_queued().await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, written).await;
    }

    /// Writes one queued item. Err when the socket is gone.
    async fn outbound<S: Socket>(&mut self, item: Outbound, sink: &mut S) -> Result<(), ()> {
        let text = match item {
            Outbound::Direct(text) => {
                self.unacked = self.unacked.saturating_sub(1);
                *text
            }
            Outbound::Room(event) => {
                if event.seq == 0 && is_typing(&event.text) && self.typing_hidden(&event.text).await
                {
                    return Ok(());
                }
                let Some(cursor) = self.rooms.cursor_mut(&event.room) else {
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

    /// Whether a typing frame comes from a user this one blocks. The list is read from the
    /// store on the first typing frame after connecting (or after a block changed it): most
    /// sockets never pay for it.
    async fn typing_hidden(&mut self, text: &str) -> bool {
        let known = self.extras.as_ref().is_some_and(|x| x.blocked.is_some());
        // Boxed: the read happens once per socket, and its state would otherwise be in
        // every idle connection's task.
        if !known && !Box::pin(self.read_blocked()).await {
            return false;
        }
        let blocked = self
            .extras
            .as_ref()
            .and_then(|x| x.blocked.as_deref())
            .unwrap_or_default();
        // The frame is `{"type":"typing","room":…,"user":"<id>",…}`: the sender's id is the
        // only user id in it.
        blocked
            .iter()
            .any(|u| text.contains(&format!("\"user\":\"{u}\"")))
    }

    /// Reads the users this user blocks; false when the store could not say.
    async fn read_blocked(&mut self) -> bool {
        let Ok(users) = self.state.store.blocked_users(self.user.id).await else {
            return false;
        };
        self.extras().blocked = Some(users.into_iter().map(|u| u.id).collect());
        true
    }

    fn extras(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
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
                self.rooms.forget_rules(&room);
                if let Some(x) = &mut self.extras {
                    x.typing.remove(&room);
                }
                let was_subscribed = drop_subscription && self.rooms.unsubscribe(&room);
                if was_subscribed {
                    self.state.hub.unsubscribe(room, &self.outbox).await;
                }
                if kicked {
                    Some(ServerFrame::Kicked { room }.encode())
                } else if was_subscribed {
                    Some(ServerFrame::Unsubscribed { room }.encode())
                } else {
                    None
                }
            }
            ControlEvent::MemberMuted { room, until, .. } => {
                if let Some(r) = self.rooms.rules_mut(&room) {
                    r.set_member_muted_until(until);
                }
                None
            }
            ControlEvent::UserMuted { until, .. } => {
                self.muted_until = until;
                None
            }
            ControlEvent::MemberAdded { room, .. } => {
                self.rooms.forget_rules(&room);
                let (record, member) = self.state.readable_room(room, self.user.id).await.ok()?;
                Some(
                    ServerFrame::RoomJoined(std::borrow::Cow::Borrowed(
                        &crate::model::room_for_member(&record, member),
                    ))
                    .encode(),
                )
            }
            ControlEvent::RoomChanged { room } => {
                // Settings changed (read-only, slow mode, archived): read them again when needed.
                self.rooms.forget_rules(&room);
                None
            }
            // The hub closes the sockets of banned and deleted accounts itself.
            ControlEvent::UserBanned { .. }
            | ControlEvent::UserDeleted { .. }
            | ControlEvent::KeyRevoked { .. }
            | ControlEvent::WebhooksChanged => None,
            ControlEvent::Blocked { user, .. } => {
                if user == self.user.id
                    && let Some(x) = &mut self.extras
                {
                    x.blocked = None;
                }
                None
            }
            // A socket subscribed to the room sees the message itself.
            ControlEvent::Notify {
                room, ref frame, ..
            } => (!self.rooms.is_subscribed(&room)).then(|| Utf8Bytes::from(frame.as_str())),
        }
    }

    async fn reply<S: Socket>(&self, sink: &mut S, text: Utf8Bytes) -> Result<Option<Close>, ()> {
        sink.send(WsMessage::Text(text)).await.map_err(|_| ())?;
        Ok(None)
    }

    /// Handles one client frame; a `subscribe` takes the ones right behind it along
    /// (`subscribe_burst`), and leaves in `next` what that read and did not take.
    async fn handle<S: Socket>(
        &mut self,
        text: &str,
        sink: &mut S,
        next: &mut Option<Incoming>,
    ) -> Result<Option<Close>, ()> {
        let parsed = protocol::parse(text);
        let kind = match &parsed {
            Ok(ClientFrame::Message { .. }) => FrameKind::Message,
            _ => FrameKind::Other,
        };
        match self.limits.check(kind, &self.state.policies.current()) {
            Verdict::Allowed => {}
            Verdict::Abusive => return Ok(Some(Close::RATE_ABUSE)),
            Verdict::Refused(e) => {
                self.state
                    .metrics
                    .rate_limited
                    .with_label_values(&["ws"])
                    .inc();
                let reference = match &parsed {
                    Ok(f) => f.reference(),
                    Err((_, r)) => r.clone(),
                };
                let text = crate::protocol::error_frame(&e, reference.as_deref());
                return self.reply(sink, text).await;
            }
        }
        let parsed = match parsed {
            Ok(f) => f,
            Err((msg, r)) => {
                let text = crate::protocol::error_frame(&ApiError::BadRequest(msg), r.as_deref());
                return self.reply(sink, text).await;
            }
        };
        let reference = parsed.reference();
        let result = match parsed {
            ClientFrame::Ping => return self.reply(sink, ServerFrame::Pong.encode()).await,
            ClientFrame::Auth { token } => self.reauthenticate(&token).await.map(|_| None),
            ClientFrame::Subscribe {
                room,
                since,
                since_rev,
            } => {
                let first = Sub {
                    room,
                    since,
                    since_rev,
                };
                return self.subscribe_burst(first, sink, next).await;
            }
            ClientFrame::Unsubscribe { room } => {
                if self.rooms.unsubscribe(&room) {
                    self.state.hub.unsubscribe(room, &self.outbox).await;
                }
                Ok(Some(ServerFrame::Unsubscribed { room }.encode()))
            }
            ClientFrame::Message {
                room,
                body,
                client_id,
                reply_to,
                attachments,
                thread,
            } => {
                let draft = Draft {
                    body,
                    client_id,
                    reply_to,
                    attachments,
                    thread,
                };
                self.send_message(room, draft).await.map(|_| None)
            }
            ClientFrame::Edit { room, seq, body } => {
                chat::edit_message(&self.state, self.author(), room, seq, &body)
                    .await
                    .map(|_| None)
            }
            ClientFrame::Delete { room, seq } => {
                chat::delete_message(&self.state, self.author(), room, seq)
                    .await
                    .map(|_| None)
            }
            ClientFrame::Typing { room, active } => self.typing(room, active).await.map(|_| None),
            ClientFrame::Delivered { room, seq } => self
                .receipt(room, Marker::Delivered, seq)
                .await
                .map(|_| None),
            ClientFrame::Read { room, seq } => {
                self.receipt(room, Marker::Read, seq).await.map(|_| None)
            }
            ClientFrame::React {
                room,
                seq,
                emoji,
                active,
            } => chat::react(&self.state, self.author(), room, seq, &emoji, active)
                .await
                .map(|_| None),
        };
        match result {
            Ok(Some(text)) => self.reply(sink, text).await,
            Ok(None) => Ok(None),
            Err(e) => {
                let text = crate::protocol::error_frame(&e, reference.as_deref());
                self.reply(sink, text).await
            }
        }
    }

    async fn reauthenticate(&mut self, token: &str) -> ApiResult<()> {
        let identity = self.state.authenticate(token).await?;
        if identity.user.id != self.user.id {
            return Err(ApiError::unauthorized("the token belongs to another user"));
        }
        self.token_exp = identity.exp;
        self.token_deadline = token_deadline(identity.exp);
        Ok(())
    }

    /// Handles a `subscribe` and the `subscribe` frames already read behind it (a client
    /// resuming sends one per room at once), up to [`SUBSCRIBE_BURST`]: their reads go out
    /// together, so they join the same batches ([`crate::resume`]) and the socket waits for
    /// each kind of read once rather than once per room. Each frame still counts against the
    /// frame budget and gets its own answer, in the order sent, written with one flush.
    /// The first frame read that is not a `subscribe` is left in `next`.
    async fn subscribe_burst<S: Socket>(
        &mut self,
        first: Sub,
        sink: &mut S,
        next: &mut Option<Incoming>,
    ) -> Result<Option<Close>, ()> {
        use futures::FutureExt as _;
        let mut burst = vec![first];
        // A subscribe behind the burst that the frame budget refused: answered after it.
        let mut refused = None;
        while burst.len() < SUBSCRIBE_BURST {
            let Some(item) = sink.next().now_or_never() else {
                break;
            };
            if let Some(Ok(WsMessage::Text(text))) = &item
                && let Ok(ClientFrame::Subscribe {
                    room,
                    since,
                    since_rev,
                }) = protocol::parse(text)
            {
                let policy = self.state.policies.current();
                match self.limits.check(FrameKind::Other, &policy) {
                    Verdict::Allowed => {
                        burst.push(Sub {
                            room,
                            since,
                            since_rev,
                        });
                        continue;
                    }
                    verdict => {
                        refused = Some((verdict, room));
                        break;
                    }
                }
            }
            *next = Some(item);
            break;
        }
        self.subscribe_all(&burst, sink).await?;
        let close = match refused {
            Some((Verdict::Abusive, _)) => Some(Close::RATE_ABUSE),
            Some((Verdict::Refused(e), room)) => {
                self.state
                    .metrics
                    .rate_limited
                    .with_label_values(&["ws"])
                    .inc();
                let text = crate::protocol::error_frame(&e, Some(&room.to_string()));
                sink.feed(WsMessage::Text(text)).await.map_err(|_| ())?;
                None
            }
            _ => None,
        };
        sink.flush().await.map_err(|_| ())?;
        Ok(close)
    }

    /// Subscribes to each room of a burst and writes the answers, in order. The reads of the
    /// burst's rooms go out at once, one kind after the other: the room and membership, then
    /// presence, missed messages and changes. Joining the hub, which decides each room's
    /// cursor, goes in the order sent. Missed messages and changes are read and written for
    /// up to [`MAX_REPLAY`] of them at a time (one room's worth at most, as for one subscribe),
    /// so what a burst holds stays bounded however much its rooms missed.
    async fn subscribe_all<S: Socket>(&mut self, burst: &[Sub], sink: &mut S) -> Result<(), ()> {
        let user = self.user.id;
        let gates = futures::future::join_all(
            burst
                .iter()
                .map(|sub| self.state.resumes.gate(sub.room, user)),
        )
        .await;
        let mut plans = Vec::with_capacity(burst.len());
        for (sub, gate) in burst.iter().zip(gates) {
            plans.push(self.join(sub, gate).await);
        }
        let mut rest = burst.iter().zip(plans).peekable();
        while rest.peek().is_some() {
            let mut part = Vec::new();
            let mut rows = 0;
            while let Some((_, plan)) = rest.peek() {
                let more = plan.as_ref().map_or(0, Plan::rows);
                if !part.is_empty() && rows + more > MAX_REPLAY {
                    break;
                }
                rows += more;
                part.extend(rest.next());
            }
            let this = &*self;
            let reads = part.iter().map(|(_, plan)| async move {
                let plan = plan.as_ref().ok()?;
                Some(this.read_missed(plan).await)
            });
            let reads = futures::future::join_all(reads).await;
            for ((sub, plan), read) in part.into_iter().zip(reads) {
                let answer = plan.and_then(|plan| {
                    let (presence, updates, rows) = read.expect("a plan has its reads");
                    plan.frames(presence, updates?, rows)
                });
                let frames = answer.unwrap_or_else(|e| {
                    vec![crate::protocol::error_frame(
                        &e,
                        Some(&sub.room.to_string()),
                    )]
                });
                for text in frames {
                    sink.feed(WsMessage::Text(text)).await.map_err(|_| ())?;
                }
            }
        }
        Ok(())
    }

    /// The checks of one `subscribe` with its room and membership read, and the socket's
    /// place in the room: its cursor, and what it missed to read.
    async fn join(&mut self, sub: &Sub, gate: StoreResult<Gate>) -> ApiResult<Plan> {
        let room = sub.room;
        if !self.rooms.is_subscribed(&room)
            && self.rooms.subscriptions() >= self.state.config.max_subscriptions
        {
            return Err(ApiError::forbidden(format!(
                "at most {} subscriptions per connection; unsubscribe first",
                self.state.config.max_subscriptions
            )));
        }
        let (r, member) = gate?.ok_or_else(crate::state::no_such_room)?;
        crate::state::may_read(r.kind, member.as_ref())?;
        if let Some(m) = &member {
            self.rooms.set_rules(room, SendRules::of(&r, m));
        }
        // A cursor beyond the room's last seq is not from this room's history (a restore from
        // backup, another installation): it is ignored, and the client is told to resync.
        let foreign = sub.since.is_some_and(|since| since > r.last_seq)
            || sub.since_rev.is_some_and(|since_rev| since_rev > r.rev);
        let since = sub.since.filter(|_| !foreign);
        let since_rev = sub.since_rev.filter(|_| !foreign);
        let cursor = match self.rooms.cursor(&room) {
            Some(c) => c,
            None => {
                let s = self
                    .state
                    .hub
                    .subscribe(room, &self.outbox, (r.last_seq, r.rev))
                    .await?;
                // A client resuming from a pod that was ahead of this one already has
                // everything up to `since`: what this pod delivers late must not reach it again.
                let start = since.map_or(s.cursor, |since| since.max(s.cursor));
                self.rooms.subscribe(room, start);
                start
            }
        };
        let (recovered, replay) = match since {
            _ if foreign => (Some(false), None),
            Some(since) if since < cursor => {
                if cursor - since.max(0) > MAX_REPLAY {
                    (Some(false), None)
                } else {
                    (Some(true), Some(since.max(0)))
                }
            }
            Some(_) => (Some(true), None),
            None => (None, None),
        };
        // Changes to messages the client already has (seq up to its cursor), in rev order.
        let changes = since_rev
            .filter(|_| recovered != Some(false))
            .map(|since_rev| (since_rev, since.map_or(cursor, |since| since.min(cursor))));
        Ok(Plan {
            room,
            cursor,
            rev: r.rev,
            recovered,
            replay,
            changes,
        })
    }

    /// Who is online in a planned room, and the changes and messages its socket missed.
    async fn read_missed(
        &self,
        plan: &Plan,
    ) -> (
        Vec<UserId>,
        ApiResult<Option<Vec<MessageRecord>>>,
        ApiResult<Vec<MessageRecord>>,
    ) {
        let room = plan.room;
        let presence = self.state.hub.online(room);
        let changes = async {
            let Some((since_rev, upto)) = plan.changes else {
                return Ok(None);
            };
            // Each change adds one to the room's rev and touches at most two messages (a
            // thread reply and its root): within MAX_REPLAY changes the batched read is
            // bounded; beyond, one limited query tells whether more than MAX_REPLAY changed.
            let updates = if plan.rev - since_rev <= MAX_REPLAY {
                let span = Span {
                    room,
                    after: since_rev,
                    upto,
                };
                self.state.resumes.changes(span).await
            } else {
                self.state
                    .store
                    .changes(room, since_rev, upto, MAX_REPLAY + 1)
                    .await
            };
            Ok(Some(updates?))
        };
        let replay = async {
            let Some(after) = plan.replay else {
                return Ok(Vec::new());
            };
            let span = Span {
                room,
                after,
                upto: plan.cursor,
            };
            Ok(self.state.resumes.messages(span).await?)
        };
        tokio::join!(presence, changes, replay)
    }

    /// This socket's user as the chat operations check it.
    fn author(&self) -> Author<'_> {
        self.user.author(self.muted_until, self.admin)
    }

    /// Sends a message through the one send path, with the send rules this socket keeps.
    async fn send_message(&mut self, room: RoomId, draft: Draft) -> ApiResult<()> {
        // Borrows the user alone: `rules_for` borrows the rooms beside it.
        let author = self.user.author(self.muted_until, self.admin);
        let rules = rules_for(&self.state, &mut self.rooms, self.user.id, room);
        let reply = Reply::Socket(self.outbox.clone());
        chat::submit_message(&self.state, author, room, draft, rules, reply).await?;
        self.unacked = self.unacked.saturating_add(1);
        // A message ends the sender's typing indicator.
        if let Some(x) = &mut self.extras
            && x.typing.remove(&room).is_some()
        {
            self.publish_typing(room, false);
        }
        Ok(())
    }

    fn publish_typing(&self, room: RoomId, active: bool) {
        let text = ServerFrame::Typing {
            room,
            user: self.user.id,
            active,
        }
        .encode();
        self.state.hub.publish_event(room, text, Some(self.user.id));
    }

    async fn typing(&mut self, room: RoomId, active: bool) -> ApiResult<()> {
        rules_for(&self.state, &mut self.rooms, self.user.id, room).await?;
        let was_active = if active {
            self.extras()
                .typing
                .insert(room, Instant::now() + TYPING_TTL)
                .is_some()
        } else {
            let typing = self.extras.as_mut().map(|x| &mut x.typing);
            typing.is_some_and(|t| t.remove(&room).is_some())
        };
        // Refreshes of an active indicator only extend its life; subscribers hear changes.
        if active != was_active {
            self.publish_typing(room, active);
        }
        Ok(())
    }

    async fn receipt(&mut self, room: RoomId, marker: Marker, seq: i64) -> ApiResult<()> {
        rules_for(&self.state, &mut self.rooms, self.user.id, room).await?;
        if !chat::move_marker(&self.state, room, self.user.id, marker, seq).await? {
            return Ok(());
        }
        let key = (room, marker == Marker::Read);
        let now = Instant::now();
        // The field rather than `extras()`, so that `self.state` stays borrowable below.
        let receipts = &mut self.extras.get_or_insert_with(Box::default).receipts;
        match receipts.get_mut(&key) {
            Some(t) if now.duration_since(t.last) < RECEIPT_INTERVAL => t.pending = Some(seq),
            _ => {
                receipts.insert(
                    key,
                    Throttle {
                        last: now,
                        pending: None,
                    },
                );
                chat::publish_receipt(&self.state, room, self.user.id, marker, seq);
            }
        }
        Ok(())
    }

    /// Expires typing indicators and sends coalesced receipts.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        let Some(extras) = self.extras.as_deref_mut() else {
            return;
        };
        let expired: Vec<RoomId> = extras
            .typing
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(r, _)| *r)
            .collect();
        for room in &expired {
            extras.typing.remove(room);
        }
        for ((room, read), t) in extras.receipts.iter_mut() {
            if now.duration_since(t.last) >= RECEIPT_INTERVAL
                && let Some(seq) = t.pending.take()
            {
                t.last = now;
                let marker = if *read {
                    Marker::Read
                } else {
                    Marker::Delivered
                };
                chat::publish_receipt(&self.state, *room, self.user.id, marker, seq);
            }
        }
        for room in expired {
            self.publish_typing(room, false);
        }
    }
}

/// What the socket read and has not handled yet: a frame, its end (`None`) or a failure.
type Incoming = Option<Result<WsMessage, WsError>>;

/// Most `subscribe` frames handled together (see `Connection::subscribe_burst`).
const SUBSCRIBE_BURST: usize = 64;

/// A `subscribe` frame.
struct Sub {
    room: RoomId,
    since: Option<i64>,
    since_rev: Option<i64>,
}

/// A `subscribe` that has joined its room: what its answer says and what it still reads.
struct Plan {
    room: RoomId,
    cursor: i64,
    rev: i64,
    recovered: Option<bool>,
    /// The missed messages to replay: after this seq, up to `cursor`.
    replay: Option<i64>,
    /// The changes to read: after this rev, to messages up to this seq.
    changes: Option<(i64, i64)>,
}

impl Plan {
    /// At most how many rows its reads bring: the missed messages and the changes.
    fn rows(&self) -> i64 {
        let replay = self.replay.map_or(0, |after| self.cursor - after);
        let changes = self
            .changes
            .map_or(0, |(since_rev, _)| (self.rev - since_rev).min(MAX_REPLAY));
        replay + changes
    }

    /// The answer: `subscribed`, then the missed messages, then the changes (beyond
    /// [`MAX_REPLAY`] changes, none, and `recovered: false`: the client resyncs over REST).
    fn frames(
        self,
        presence: Vec<UserId>,
        updates: Option<Vec<MessageRecord>>,
        rows: ApiResult<Vec<MessageRecord>>,
    ) -> ApiResult<Vec<Utf8Bytes>> {
        let mut recovered = self.recovered;
        let mut updates = updates.unwrap_or_default();
        if self.changes.is_some() {
            if updates.len() as i64 > MAX_REPLAY {
                updates.clear();
                recovered = Some(false);
            } else {
                recovered = Some(true);
            }
        }
        let mut frames = vec![
            ServerFrame::Subscribed {
                room: self.room,
                last_seq: self.cursor,
                presence,
                recovered,
                rev: self.rev,
            }
            .encode(),
        ];
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // The answer went out; the replay could not be read.
                let reference = self.room.to_string();
                frames.push(crate::protocol::error_frame(&e, Some(&reference)));
                return Ok(frames);
            }
        };
        for m in rows.iter().filter(|m| m.seq <= self.cursor) {
            frames
                .push(ServerFrame::Message(std::borrow::Cow::Borrowed(&Message::from(m))).encode());
        }
        for m in &updates {
            frames.push(
                ServerFrame::MessageUpdated(std::borrow::Cow::Borrowed(&Message::from(m))).encode(),
            );
        }
        Ok(frames)
    }
}

/// The send rules of `room` for `user`: from the socket's cache, or checked once (membership)
/// and then kept until a control event says otherwise.
async fn rules_for(
    state: &AppState,
    cache: &mut Rooms,
    user: crate::ids::UserId,
    room: RoomId,
) -> ApiResult<SendRules> {
    if let Some(r) = cache.rules(&room) {
        return Ok(r.clone());
    }
    let (r, m) = state.readable_room(room, user).await?;
    let m = m.ok_or_else(|| ApiError::forbidden("join the room first"))?;
    let rules = SendRules::new(&r, &m);
    cache.set_rules(room, rules.clone());
    Ok(rules)
}

/// The connection's commands and limits, driven through an in-memory socket (no server, no
/// TCP): the same `run` the handshake calls, over a pair of channels.
#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::channel::mpsc;
    use serde_json::{Value, json};

    use super::*;
    use crate::config::Config;

    /// The server's end of an in-memory socket.
    struct Pipe {
        to_client: mpsc::UnboundedSender<WsMessage>,
        from_client: mpsc::UnboundedReceiver<WsMessage>,
    }

    impl Sink<WsMessage> for Pipe {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: WsMessage) -> Result<(), Self::Error> {
            self.to_client
                .unbounded_send(item)
                .map_err(|_| WsError::ConnectionClosed)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Stream for Pipe {
        type Item = Result<WsMessage, WsError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_client.poll_next_unpin(cx).map(|m| m.map(Ok))
        }
    }

    /// The client's end.
    struct Client {
        send: mpsc::UnboundedSender<WsMessage>,
        recv: mpsc::UnboundedReceiver<WsMessage>,
    }

    impl Client {
        fn send(&self, frame: Value) {
            self.send
                .unbounded_send(WsMessage::Text(frame.to_string().into()))
                .unwrap();
        }

        /// The next text frame as JSON, or the close code.
        async fn next(&mut self) -> Result<Value, Option<u16>> {
            loop {
                let m = tokio::time::timeout(Duration::from_secs(5), self.recv.next())
                    .await
                    .expect("the server answers");
                match m {
                    Some(WsMessage::Text(t)) => return Ok(serde_json::from_str(&t).unwrap()),
                    Some(WsMessage::Close(f)) => return Err(f.map(|f| f.code.into())),
                    Some(_) => continue,
                    None => return Err(None),
                }
            }
        }
    }

    /// A server state on SQLite in a temp dir, and a socket of a fresh user on it.
    async fn connect(tune: impl FnOnce(&mut Config)) -> (Client, AppState, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(dir.path().to_path_buf());
        tune(&mut config);
        let (state, _writer, _stop) = crate::server::build(config).await.unwrap();
        let user = crate::store::UserRecord::new("alice".into(), "Alice".into(), String::new());
        state.store.create_user(&user).await.unwrap();
        let (to_client, recv) = mpsc::unbounded();
        let (send, from_client) = mpsc::unbounded();
        let pipe = Pipe {
            to_client,
            from_client,
        };
        run(
            state.clone(),
            pipe,
            Some(Identity::token(user, crate::now_secs() + 600)),
        )
        .await;
        let mut client = Client { send, recv };
        assert_eq!(client.next().await.unwrap()["type"], "hello");
        (client, state, dir)
    }

    #[tokio::test]
    async fn a_ping_is_answered_and_a_bad_frame_keeps_the_socket() {
        let (mut c, _state, _dir) = connect(|_| {}).await;
        c.send(json!({"type": "ping"}));
        assert_eq!(c.next().await.unwrap(), json!({"type": "pong"}));
        c.send(json!({"type": "dance", "client_id": "c1"}));
        let e = c.next().await.unwrap();
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_str()),
            (Some("bad_request"), Some("c1"))
        );
        c.send(json!({"type": "ping"}));
        assert_eq!(c.next().await.unwrap()["type"], "pong");
    }

    #[tokio::test]
    async fn frames_beyond_the_budget_are_refused_then_a_flood_is_closed_4008() {
        let (mut c, _state, _dir) = connect(|config| {
            config.ws_frames_per_second = 1;
            config.ws_frames_burst = 3;
        })
        .await;
        for _ in 0..3 {
            c.send(json!({"type": "ping"}));
            assert_eq!(c.next().await.unwrap()["type"], "pong");
        }
        c.send(json!({"type": "ping"}));
        let e = c.next().await.unwrap();
        assert_eq!(e["code"], "rate_limited");
        assert!(e["retry_after_ms"].as_u64().unwrap() > 0);
        // Ignoring the hint: the refusals that follow count as abuse.
        for _ in 0..limits::ABUSE_LIMIT {
            c.send(json!({"type": "ping"}));
        }
        let mut refused = 0;
        let code = loop {
            match c.next().await {
                Ok(v) => {
                    assert_eq!(v["code"], "rate_limited");
                    refused += 1;
                }
                Err(code) => break code,
            }
        };
        assert_eq!((code, refused), (Some(4008), limits::ABUSE_LIMIT - 1));
    }
}
