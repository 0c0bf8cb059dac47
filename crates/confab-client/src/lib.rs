//! The Rust client of confab's chat protocol.
//!
//! [`Client`] keeps one socket open to a confab server and keeps the protocol's promise for its
//! user — every message once, in order, across reconnects: after any reconnect it resubscribes
//! each room with `since` (the last `seq` it handed on) and `since_rev` (the last change it saw
//! through), pages the gap from history when the server could not replay everything, and resends
//! unacknowledged messages with their `client_id`. It reconnects with jittered exponential
//! backoff, honours a draining pod's `1001` hint, and renews a JWT through the token function
//! before it expires. Events go through a bounded channel: a consumer that falls behind slows
//! the socket, and if the server gives up on it, the client resumes where the consumer is.
//!
//! [`raw::Socket`] is one typed socket without any of that, for tools and tests.
#![doc = include_str!("../README.md")]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use confab_protocol as protocol;
use confab_protocol::{ClientFrame, Message, MessageId, RoomId, ServerFrame, User, close};

pub mod raw;

use raw::{Incoming, Socket};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused: an error answer over REST or an `error` frame, with the protocol's
    /// code (`forbidden`, `bad_request`, `not_found`, …).
    #[error("{code}: {message}")]
    Server {
        code: String,
        message: String,
        /// The HTTP status of a REST answer.
        status: Option<u16>,
    },
    /// The WebSocket handshake was answered with this HTTP status (401: the token).
    #[error("the server refused the connection with HTTP {0}")]
    Handshake(u16),
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0:?} is not an http:// or https:// URL")]
    Url(String),
    #[error("token: {0}")]
    Token(String),
    /// The server ended the session for a reason reconnecting does not fix (4003 banned, 4001
    /// without a token function).
    #[error("the server closed the connection ({code}): {reason}")]
    Ended { code: u16, reason: String },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

impl Error {
    fn from_handshake(e: tokio_tungstenite::tungstenite::Error) -> Error {
        match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => Error::Handshake(r.status().as_u16()),
            e => Error::WebSocket(e),
        }
    }

    /// The protocol's error code, for a refusal by the server.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, Error>> + Send>>;
type TokenFn = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// How to reach the server and who to be.
#[derive(Clone)]
pub struct Options {
    url: String,
    token: Option<String>,
    get_token: Option<TokenFn>,
    event_buffer: usize,
    max_backoff: Duration,
}

impl Options {
    /// The server's base URL (`http://localhost:8080`).
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            url: url.into().trim_end_matches('/').to_string(),
            token: None,
            get_token: None,
            event_buffer: 1024,
            max_backoff: Duration::from_secs(30),
        }
    }

    /// An access token or a bot API key.
    pub fn token(mut self, token: impl Into<String>) -> Options {
        self.token = Some(token.into());
        self
    }

    /// Called for a token before each connection and before the current JWT expires (then
    /// sent on the open socket): sign in again or spend a refresh token here.
    pub fn get_token<F, Fut>(mut self, f: F) -> Options
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Error>> + Send + 'static,
    {
        self.get_token = Some(Arc::new(move || Box::pin(f())));
        self
    }

    /// How many events wait for the consumer before the socket is slowed (default 1024).
    pub fn event_buffer(mut self, n: usize) -> Options {
        self.event_buffer = n.max(1);
        self
    }

    /// The ceiling of the reconnect backoff (default 30 s).
    pub fn max_backoff(mut self, d: Duration) -> Options {
        self.max_backoff = d;
        self
    }
}

/// The connection's state, as [`Event::State`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Online,
    Reconnecting,
    /// Banned (4003) or unauthorized without a token function: the client stopped.
    Ended,
}

/// What the client hands on: every server frame (messages once each, in `seq` order per room;
/// `message` frames paged from history look the same), and changes of state.
// Frames are moved, not stored in bulk: boxing each would cost an allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Frame(ServerFrame<'static>),
    State(State),
}

/// The ack of a sent message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub id: MessageId,
    pub seq: i64,
    pub room: RoomId,
    pub client_id: Option<String>,
    pub created_at: String,
}

/// The `subscribed` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub room: RoomId,
    pub last_seq: i64,
    pub rev: i64,
    pub recovered: Option<bool>,
}

/// A message to send; `Outgoing::new(body)` then the options that apply.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub body: String,
    /// The idempotency key (a random one when not set).
    pub client_id: Option<String>,
    pub reply_to: Option<i64>,
    pub thread: Option<i64>,
    pub attachments: Vec<String>,
}

impl Outgoing {
    pub fn new(body: impl Into<String>) -> Outgoing {
        Outgoing {
            body: body.into(),
            ..Default::default()
        }
    }
}

/// The events of a client, in order.
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is closed or ended.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures::Stream for Events {
    type Item = Event;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

enum Command {
    Subscribe {
        room: RoomId,
        since: Option<i64>,
        since_rev: Option<i64>,
        reply: oneshot::Sender<Result<Subscribed, Error>>,
    },
    Unsubscribe(RoomId),
    Send {
        frame: ClientFrame,
        client_id: String,
        reply: oneshot::Sender<Result<Ack, Error>>,
    },
    Resend(String),
    Frame(ClientFrame),
    Cursor(RoomId, oneshot::Sender<(Option<i64>, Option<i64>)>),
    Close,
}

/// A connection to a confab server; cheap to clone.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    rest: Rest,
    user: User,
}

impl Client {
    /// Connects and waits for `hello`; events (from then on) come through the returned
    /// [`Events`]. A first connection that fails is an error (later ones are retried).
    pub async fn connect(options: Options) -> Result<(Client, Events), Error> {
        if options.token.is_none() && options.get_token.is_none() {
            return Err(Error::Token(
                "a token or a token function is required".into(),
            ));
        }
        let rest = Rest {
            http: reqwest::Client::new(),
            base: options.url.clone(),
            token: Arc::new(Mutex::new(options.token.clone())),
            get_token: options.get_token.clone(),
        };
        let token = rest.token().await?;
        let mut socket = Socket::connect(&options.url, Some(&token)).await?;
        let hello = match socket.recv().await {
            Incoming::Frame(ServerFrame::Hello { user, .. }) => user,
            Incoming::Closed { code, reason } => {
                return Err(Error::Ended {
                    code: code.unwrap_or(1006),
                    reason,
                });
            }
            other => {
                return Err(Error::Token(format!(
                    "expected hello, the server sent {other:?}"
                )));
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::channel(options.event_buffer);
        let actor = Actor {
            delays: backoff(options.max_backoff),
            options,
            rest: rest.clone(),
            commands: rx,
            self_tx: tx.clone(),
            events: events_tx,
            rooms: HashMap::new(),
            pending: HashMap::new(),
            order: VecDeque::new(),
            waiters: HashMap::new(),
        };
        tokio::spawn(actor.run(socket));
        Ok((
            Client {
                commands: tx,
                rest,
                user: hello,
            },
            Events { rx: events_rx },
        ))
    }

    /// Who this client is signed in as.
    pub fn user(&self) -> &User {
        &self.user
    }

    fn command(&self, c: Command) -> Result<(), Error> {
        self.commands.send(c).map_err(|_| Error::Closed)
    }

    /// Subscribes to a room from now on (resumed automatically after reconnects).
    pub async fn subscribe(&self, room: RoomId) -> Result<Subscribed, Error> {
        self.subscribe_from(room, None, None).await
    }

    /// Subscribes from a stored cursor: the messages after `since` come first, and with
    /// `since_rev` the changes to older messages after it.
    pub async fn subscribe_from(
        &self,
        room: RoomId,
        since: Option<i64>,
        since_rev: Option<i64>,
    ) -> Result<Subscribed, Error> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Subscribe {
            room,
            since,
            since_rev,
            reply,
        })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Stops receiving a room.
    pub fn unsubscribe(&self, room: RoomId) -> Result<(), Error> {
        self.command(Command::Unsubscribe(room))
    }

    /// Sends a message; resolves with its ack. Resent with the same `client_id` across
    /// reconnects and after `rate_limited` answers until the server acks or refuses it.
    pub async fn send(&self, room: RoomId, body: impl Into<String>) -> Result<Ack, Error> {
        self.send_with(room, Outgoing::new(body)).await
    }

    /// [`Client::send`] with the options of [`Outgoing`].
    pub async fn send_with(&self, room: RoomId, m: Outgoing) -> Result<Ack, Error> {
        let client_id = m
            .client_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let frame = ClientFrame::Message {
            room,
            body: m.body,
            client_id: Some(client_id.clone()),
            reply_to: m.reply_to,
            attachments: m.attachments,
            thread: m.thread,
        };
        let (reply, rx) = oneshot::channel();
        self.command(Command::Send {
            frame,
            client_id,
            reply,
        })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Sends a frame that needs no answer (`typing`, `read`, `delivered`, `react`); dropped
    /// while disconnected.
    pub fn frame(&self, frame: ClientFrame) -> Result<(), Error> {
        self.command(Command::Frame(frame))
    }

    /// The room's cursors: the last `seq` handed on and the `rev` converged to.
    pub async fn cursor(&self, room: RoomId) -> Result<(Option<i64>, Option<i64>), Error> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Cursor(room, tx))?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// A REST call with the client's token (`None` body: none sent); the JSON answer
    /// (`Value::Null` for 204).
    pub async fn api<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, Error> {
        self.rest.call(method, path, body).await
    }

    /// Closes the connection; pending sends fail with [`Error::Closed`].
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

/// REST calls with the shared token.
#[derive(Clone)]
struct Rest {
    http: reqwest::Client,
    base: String,
    token: Arc<Mutex<Option<String>>>,
    get_token: Option<TokenFn>,
}

/// A JWT's `exp`, read without verifying (the server verifies); `None` for other tokens.
fn expiry(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

/// How long until the token should be renewed: at half its lifetime, at most a minute before it
/// expires. `None` when it will not be: no token function, or not a JWT (an API key).
fn renewal_due(token: Option<&str>, can_renew: bool) -> Option<Duration> {
    if !can_renew {
        return None;
    }
    let left = expiry(token?)?;
    Some(left.saturating_sub((left / 2).min(Duration::from_secs(60))))
}

impl Rest {
    fn current(&self) -> Option<String> {
        self.token.lock().expect("token lock").clone()
    }

    /// The token to use now: a new one from the token function when there is none or it is
    /// about to expire.
    async fn token(&self) -> Result<String, Error> {
        let current = self.current();
        let stale = current
            .as_deref()
            .and_then(expiry)
            .is_some_and(|left| left < Duration::from_secs(5));
        match (&current, &self.get_token) {
            (Some(t), _) if !stale => Ok(t.clone()),
            (_, Some(f)) => {
                let t = f().await?;
                *self.token.lock().expect("token lock") = Some(t.clone());
                Ok(t)
            }
            (Some(t), None) => Ok(t.clone()),
            (None, None) => Err(Error::Token("no token".into())),
        }
    }

    async fn renew(&self) -> Result<String, Error> {
        *self.token.lock().expect("token lock") = None;
        self.token().await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, Error> {
        let mut retried = false;
        let mut busy = 0;
        loop {
            let token = self.token().await?;
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            let res = req.send().await?;
            let status = res.status().as_u16();
            if status == 401 && !retried && self.get_token.is_some() {
                retried = true;
                self.renew().await?;
                continue;
            }
            if status == 503 && busy < 5 {
                // Busy: wait as told (Retry-After, seconds), with jitter.
                busy += 1;
                let secs = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(1.0);
                tokio::time::sleep(Duration::from_secs_f64(secs * rand::random_range(0.5..1.5)))
                    .await;
                continue;
            }
            let text = res.text().await?;
            if !(200..300).contains(&status) {
                let (code, message) = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| {
                        let e = v.get("error")?;
                        Some((
                            e.get("code")?.as_str()?.to_string(),
                            e.get("message")?.as_str()?.to_string(),
                        ))
                    })
                    .unwrap_or_else(|| ("error".into(), format!("HTTP {status}")));
                return Err(Error::Server {
                    code,
                    message,
                    status: Some(status),
                });
            }
            let text = if text.is_empty() { "null" } else { &text };
            return serde_json::from_str(text).map_err(|e| Error::Server {
                code: "unexpected_answer".into(),
                message: e.to_string(),
                status: Some(status),
            });
        }
    }
}

fn backoff(max: Duration) -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[derive(Default)]
struct RoomState {
    /// The last seq handed on.
    seq: Option<i64>,
    /// The rev converged to.
    rev: Option<i64>,
    /// Replayed changes up to this rev may still be coming.
    replay_until: Option<i64>,
    wanted: bool,
}

struct Pending {
    frame: ClientFrame,
    reply: oneshot::Sender<Result<Ack, Error>>,
}

enum Outcome {
    Closed { code: Option<u16>, reason: String },
    Stop,
}

struct Actor {
    options: Options,
    rest: Rest,
    commands: mpsc::UnboundedReceiver<Command>,
    self_tx: mpsc::UnboundedSender<Command>,
    events: mpsc::Sender<Event>,
    rooms: HashMap<RoomId, RoomState>,
    pending: HashMap<String, Pending>,
    /// client_ids in the order they were sent, for resending in order.
    order: VecDeque<String>,
    waiters: HashMap<RoomId, oneshot::Sender<Result<Subscribed, Error>>>,
    delays: backon::ExponentialBackoff,
}

fn drain_hint(reason: &str) -> Option<Duration> {
    let n = reason.split("retry_after_ms=").nth(1)?;
    let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().map(Duration::from_millis)
}

impl Actor {
    async fn emit(&self, e: Event) {
        let _ = self.events.send(e).await;
    }

    async fn run(mut self, first: Socket) {
        let mut socket = Some(first);
        let mut first = true;
        loop {
            let mut s = match socket.take() {
                Some(s) => s,
                None => match self.reconnect().await {
                    Some(s) => s,
                    None => break,
                },
            };
            let opened = Instant::now();
            let greeted = std::mem::replace(&mut first, false);
            match self.session(&mut s, greeted).await {
                Outcome::Stop => {
                    s.close(1000).await;
                    break;
                }
                Outcome::Closed { code, reason } => {
                    let code = code.unwrap_or(1006);
                    if code == close::BANNED
                        || (code == close::TOKEN_EXPIRED && self.rest.get_token.is_none())
                    {
                        self.end(Error::Ended { code, reason }).await;
                        break;
                    }
                    if code == close::TOKEN_EXPIRED {
                        *self.rest.token.lock().expect("token lock") = None;
                    }
                    if opened.elapsed() > Duration::from_secs(60) {
                        self.delays = backoff(self.options.max_backoff);
                    }
                    let wait = if code == close::GOING_AWAY {
                        drain_hint(&reason)
                            .unwrap_or_else(|| Duration::from_millis(rand::random_range(0..2000)))
                    } else {
                        self.delays.next().unwrap_or(self.options.max_backoff)
                    };
                    self.emit(Event::State(State::Reconnecting)).await;
                    if !self.wait(wait).await {
                        break;
                    }
                }
            }
        }
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(Error::Closed));
        }
    }

    /// Waits `d` while taking commands; false when told to close.
    async fn wait(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                c = self.commands.recv() => match c {
                    None | Some(Command::Close) => return false,
                    Some(c) => self.command(c, None).await,
                },
            }
        }
    }

    /// Connects again (after waits); `None` when closed meanwhile.
    async fn reconnect(&mut self) -> Option<Socket> {
        loop {
            let attempt = async {
                let token = self.rest.token().await?;
                Socket::connect(&self.options.url, Some(&token)).await
            };
            match attempt.await {
                Ok(s) => return Some(s),
                Err(Error::Handshake(401)) if self.rest.get_token.is_some() => {
                    *self.rest.token.lock().expect("token lock") = None;
                }
                Err(Error::Handshake(401 | 403)) => {
                    self.end(Error::Handshake(401)).await;
                    return None;
                }
                Err(e) => tracing::debug!(error = %e, "confab-client: reconnect failed"),
            }
            let wait = self.delays.next().unwrap_or(self.options.max_backoff);
            if !self.wait(wait).await {
                return None;
            }
        }
    }

    async fn end(&mut self, e: Error) {
        let text = e.to_string();
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(Error::Ended {
                code: 0,
                reason: text.clone(),
            }));
        }
        self.emit(Event::State(State::Ended)).await;
    }

    async fn send(socket: &mut Socket, frame: &ClientFrame) {
        // A failed write shows up as the socket closing; the frame is resent or dropped then.
        let _ = socket.send(frame).await;
    }

    /// One socket's life. `greeted`: its `hello` was already read (the first socket's, by
    /// `connect`); later sockets' come as frames.
    async fn session(&mut self, socket: &mut Socket, greeted: bool) -> Outcome {
        if greeted {
            self.online(socket).await;
        }
        loop {
            let refresh = renewal_due(
                self.rest.current().as_deref(),
                self.rest.get_token.is_some(),
            )
            .map(|wait| Instant::now() + wait);
            tokio::select! {
                c = self.commands.recv() => match c {
                    None | Some(Command::Close) => return Outcome::Stop,
                    Some(c) => self.command(c, Some(socket)).await,
                },
                incoming = socket.recv() => match incoming {
                    Incoming::Frame(f) => self.frame(f, socket).await,
                    Incoming::Unknown(_) => {}
                    Incoming::Closed { code, reason } => return Outcome::Closed { code, reason },
                },
                // Armed only for a JWT with a token function: a static token or an API key is
                // never dropped for a renewal that cannot happen.
                _ = tokio::time::sleep_until(refresh.unwrap_or_else(Instant::now)), if refresh.is_some() => {
                    match self.rest.renew().await {
                        Ok(token) => Self::send(socket, &ClientFrame::Auth { token }).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "confab-client: token renewal failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        }
    }

    /// After `hello`: resume every room, resend every unacknowledged message.
    async fn online(&mut self, socket: &mut Socket) {
        self.emit(Event::State(State::Online)).await;
        let rooms: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.wanted)
            .map(|(id, _)| *id)
            .collect();
        for room in rooms {
            let frame = self.resume_frame(room);
            Self::send(socket, &frame).await;
        }
        for id in self.order.clone() {
            if let Some(p) = self.pending.get(&id) {
                Self::send(socket, &p.frame).await;
            }
        }
    }

    fn resume_frame(&mut self, room: RoomId) -> ClientFrame {
        let r = self.rooms.entry(room).or_default();
        ClientFrame::Subscribe {
            room,
            since: r.seq,
            since_rev: r.seq.and(r.rev),
        }
    }

    async fn command(&mut self, c: Command, socket: Option<&mut Socket>) {
        match c {
            Command::Subscribe {
                room,
                since,
                since_rev,
                reply,
            } => {
                let r = self.rooms.entry(room).or_default();
                r.wanted = true;
                if since.is_some() {
                    r.seq = since;
                }
                if since_rev.is_some() {
                    r.rev = since_rev;
                }
                self.waiters.insert(room, reply);
                let frame = self.resume_frame(room);
                if let Some(s) = socket {
                    Self::send(s, &frame).await;
                }
            }
            Command::Unsubscribe(room) => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.wanted = false;
                }
                if let Some(s) = socket {
                    Self::send(s, &ClientFrame::Unsubscribe { room }).await;
                }
            }
            Command::Send {
                frame,
                client_id,
                reply,
            } => {
                if let Some(s) = socket {
                    Self::send(s, &frame).await;
                }
                self.order.push_back(client_id.clone());
                self.pending.insert(client_id, Pending { frame, reply });
            }
            Command::Resend(client_id) => {
                if let (Some(p), Some(s)) = (self.pending.get(&client_id), socket) {
                    Self::send(s, &p.frame).await;
                }
            }
            Command::Frame(frame) => {
                if let Some(s) = socket {
                    Self::send(s, &frame).await;
                }
            }
            Command::Cursor(room, reply) => {
                let r = self.rooms.get(&room);
                let _ = reply.send((r.and_then(|r| r.seq), r.and_then(|r| r.rev)));
            }
            Command::Close => {}
        }
    }

    fn saw_rev(&mut self, room: RoomId, rev: i64) {
        let r = self.rooms.entry(room).or_default();
        if let Some(until) = r.replay_until {
            if rev <= until {
                return;
            }
            r.replay_until = None;
        }
        if r.rev.is_none_or(|old| rev > old) {
            r.rev = Some(rev);
        }
    }

    async fn frame(&mut self, f: ServerFrame<'static>, socket: &mut Socket) {
        match &f {
            ServerFrame::Hello { .. } => {
                self.online(socket).await;
                return;
            }
            ServerFrame::Ack {
                client_id,
                id,
                seq,
                room,
                created_at,
            } => {
                let key = client_id.as_deref().unwrap_or_default().to_string();
                if let Some(p) = self.pending.remove(&key) {
                    self.order.retain(|c| c != &key);
                    let _ = p.reply.send(Ok(Ack {
                        id: *id,
                        seq: *seq,
                        room: *room,
                        client_id: client_id.as_deref().map(str::to_string),
                        created_at: created_at.clone(),
                    }));
                }
                return;
            }
            ServerFrame::Error {
                code,
                message,
                reference,
                retry_after_ms,
            } => {
                let reference = reference.as_deref().unwrap_or_default().to_string();
                if self.pending.contains_key(&reference) {
                    if matches!(&**code, "rate_limited" | "slow_mode" | "unavailable") {
                        let tx = self.self_tx.clone();
                        let wait = Duration::from_millis(retry_after_ms.unwrap_or(1000));
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let _ = tx.send(Command::Resend(reference));
                        });
                    } else if let Some(p) = self.pending.remove(&reference) {
                        self.order.retain(|c| c != &reference);
                        let _ = p.reply.send(Err(Error::Server {
                            code: code.to_string(),
                            message: message.clone(),
                            status: None,
                        }));
                    }
                    return;
                }
                if let Ok(room) = reference.parse::<RoomId>()
                    && let Some(w) = self.waiters.remove(&room)
                {
                    if let Some(r) = self.rooms.get_mut(&room) {
                        r.wanted = false;
                    }
                    let _ = w.send(Err(Error::Server {
                        code: code.to_string(),
                        message: message.clone(),
                        status: None,
                    }));
                    return;
                }
            }
            ServerFrame::Subscribed {
                room,
                last_seq,
                recovered,
                rev,
                ..
            } => {
                let r = self.rooms.entry(*room).or_default();
                if *recovered != Some(false) {
                    if r.seq.is_some() && r.rev.is_some_and(|old| *rev > old) {
                        r.replay_until = Some(*rev);
                    } else {
                        r.rev = Some(*rev);
                        r.replay_until = None;
                    }
                }
                if r.seq.is_none() || r.seq.is_some_and(|s| s > *last_seq) {
                    r.seq = Some(*last_seq);
                }
                if let Some(w) = self.waiters.remove(room) {
                    let _ = w.send(Ok(Subscribed {
                        room: *room,
                        last_seq: *last_seq,
                        rev: *rev,
                        recovered: *recovered,
                    }));
                }
                let room = *room;
                let fill = *recovered == Some(false);
                self.emit(Event::Frame(f)).await;
                if fill {
                    self.fill(room, true).await;
                }
                return;
            }
            ServerFrame::Message(m) => {
                let r = self.rooms.entry(m.room).or_default();
                let last = r.seq.unwrap_or(m.seq - 1);
                if m.seq <= last {
                    return;
                }
                if m.seq > last + 1 {
                    let room = m.room;
                    self.fill(room, false).await;
                    return;
                }
                r.seq = Some(m.seq);
                let (room, rev) = (m.room, m.rev);
                self.saw_rev(room, rev);
            }
            ServerFrame::MessageEdited(m) | ServerFrame::MessageUpdated(m) => {
                let (room, rev) = (m.room, m.rev);
                self.saw_rev(room, rev);
            }
            ServerFrame::MessageDeleted { room, rev, .. }
            | ServerFrame::Reaction { room, rev, .. } => {
                let (room, rev) = (*room, *rev);
                self.saw_rev(room, rev);
            }
            ServerFrame::Kicked { room } => {
                if let Some(r) = self.rooms.get_mut(room) {
                    r.wanted = false;
                }
            }
            _ => {}
        }
        self.emit(Event::Frame(f)).await;
    }

    /// Pages from history what could not be replayed: messages after the cursor and, when
    /// asked, the changes after the rev cursor.
    async fn fill(&mut self, room: RoomId, changes: bool) {
        #[derive(serde::Deserialize)]
        struct Page {
            messages: Vec<Message>,
            has_more: bool,
            #[serde(default)]
            rev: Option<i64>,
        }
        loop {
            let after = self.rooms.get(&room).and_then(|r| r.seq).unwrap_or(0);
            let page: Page = match self
                .rest
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/rooms/{room}/messages?after={after}&limit=200"),
                    None,
                )
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "confab-client: paging history failed");
                    return;
                }
            };
            for m in page.messages {
                let r = self.rooms.entry(room).or_default();
                if m.seq <= r.seq.unwrap_or(0) {
                    continue;
                }
                r.seq = Some(m.seq);
                self.emit(Event::Frame(ServerFrame::Message(std::borrow::Cow::Owned(
                    m,
                ))))
                .await;
            }
            if !page.has_more {
                break;
            }
        }
        let Some(mut since) = self
            .rooms
            .get(&room)
            .and_then(|r| r.rev)
            .filter(|_| changes)
        else {
            return;
        };
        loop {
            let page: Page = match self
                .rest
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/rooms/{room}/changes?since_rev={since}&limit=500"),
                    None,
                )
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "confab-client: paging changes failed");
                    return;
                }
            };
            for m in page.messages {
                since = since.max(m.rev);
                self.emit(Event::Frame(ServerFrame::MessageUpdated(
                    std::borrow::Cow::Owned(m),
                )))
                .await;
            }
            if let Some(rev) = page.rev {
                since = since.max(rev);
            }
            if let Some(r) = self.rooms.get_mut(&room) {
                r.rev = Some(since);
                r.replay_until = None;
            }
            if !page.has_more {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp_in_secs: u64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"u","exp":{}}}"#, now + exp_in_secs));
        format!("eyJhbGciOiJIUzI1NiJ9.{claims}.c2lnbmF0dXJl")
    }

    #[test]
    fn a_token_is_renewed_only_when_it_can_and_must_be() {
        // A JWT with a token function: at half its lifetime, at most a minute before expiry.
        let half = renewal_due(Some(&jwt(60)), true).unwrap();
        assert!(
            half > Duration::from_secs(25) && half <= Duration::from_secs(30),
            "{half:?}"
        );
        let long = renewal_due(Some(&jwt(900)), true).unwrap();
        assert!(
            long > Duration::from_secs(835) && long <= Duration::from_secs(840),
            "{long:?}"
        );
        // Without a token function, or for an API key, never: the token must stay in place.
        assert_eq!(renewal_due(Some(&jwt(60)), false), None);
        assert_eq!(renewal_due(Some("cfk_not-a-jwt"), true), None);
        assert_eq!(renewal_due(None, true), None);
    }

    #[test]
    fn a_drain_hint_is_read_from_the_close_reason() {
        assert_eq!(
            drain_hint("server draining, reconnect with since; retry_after_ms=1234"),
            Some(Duration::from_millis(1234))
        );
        assert_eq!(drain_hint("going away"), None);
    }
}
