//! A WebSocket test client over a real socket: the Rust client's typed socket
//! (`confab_client::raw::Socket`) with the JSON-level helpers tests need (any frame, bad ones
//! included, and expectations about what comes back).

use std::net::SocketAddr;
use std::time::Duration;

use confab_client::raw::Socket;
use serde_json::{Value, json};

pub const WAIT: Duration = Duration::from_secs(5);

/// Event types a test does not ask for are skipped by `expect`, so that presence, typing,
/// receipts and membership news do not make tests flaky.
const INCIDENTAL: &[&str] = &["presence", "typing", "receipt", "room_joined"];

pub struct Ws {
    pub socket: Socket,
}

#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16),
    /// The socket ended without a close frame.
    Dropped,
}

fn closed(code: Option<u16>) -> Closed {
    code.map_or(Closed::Dropped, Closed::Code)
}

impl Ws {
    /// Connects to `/ws`, with the token in the Authorization header when given.
    pub async fn connect(
        addr: SocketAddr,
        token: Option<&str>,
    ) -> Result<Ws, confab_client::Error> {
        Ok(Ws {
            socket: Socket::connect(&format!("http://{addr}"), token).await?,
        })
    }

    /// Connects with a raw URL (for `?token=`).
    pub async fn connect_url(url: &str) -> Result<Ws, confab_client::Error> {
        Ok(Ws {
            socket: Socket::connect_url(url).await?,
        })
    }

    /// The WebSocket stream itself, for raw frames.
    pub fn inner(
        &mut self,
    ) -> &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    > {
        self.socket.inner_mut()
    }

    pub async fn send(&mut self, v: Value) {
        self.socket
            .send_text(v.to_string())
            .await
            .expect("send frame");
    }

    /// Sends frames in one write, as a client resuming its rooms does: the server reads them
    /// together.
    pub async fn send_at_once(&mut self, frames: impl IntoIterator<Item = Value>) {
        use futures::SinkExt;
        let inner = self.socket.inner_mut();
        for f in frames {
            inner
                .feed(tokio_tungstenite::tungstenite::Message::Text(
                    f.to_string().into(),
                ))
                .await
                .expect("send frame");
        }
        inner.flush().await.expect("send frames");
    }

    pub async fn send_text(&mut self, t: &str) {
        self.socket.send_text(t).await.expect("send frame");
    }

    /// The next text frame as JSON, or None on close/timeout.
    pub async fn next(&mut self, within: Duration) -> Option<Value> {
        match tokio::time::timeout(within, self.socket.recv_text()).await {
            Ok(Ok(t)) => Some(serde_json::from_str(&t).expect("server frames are JSON")),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Reads until a frame of `kind` arrives, skipping incidental events; panics otherwise.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = self.next(left).await else {
                panic!("expected a {kind} frame; the socket closed or stayed silent");
            };
            let t = v["type"].as_str().unwrap_or_default();
            if t == kind {
                return v;
            }
            assert!(INCIDENTAL.contains(&t), "expected a {kind} frame, got {v}");
        }
    }

    /// Reads until `kind` arrives, whatever comes first; returns the skipped frames too.
    pub async fn expect_skipping(&mut self, kind: &str) -> Value {
        loop {
            let v = self
                .next(WAIT)
                .await
                .unwrap_or_else(|| panic!("no {kind} frame"));
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads until a frame of one of `kinds` arrives, whatever comes first.
    pub async fn expect_skipping_any(&mut self, kinds: &[&str]) -> Value {
        loop {
            let v = self
                .next(WAIT)
                .await
                .unwrap_or_else(|| panic!("no {kinds:?} frame"));
            if kinds.iter().any(|k| v["type"] == *k) {
                return v;
            }
        }
    }

    /// Asserts that no frame of `kind` arrives within `within`.
    pub async fn expect_none(&mut self, kind: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            if let Some(v) = self.next(left).await {
                assert_ne!(v["type"], kind, "unexpected {kind} frame: {v}");
            } else {
                return;
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn expect_close(&mut self, within: Duration) -> Closed {
        self.expect_close_reason(within).await.0
    }

    /// Every text frame until the server closes the socket, and the close.
    pub async fn frames_until_close(&mut self, within: Duration) -> (Vec<Value>, Closed) {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.socket.recv_text()).await {
                Ok(Ok(t)) => frames.push(serde_json::from_str(&t).expect("server frames are JSON")),
                Ok(Err((code, _))) => return (frames, closed(code)),
                Err(_) => panic!("the server did not close the socket within {within:?}"),
            }
        }
    }

    /// The close, with the reason text of its close frame (empty when there was none).
    pub async fn expect_close_reason(&mut self, within: Duration) -> (Closed, String) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.recv_text()).await {
                Ok(Ok(_)) => continue,
                Ok(Err((code, reason))) => return (closed(code), reason),
                Err(_) => panic!("the server did not close the socket within {within:?}"),
            }
        }
    }

    /// The next `presence` event about `user` (a subscriber also hears about itself).
    pub async fn presence_of(&mut self, user: &str) -> Value {
        loop {
            let p = self.expect_skipping("presence").await;
            if p["user"] == user {
                return p;
            }
        }
    }

    pub async fn subscribe(&mut self, room: &str, since: Option<i64>) -> Value {
        let mut f = json!({"type": "subscribe", "room": room});
        if let Some(s) = since {
            f["since"] = json!(s);
        }
        self.send(f).await;
        self.expect("subscribed").await
    }

    /// Sends a message frame; returns nothing (read the ack with `expect("ack")`).
    pub async fn say(&mut self, room: &str, body: &str, client_id: &str) {
        self.send(json!({"type": "message", "room": room, "body": body, "client_id": client_id}))
            .await;
    }
}
