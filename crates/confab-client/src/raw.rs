//! One WebSocket to `/ws`, typed: frames in and out, and how it closed. No reconnects; the
//! [`Client`](crate::Client) builds those on top. Tests and tools that need the protocol as it
//! is on the wire (bad frames included) use this layer.

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use confab_protocol::{ClientFrame, ServerFrame};

use crate::Error;

/// What the socket gave next.
// Frames are moved, not stored in bulk: boxing each would cost an allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A text frame, parsed.
    Frame(ServerFrame<'static>),
    /// A text frame that is not a frame this client knows (kept as text).
    Unknown(String),
    /// The socket closed: the server's close code and reason, or `None` when the connection
    /// ended without a close frame.
    Closed { code: Option<u16>, reason: String },
}

/// The `ws://…/ws` (or `wss://`) address of a server's base URL (`http://host:port`).
pub fn ws_url(base: &str) -> Result<String, Error> {
    let base = base.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_string()
    } else {
        return Err(Error::Url(base.to_string()));
    };
    Ok(format!("{rest}/ws"))
}

/// One open WebSocket.
pub struct Socket {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    /// Opens `/ws` of the server at `base` (`http://host:port`), with the token (an access
    /// token or a bot API key) in the `Authorization` header when given; without one, send an
    /// `auth` frame first.
    pub async fn connect(base: &str, token: Option<&str>) -> Result<Socket, Error> {
        let mut request = ws_url(base)?.into_client_request()?;
        if let Some(t) = token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| Error::Token("the token is not a valid header value".into()))?;
            request.headers_mut().insert("authorization", value);
        }
        let (inner, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(Error::from_handshake)?;
        Ok(Socket { inner })
    }

    /// Opens a socket at a full `ws://` URL as given (`?token=` included, if any).
    pub async fn connect_url(url: &str) -> Result<Socket, Error> {
        let (inner, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(Error::from_handshake)?;
        Ok(Socket { inner })
    }

    /// Opens a socket over a TCP connection the caller made (bound to a chosen source address,
    /// say), at a full `ws://` URL.
    pub async fn from_stream(url: &str, stream: TcpStream) -> Result<Socket, Error> {
        let (inner, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .map_err(Error::from_handshake)?;
        Ok(Socket { inner })
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), Error> {
        self.send_text(frame.to_json()).await
    }

    /// Sends any text as a frame (for tests of bad input).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), Error> {
        self.inner.send(WsMessage::Text(text.into().into())).await?;
        Ok(())
    }

    /// Sends a raw WebSocket message (binary frames, pings).
    pub async fn send_raw(&mut self, message: WsMessage) -> Result<(), Error> {
        self.inner.send(message).await?;
        Ok(())
    }

    /// The next text frame as text, or how the socket closed.
    pub async fn recv_text(&mut self) -> Result<String, (Option<u16>, String)> {
        loop {
            match self.inner.next().await {
                Some(Ok(WsMessage::Text(t))) => return Ok(t.to_string()),
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                        None => (None, String::new()),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err((None, String::new())),
            }
        }
    }

    /// The next frame, or how the socket closed.
    pub async fn recv(&mut self) -> Incoming {
        match self.recv_text().await {
            Ok(text) => match ServerFrame::parse(&text) {
                Ok(frame) => Incoming::Frame(frame),
                Err(_) => Incoming::Unknown(text),
            },
            Err((code, reason)) => Incoming::Closed { code, reason },
        }
    }

    /// Closes with `code` and waits briefly for the server's answer.
    pub async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let _ = self.inner.close(Some(frame)).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while let Some(Ok(_)) = self.inner.next().await {}
        })
        .await;
    }

    /// The underlying stream, for what this type does not cover.
    pub fn inner_mut(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.inner
    }
}
