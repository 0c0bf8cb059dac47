//! The store reads of a reconnect and its `subscribe`s, batched across the sockets of a pod.
//!
//! When a pod dies, its sockets come back to the others at once, each signing in again and
//! resubscribing to every room with `since` (and `since_rev`): tens of thousands of sign-ins
//! and subscribes within a second, each of which used to cost its own queries (the token's
//! account, the room, the membership, the replay, the changes).
//! Here each kind of read goes through a [`Batched`] queue: the first ask runs at once, and asks
//! that arrive while [`IN_FLIGHT`] batches are running wait and leave together, as one query
//! for up to [`MAX_BATCH`] of them. A quiet pod therefore answers as before, and a storm pays
//! one query per batch instead of one per subscribe. Replays of the same room for many
//! sockets are coalesced into one range of rows and cut per socket.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::ids::{RoomId, UserId};
use crate::store::{
    MemberRecord, MessageRecord, RoomGate, Span, Store, StoreError, StoreResult, UserRecord,
};

/// Asks answered by one query at most.
pub const MAX_BATCH: usize = 256;
/// Batches of one kind running at once, per pod.
pub const IN_FLIGHT: usize = 2;

type Ask<Q, R, E> = (Q, oneshot::Sender<Result<R, E>>);

/// A failure every ask of a failed batch receives.
pub trait Shared: Send + 'static {
    /// The same failure again, for the next ask.
    fn again(&self) -> Self;
    /// The queue has stopped (the runtime is shutting down).
    fn stopped() -> Self;
}

/// The failure of reads that answer with nothing rather than fail (presence): only a queue
/// that has stopped gives it.
#[derive(Debug)]
pub struct Unanswered;

impl Shared for Unanswered {
    fn again(&self) -> Self {
        Unanswered
    }

    fn stopped() -> Self {
        Unanswered
    }
}

impl Shared for StoreError {
    /// The store's errors are not `Clone`: the others get its text.
    fn again(&self) -> Self {
        let text = || sqlx::Error::Protocol(self.to_string());
        match self {
            StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
            StoreError::NotFound => StoreError::NotFound,
            StoreError::Unavailable(_) => StoreError::Unavailable(text()),
            StoreError::Other(_) => StoreError::Other(text()),
        }
    }

    fn stopped() -> Self {
        StoreError::Unavailable(sqlx::Error::Protocol(
            "the store's read queue has stopped".into(),
        ))
    }
}

/// A queue of reads of one kind, answered in batches.
pub struct Batched<Q, R, E = StoreError> {
    asks: mpsc::UnboundedSender<Ask<Q, R, E>>,
    /// Asks not answered yet (waiting for a batch, or in one that is running).
    waiting: Arc<AtomicUsize>,
}

impl<Q: Send + 'static, R: Send + 'static, E: Shared> Batched<Q, R, E> {
    /// Starts the queue; `run` answers a batch of up to [`MAX_BATCH`] asks with one result
    /// per ask, in order.
    pub fn new<F, Fut>(run: F) -> Self
    where
        F: Fn(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, E>> + Send + 'static,
    {
        Self::with_max_batch(MAX_BATCH, run)
    }

    /// The same with batches of up to `max_batch` asks.
    pub fn with_max_batch<F, Fut>(max_batch: usize, run: F) -> Self
    where
        F: Fn(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, E>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Ask<Q, R, E>>();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(IN_FLIGHT));
            while let Some(first) = rx.recv().await {
                // While every slot is busy, more asks queue up behind this one.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let mut asks = vec![first];
                while asks.len() < max_batch {
                    match rx.try_recv() {
                        Ok(ask) => asks.push(ask),
                        Err(_) => break,
                    }
                }
                let (queries, replies): (Vec<Q>, Vec<_>) = asks.into_iter().unzip();
                let batch = run(queries);
                tokio::spawn(async move {
                    match batch.await {
                        Ok(results) => {
                            for (reply, result) in replies.into_iter().zip(results) {
                                let _ = reply.send(Ok(result));
                            }
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(e.again()));
                            }
                        }
                    }
                    drop(slot);
                });
            }
        });
        Batched {
            asks: tx,
            waiting: Arc::default(),
        }
    }

    /// Asks not answered yet.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Asks and waits for the batch that carries the ask.
    pub async fn load(&self, query: Q) -> Result<R, E> {
        let _place = crate::Waiting::enter(&self.waiting);
        let (tx, rx) = oneshot::channel();
        self.asks.send((query, tx)).map_err(|_| E::stopped())?;
        rx.await.map_err(|_| E::stopped())?
    }
}

/// A room as a subscribe reads it for one user: the room (None if there is none) and the
/// user's membership.
pub type Gate = Option<(RoomGate, Option<MemberRecord>)>;

/// The batched reads of signing in with a token and of `subscribe`.
pub struct Resumes {
    accounts: Batched<UserId, Option<UserRecord>>,
    gates: Batched<(RoomId, UserId), Gate>,
    messages: Batched<Span, Vec<MessageRecord>>,
    changes: Batched<Span, Vec<MessageRecord>>,
}

impl Resumes {
    pub fn new(store: Arc<dyn Store>) -> Self {
        let s = store.clone();
        let accounts = Batched::new(move |ids: Vec<UserId>| {
            let s = s.clone();
            async move {
                let mut distinct = ids.clone();
                distinct.sort_unstable();
                distinct.dedup();
                let found: HashMap<UserId, UserRecord> = s
                    .users_by_ids(&distinct)
                    .await?
                    .into_iter()
                    .map(|u| (u.id, u))
                    .collect();
                Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
            }
        });
        let s = store.clone();
        let gates = Batched::new(move |asks: Vec<(RoomId, UserId)>| {
            let s = s.clone();
            async move { s.room_gates(&asks).await }
        });
        let s = store.clone();
        let messages = Batched::new(move |spans: Vec<Span>| {
            let s = s.clone();
            async move {
                let merged = merge_overlapping(&spans);
                let rows = s.messages_between(&merged).await?;
                Ok(cut(&spans, &merged, rows, |m, span| {
                    m.seq > span.after && m.seq <= span.upto
                }))
            }
        });
        let s = store;
        let changes = Batched::new(move |spans: Vec<Span>| {
            let s = s.clone();
            async move {
                let widest = widest_per_room(&spans);
                let rows = s.changes_between(&widest).await?;
                Ok(cut(&spans, &widest, rows, |m, span| {
                    m.rev > span.after && m.seq <= span.upto
                }))
            }
        });
        Resumes {
            accounts,
            gates,
            messages,
            changes,
        }
    }

    /// Reads asked and not answered yet, of every kind: how far behind the store is with
    /// this pod's sign-ins and subscribes.
    pub fn waiting(&self) -> usize {
        self.accounts.waiting()
            + self.gates.waiting()
            + self.messages.waiting()
            + self.changes.waiting()
    }

    /// The account of a verified token (None if it was deleted).
    pub async fn account(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        self.accounts.load(id).await
    }

    /// The room and the user's membership in it.
    pub async fn gate(&self, room: RoomId, user: UserId) -> StoreResult<Gate> {
        self.gates.load((room, user)).await
    }

    /// Messages with `after < seq <= upto`, in seq order (bounded by the caller).
    pub async fn messages(&self, span: Span) -> StoreResult<Vec<MessageRecord>> {
        self.messages.load(span).await
    }

    /// Messages with `rev > after` and `seq <= upto`, in rev order; the caller bounds
    /// `after` by the room's rev.
    pub async fn changes(&self, span: Span) -> StoreResult<Vec<MessageRecord>> {
        self.changes.load(span).await
    }
}

/// The spans of each room merged where they overlap or touch: rows are read once however
/// many sockets ask for them, and never more rows than the spans hold together.
fn merge_overlapping(spans: &[Span]) -> Vec<Span> {
    let mut sorted: Vec<Span> = spans.to_vec();
    sorted.sort_by_key(|s| (s.room, s.after));
    let mut merged: Vec<Span> = Vec::new();
    for s in sorted {
        match merged.last_mut() {
            Some(m) if m.room == s.room && s.after <= m.upto => m.upto = m.upto.max(s.upto),
            _ => merged.push(s),
        }
    }
    merged
}

/// One span per room covering every ask of it (changes: the lowest rev, the highest seq).
fn widest_per_room(spans: &[Span]) -> Vec<Span> {
    let mut rooms: HashMap<RoomId, Span> = HashMap::new();
    for s in spans {
        rooms
            .entry(s.room)
            .and_modify(|w| {
                w.after = w.after.min(s.after);
                w.upto = w.upto.max(s.upto);
            })
            .or_insert(*s);
    }
    rooms.into_values().collect()
}

/// Each asked span's rows, taken from the rows read for the spans that cover it.
fn cut(
    asked: &[Span],
    read: &[Span],
    rows: Vec<Vec<MessageRecord>>,
    keep: impl Fn(&MessageRecord, &Span) -> bool,
) -> Vec<Vec<MessageRecord>> {
    let mut by_room: HashMap<RoomId, Vec<&MessageRecord>> = HashMap::new();
    for (span, rows) in read.iter().zip(&rows) {
        by_room.entry(span.room).or_default().extend(rows);
    }
    asked
        .iter()
        .map(|span| {
            by_room
                .get(&span.room)
                .map(|rows| {
                    rows.iter()
                        .filter(|m| keep(m, span))
                        .map(|m| (*m).clone())
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(room: RoomId, after: i64, upto: i64) -> Span {
        Span { room, after, upto }
    }

    #[test]
    fn overlapping_spans_of_a_room_are_read_once_and_apart_ones_stay_apart() {
        let (a, b) = (RoomId::new(), RoomId::new());
        let merged = merge_overlapping(&[
            span(a, 10, 20),
            span(b, 0, 5),
            span(a, 15, 30),
            span(a, 100, 120),
            span(a, 30, 40),
        ]);
        let mut of_a: Vec<(i64, i64)> = merged
            .iter()
            .filter(|s| s.room == a)
            .map(|s| (s.after, s.upto))
            .collect();
        of_a.sort();
        assert_eq!(of_a, vec![(10, 40), (100, 120)]);
        assert!(merged.contains(&span(b, 0, 5)));
    }
}
