//! The server's end of a WebSocket, on the TCP connection itself.
//!
//! tungstenite parses and writes the frames; what it needs for that (its frame parser and its
//! read and write buffers: hundreds of bytes, and as much as the largest frame once one came or
//! went) is held only while a frame is in flight. A socket that waits with nothing half read and nothing unwritten holds the TCP
//! connection and a few bytes of bookkeeping; its parser is made again when the next bytes
//! arrive or the next frame is written. Most sockets of a chat server are idle most of the
//! time, and every one of them paid for that state before (docs/BENCHMARKS.md, "Idle memory").
//!
//! Whether anything is half read is known from the frame headers of the bytes read so far
//! ([`Frames`]): tungstenite buffers whatever it read past the last whole frame, and a message
//! in fragments keeps state between its frames, so the parser is dropped only between whole
//! messages, with everything it read consumed and everything it was given written.

use std::io::{self, Cursor, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Sink, Stream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tokio_tungstenite::tungstenite::{Error, Message};

use super::{MAX_FRAME_BYTES, READ_BUFFER};

/// Bytes of written frames kept before they are written without waiting for a flush.
const WRITE_BUFFER: usize = 4096;

/// tungstenite's settings, the same for every socket (so no socket holds a copy).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        // Client frames are small; a larger one grows the buffer for its own length.
        .read_buffer_size(READ_BUFFER)
        // Frames written are kept until the flush that ends a batch of them.
        .write_buffer_size(WRITE_BUFFER)
}

/// A server-side WebSocket over an accepted TCP connection.
pub struct WsSocket {
    tcp: TcpStream,
    /// tungstenite's state, boxed and made only while a frame is in flight.
    ctx: Option<Box<WebSocketContext>>,
    frames: Frames,
}

impl WsSocket {
    /// A socket on `tcp`, the upgrade done; `read` is what the HTTP layer read past the
    /// request (a client may send its first frame without waiting for the answer).
    pub fn new(tcp: TcpStream, read: Bytes) -> WsSocket {
        let mut frames = Frames::default();
        let ctx = if read.is_empty() {
            None
        } else {
            frames.observe(&read);
            Some(Box::new(WebSocketContext::from_partially_read(
                read.to_vec(),
                Role::Server,
                Some(config()),
            )))
        };
        WsSocket { tcp, ctx, frames }
    }

    /// Whether tungstenite's state is held now (for the tests).
    #[cfg(test)]
    fn holds_parser(&self) -> bool {
        self.ctx.is_some()
    }

    fn parts(&mut self) -> (&mut WebSocketContext, Io<'_>) {
        let ctx = self
            .ctx
            .get_or_insert_with(|| Box::new(WebSocketContext::new(Role::Server, Some(config()))));
        (
            ctx,
            Io {
                tcp: &self.tcp,
                frames: &mut self.frames,
            },
        )
    }

    /// Drops tungstenite's state if nothing is in flight: every byte read belongs to a whole
    /// frame of a whole message that was read, and everything written has left.
    fn park(&mut self) {
        if !self.frames.ready || !self.frames.between_messages() {
            return;
        }
        let Some(ctx) = self.ctx.as_mut() else { return };
        if !ctx.can_read() || !ctx.can_write() {
            return;
        }
        let mut io = Io {
            tcp: &self.tcp,
            frames: &mut self.frames,
        };
        // An answer to a ping may still be queued; it must leave first. If it cannot leave
        // yet, the parser stays, and its next read tries again (as tungstenite does).
        if ctx.flush(&mut io).is_ok() {
            self.ctx = None;
        }
    }

    /// Flushes; on `WouldBlock` waits for the socket to take more.
    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            let (ctx, mut io) = self.parts();
            match ctx.flush(&mut io) {
                Ok(()) => {
                    self.frames.ready = true;
                    return Poll::Ready(Ok(()));
                }
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.tcp.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => {
                    self.frames.ready = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl Stream for WsSocket {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.frames.ended {
            return Poll::Ready(None);
        }
        loop {
            let (ctx, mut io) = this.parts();
            match ctx.read(&mut io) {
                Ok(message) => return Poll::Ready(Some(Ok(message))),
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    match this.tcp.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => {
                            this.frames.ended = true;
                            return Poll::Ready(Some(Err(Error::Io(e))));
                        }
                        Poll::Pending => {
                            this.park();
                            return Poll::Pending;
                        }
                    }
                }
                Err(Error::ConnectionClosed | Error::AlreadyClosed) => {
                    this.frames.ended = true;
                    return Poll::Ready(None);
                }
                Err(e) => {
                    this.frames.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl Sink<Message> for WsSocket {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.frames.ready {
            return Poll::Ready(Ok(()));
        }
        this.poll_flush_inner(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        let this = self.get_mut();
        let (ctx, mut io) = this.parts();
        match ctx.write(&mut io, item) {
            Ok(()) => Ok(()),
            // Taken and buffered: the next `poll_ready` or flush writes it.
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                this.frames.ready = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self.get_mut().poll_flush_inner(cx) {
            // The close handshake has just completed: the flush is done.
            Poll::Ready(Err(Error::ConnectionClosed)) => Poll::Ready(Ok(())),
            other => other,
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        let (ctx, mut io) = this.parts();
        if ctx.can_write() {
            match ctx.close(&mut io, None) {
                Ok(()) | Err(Error::ConnectionClosed) => {}
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        match this.poll_flush_inner(cx) {
            Poll::Ready(Err(Error::ConnectionClosed)) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// What tungstenite reads from and writes to: the TCP connection without waiting (tokio's
/// readiness says when to try again), each read noted in [`Frames`].
struct Io<'a> {
    tcp: &'a TcpStream,
    frames: &'a mut Frames,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.try_read(buf)?;
        self.frames.observe(&buf[..n]);
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the bytes read so far end: inside a frame's header or payload, or between frames,
/// and whether a message sent in fragments is still open. Read from the frame headers with
/// tungstenite's own header parser; the payloads are only counted.
///
/// With it, the socket's own two flags: 24 bytes together, held by every idle socket.
struct Frames {
    /// A header read in part (at most 14 bytes).
    header: [u8; 14],
    header_len: u8,
    /// Payload bytes of the current frame not read yet (tungstenite refuses a frame over
    /// 64 KiB; a length past `u32` marks the stream broken here).
    payload_left: u32,
    /// A text or binary message whose final frame has not been read.
    fragmented: bool,
    /// A header tungstenite will refuse: the connection ends, its state is kept to the end.
    broken: bool,
    /// False after a write was taken but could not be written yet.
    ready: bool,
    /// The connection has ended (closed, or an error was returned): reads end.
    ended: bool,
}

const _: () = assert!(std::mem::size_of::<Frames>() <= 24);

impl Default for Frames {
    fn default() -> Frames {
        Frames {
            header: [0; 14],
            header_len: 0,
            payload_left: 0,
            fragmented: false,
            broken: false,
            ready: true,
            ended: false,
        }
    }
}

impl Frames {
    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            if self.payload_left > 0 {
                let n = (self.payload_left as usize).min(bytes.len());
                self.payload_left -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let had = usize::from(self.header_len);
            let take = (self.header.len() - had).min(bytes.len());
            self.header[had..had + take].copy_from_slice(&bytes[..take]);
            let mut cursor = Cursor::new(&self.header[..had + take]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, payload))) => {
                    let used = cursor.position() as usize - had;
                    bytes = &bytes[used..];
                    self.header_len = 0;
                    let Ok(payload) = u32::try_from(payload) else {
                        self.broken = true;
                        return;
                    };
                    self.payload_left = payload;
                    match header.opcode {
                        OpCode::Data(Data::Continue) => {
                            if header.is_final {
                                self.fragmented = false;
                            }
                        }
                        OpCode::Data(_) => self.fragmented = !header.is_final,
                        OpCode::Control(_) => {}
                    }
                }
                Ok(None) => {
                    self.header_len = (had + take) as u8;
                    bytes = &bytes[take..];
                }
                Err(_) => self.broken = true,
            }
        }
    }

    /// Every byte read belongs to a whole frame, and no message is open.
    fn between_messages(&self) -> bool {
        !self.broken && self.header_len == 0 && self.payload_left == 0 && !self.fragmented
    }
}

#[cfg(test)]
mod tests {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A client frame: masked, as a client must send it.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        assert!(payload.len() < 126);
        out.push(0x80 | payload.len() as u8);
        let mask = [1u8, 2, 3, 4];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn pair() -> (WsSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (WsSocket::new(server, Bytes::new()), client)
    }

    /// Polls the socket once: the next message if one is whole, else `None`.
    async fn poll_once(socket: &mut WsSocket) -> Option<Message> {
        futures::future::poll_fn(|cx| match Pin::new(&mut *socket).poll_next(cx) {
            Poll::Ready(m) => Poll::Ready(m.map(|r| r.unwrap())),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }

    /// Waits until the server has the bytes sent.
    async fn settle() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn an_idle_socket_lets_go_of_the_parser_and_a_half_read_frame_keeps_it() {
        let (mut server, mut client) = pair().await;
        assert!(poll_once(&mut server).await.is_none());
        assert!(!server.holds_parser(), "nothing read, nothing held");

        // A frame split in two: the first half is kept until the rest comes.
        let frame = client_frame(1, true, b"{\"type\":\"ping\"}");
        client.write_all(&frame[..9]).await.unwrap();
        settle().await;
        assert!(poll_once(&mut server).await.is_none());
        assert!(server.holds_parser(), "half a frame read");
        client.write_all(&frame[9..]).await.unwrap();
        settle().await;
        let m = poll_once(&mut server).await.unwrap();
        assert_eq!(m.to_text().unwrap(), "{\"type\":\"ping\"}");
        assert!(poll_once(&mut server).await.is_none());
        assert!(!server.holds_parser(), "the frame was whole and read");

        // A message in two fragments: the parser is kept between them.
        client
            .write_all(&client_frame(1, false, b"hel"))
            .await
            .unwrap();
        settle().await;
        assert!(poll_once(&mut server).await.is_none());
        assert!(server.holds_parser(), "a fragmented message is open");
        client
            .write_all(&client_frame(0, true, b"lo"))
            .await
            .unwrap();
        settle().await;
        assert_eq!(
            poll_once(&mut server).await.unwrap().to_text().unwrap(),
            "hello"
        );
        assert!(poll_once(&mut server).await.is_none());
        assert!(!server.holds_parser());

        // Two frames in one read: both are read, then nothing is held.
        let mut two = client_frame(1, true, b"a");
        two.extend(client_frame(1, true, b"b"));
        client.write_all(&two).await.unwrap();
        settle().await;
        assert_eq!(
            poll_once(&mut server).await.unwrap().to_text().unwrap(),
            "a"
        );
        assert_eq!(
            poll_once(&mut server).await.unwrap().to_text().unwrap(),
            "b"
        );
        assert!(poll_once(&mut server).await.is_none());
        assert!(!server.holds_parser());
    }

    #[tokio::test]
    async fn a_ping_is_answered_and_writes_leave_before_the_parser_goes() {
        let (mut server, mut client) = pair().await;
        client
            .write_all(&client_frame(9, true, b"hi"))
            .await
            .unwrap();
        settle().await;
        assert!(matches!(
            poll_once(&mut server).await,
            Some(Message::Ping(_))
        ));
        assert!(poll_once(&mut server).await.is_none());
        assert!(!server.holds_parser());
        server.send(Message::text("welcome")).await.unwrap();
        assert!(poll_once(&mut server).await.is_none());
        assert!(!server.holds_parser());
        // The client reads the pong with the ping's payload, then the text, unmasked.
        let mut got = vec![0u8; 4 + 9];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(
            got,
            [&[0x8a, 2][..], b"hi", &[0x81, 7], b"welcome"].concat()
        );
        // The client goes: the stream ends.
        drop(client);
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), server.next())
            .await
            .unwrap();
        assert!(!matches!(end, Some(Ok(_))));
    }
}
