//! A connection's outbound queue as the rest of the server sees it: bounded, never awaited.
//! A queue that is full closes its socket with 1008 (slow consumer) instead of growing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, watch};

use crate::ids::{RoomId, UserId};

use crate::telemetry::Metrics;

pub type ConnId = u64;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Why the server closes a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

impl Close {
    pub const DRAINING: Close = Close {
        code: 1001,
        reason: "server draining, reconnect with since",
    };
    pub const SLOW_CONSUMER: Close = Close {
        code: 1008,
        reason: "slow consumer, reconnect with since",
    };
    pub const TOO_BIG: Close = Close {
        code: 1009,
        reason: "frame too large",
    };
    pub const UNAUTHENTICATED: Close = Close {
        code: 4001,
        reason: "unauthenticated or token expired",
    };
    pub const BANNED: Close = Close {
        code: 4003,
        reason: "banned",
    };
    pub const RATE_ABUSE: Close = Close {
        code: 4008,
        reason: "too many messages",
    };
}

/// A room event as every local subscriber of the room receives it: encoded once, shared.
#[derive(Debug)]
pub struct RoomEvent {
    pub room: RoomId,
    /// > 0 for messages, so the connection skips what it already replayed.
    pub seq: i64,
    pub text: Utf8Bytes,
    /// When the server read the message (ms): the delivery latency is measured at write.
    pub created_ms: i64,
}

/// One item of a connection's queue. Two words: the queue's first block is allocated with
/// every connection, 32 slots of this, so its size is paid by every idle socket.
#[derive(Debug)]
pub enum Outbound {
    /// A room event, shared by all the room's subscribers on this pod.
    Room(Arc<RoomEvent>),
    /// A frame for this connection only (an ack, an error).
    Direct(Box<Utf8Bytes>),
    /// A moderation or membership change that concerns this connection, shared by all the
    /// sockets it concerns.
    Control(Arc<super::ControlEvent>),
}

const _: () = assert!(std::mem::size_of::<Outbound>() <= 16);

impl Outbound {
    pub fn direct(text: Utf8Bytes) -> Outbound {
        Outbound::Direct(Box::new(text))
    }
}

#[derive(Clone)]
pub struct Outbox {
    pub conn: ConnId,
    pub user: UserId,
    tx: mpsc::Sender<Outbound>,
    close: Arc<watch::Sender<Option<Close>>>,
    metrics: Metrics,
}

impl Outbox {
    /// A new outbox, the receiving end of its queue and of its close signal.
    pub fn new(
        user: UserId,
        capacity: usize,
        metrics: Metrics,
    ) -> (
        Outbox,
        mpsc::Receiver<Outbound>,
        watch::Receiver<Option<Close>>,
    ) {
        let (tx, rx) = mpsc::channel(capacity);
        let (close, close_rx) = watch::channel(None);
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        (
            Outbox {
                conn,
                user,
                tx,
                close: Arc::new(close),
                metrics,
            },
            rx,
            close_rx,
        )
    }

    /// Queues an item without waiting. False when the connection is gone or too slow.
    pub fn push(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.close.borrow().is_none() {
                    self.metrics.slow_consumers.inc();
                }
                self.close(Close::SLOW_CONSUMER);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Frames waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Asks the connection to close; the first reason wins.
    pub fn close(&self, close: Close) {
        self.close.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(close);
                true
            } else {
                false
            }
        });
    }
}
