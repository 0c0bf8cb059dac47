//! A connection's outbound queue as the rest of the server sees it: bounded, never awaited.
//! A queue that is full closes its socket with 1008 (slow consumer) instead of growing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Utf8Bytes;

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

/// One item of a connection's queue. Two words, so a queue's buffer stays small.
#[derive(Debug)]
pub enum Outbound {
    /// A room event, shared by all the room's subscribers on this pod.
    Room(Arc<RoomEvent>),
    /// The answer to a message this connection submitted (an ack, an error).
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

/// A connection's sending end. The hub keeps one copy per room the connection is subscribed
/// to, so what does not differ between copies lives once, in the queue.
#[derive(Clone)]
pub struct Outbox {
    pub conn: ConnId,
    queue: Arc<Queue>,
}

const _: () = assert!(std::mem::size_of::<Outbox>() <= 16);

/// The queue and the close signal of one connection, in one allocation of about a hundred
/// bytes: nothing is allocated for items until the first one arrives, so an idle socket pays
/// for no buffer (a channel's first block of slots, and a second channel for the close, were
/// over a kilobyte per socket).
struct Queue {
    user: UserId,
    metrics: Metrics,
    state: Mutex<QueueState>,
    /// The connection's task, woken when an item or a close arrives.
    waker: AtomicWaker,
    capacity: usize,
}

struct QueueState {
    items: VecDeque<Outbound>,
    close: Option<Close>,
    /// The receiving end is gone: pushes are refused.
    ended: bool,
}

impl QueueState {
    /// Neither gone nor closing: items and a first close reason are still taken.
    fn open(&self) -> bool {
        !self.ended && self.close.is_none()
    }
}

/// A drained queue gives back a buffer larger than this (in items); smaller ones are kept,
/// so a steady trickle of deliveries allocates nothing.
const KEEP_CAPACITY: usize = 16;

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding this lock leaves a consistent queue (every change is one call
        // on the VecDeque or one assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the connection's task takes from its queue next.
#[derive(Debug)]
pub enum Next {
    Item(Outbound),
    /// The server asked the connection to close; it wins over anything still queued (a
    /// client that reconnects with `since` gets what it missed from history).
    Close(Close),
}

/// The receiving end of a connection's queue, held by its task.
pub struct Inbox {
    queue: Arc<Queue>,
}

impl Inbox {
    /// Waits for the next item or close.
    pub fn recv(&mut self) -> impl Future<Output = Next> + '_ {
        std::future::poll_fn(|cx| {
            if let Some(next) = self.take() {
                return Poll::Ready(next);
            }
            // Registered before looking again, so a push in between is not missed.
            self.queue.waker.register(cx.waker());
            match self.take() {
                Some(next) => Poll::Ready(next),
                None => Poll::Pending,
            }
        })
    }

    /// The next queued item, if there is one and no close is pending.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let mut q = self.queue.lock();
        if q.close.is_some() {
            return None;
        }
        pop(&mut q)
    }

    /// Takes the queued answers to the connection's messages, even when a close is pending
    /// (other items stay): a connection the server closes writes them before its close frame.
    pub fn take_direct(&mut self) -> Vec<Utf8Bytes> {
        let mut q = self.queue.lock();
        let mut direct = Vec::new();
        q.items.retain_mut(|item| match item {
            Outbound::Direct(text) => {
                direct.push(std::mem::take(&mut **text));
                false
            }
            _ => true,
        });
        direct
    }

    /// Whether the server asked the connection to close (nothing more will be queued).
    pub fn closing(&self) -> bool {
        self.queue.lock().close.is_some()
    }

    /// Waits until an answer to one of the connection's messages is queued.
    pub fn direct_queued(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            // Registered before looking, so a push in between is not missed.
            self.queue.waker.register(cx.waker());
            let q = self.queue.lock();
            if q.items.iter().any(|i| matches!(i, Outbound::Direct(_))) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    fn take(&mut self) -> Option<Next> {
        let mut q = self.queue.lock();
        if let Some(close) = q.close.clone() {
            return Some(Next::Close(close));
        }
        pop(&mut q).map(Next::Item)
    }
}

fn pop(q: &mut QueueState) -> Option<Outbound> {
    let item = q.items.pop_front();
    if q.items.is_empty() && q.items.capacity() > KEEP_CAPACITY {
        q.items = VecDeque::new();
    }
    item
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // The items are freed after the lock is released, not while pushers wait on it.
        let _items = {
            let mut q = self.queue.lock();
            q.ended = true;
            std::mem::take(&mut q.items)
        };
    }
}

impl Outbox {
    /// A new outbox and the receiving end of its queue.
    pub fn new(user: UserId, capacity: usize, metrics: Metrics) -> (Outbox, Inbox) {
        let queue = Arc::new(Queue {
            user,
            metrics,
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                close: None,
                ended: false,
            }),
            waker: AtomicWaker::new(),
            capacity,
        });
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        (
            Outbox {
                conn,
                queue: queue.clone(),
            },
            Inbox { queue },
        )
    }

    /// The user the connection belongs to.
    pub fn user(&self) -> UserId {
        self.queue.user
    }

    /// Queues an item without waiting. False when the connection is gone, closing, or too
    /// slow (a full queue asks the connection to close with 1008).
    pub fn push(&self, item: Outbound) -> bool {
        {
            let mut q = self.queue.lock();
            if !q.open() {
                return false;
            }
            if q.items.len() >= self.queue.capacity {
                q.close = Some(Close::SLOW_CONSUMER);
                drop(q);
                self.queue.metrics.slow_consumers.inc();
                self.queue.waker.wake();
                return false;
            }
            q.items.push_back(item);
        }
        self.queue.waker.wake();
        true
    }

    /// Frames waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.lock().items.len()
    }

    /// Asks the connection to close; the first reason wins.
    pub fn close(&self, close: Close) {
        {
            let mut q = self.queue.lock();
            if !q.open() {
                return;
            }
            q.close = Some(close);
        }
        self.queue.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(s: &str) -> Outbound {
        Outbound::direct(Utf8Bytes::from(s.to_string()))
    }

    fn text(item: Outbound) -> String {
        match item {
            Outbound::Direct(t) => t.as_str().to_string(),
            other => panic!("expected a direct frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn items_arrive_in_order_and_a_full_queue_closes_1008_once() {
        let metrics = Metrics::new();
        let (outbox, mut inbox) = Outbox::new(UserId::new(), 16, metrics.clone());
        for i in 0..16 {
            assert!(outbox.push(direct(&i.to_string())));
        }
        assert_eq!(outbox.queued(), 16);
        assert!(!outbox.push(direct("one too many")));
        assert!(!outbox.push(direct("and another")));
        assert_eq!(
            metrics.slow_consumers.get(),
            1,
            "one slow consumer, counted once"
        );
        // The close wins over what is still queued: the client catches up from history.
        match inbox.recv().await {
            Next::Close(c) => assert_eq!(c, Close::SLOW_CONSUMER),
            other => panic!("expected the close, got {other:?}"),
        }
        assert!(inbox.try_recv().is_none());

        let (outbox, mut inbox) = Outbox::new(UserId::new(), 16, metrics.clone());
        outbox.push(direct("a"));
        outbox.push(direct("b"));
        let Next::Item(first) = inbox.recv().await else {
            panic!("expected an item")
        };
        assert_eq!(text(first), "a");
        assert_eq!(text(inbox.try_recv().expect("second item")), "b");
        assert!(inbox.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken_and_the_first_close_reason_wins() {
        let (outbox, mut inbox) = Outbox::new(UserId::new(), 16, Metrics::new());
        let waiter = tokio::spawn(async move { inbox.recv().await });
        tokio::task::yield_now().await;
        outbox.close(Close::BANNED);
        outbox.close(Close::DRAINING);
        match tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await {
            Ok(Ok(Next::Close(c))) => assert_eq!(c, Close::BANNED),
            other => panic!("the waiting task was not woken with the close: {other:?}"),
        }
        // The receiving end is gone with its task: nothing more is accepted.
        assert!(!outbox.push(direct("late")));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_burst_buffer_back() {
        let (outbox, mut inbox) = Outbox::new(UserId::new(), 1024, Metrics::new());
        assert_eq!(outbox.queue.lock().items.capacity(), 0, "idle: no buffer");
        for i in 0..500 {
            outbox.push(direct(&i.to_string()));
        }
        assert!(outbox.queue.lock().items.capacity() >= 500);
        while inbox.try_recv().is_some() {}
        assert!(outbox.queue.lock().items.capacity() <= KEEP_CAPACITY);
        // A trickle keeps its small buffer.
        outbox.push(direct("x"));
        inbox.try_recv();
        assert!(outbox.queue.lock().items.capacity() > 0);
    }
}
