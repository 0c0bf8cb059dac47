//! The group-commit writer: one task drains the queue of submitted messages into one
//! transaction per batch, then answers every sender and hands each new message to the hub.
//!
//! For a WebSocket sender the writer queues the `ack` on the sender's own outbox *before* the
//! hub fans the `message` event out, so a sender always sees its ack first. It must not answer
//! anyone before the commit returns: an acked message is a durable message.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::hub::{Hub, Outbound, Outbox};
use crate::model::{Message, rfc3339};
use crate::protocol::Encode as _;
use crate::protocol::ServerFrame;
use crate::store::{CommitOutcome, MessageRecord, NewMessage, Store};
use crate::telemetry::Metrics;

/// Where the outcome of a submitted message goes.
pub enum Reply {
    /// A REST caller waits for the outcome.
    Caller(oneshot::Sender<Result<CommitOutcome, ApiError>>),
    /// A socket gets an `ack` or an `error` frame in its queue.
    Socket(Outbox),
}

pub struct Pending {
    pub message: NewMessage,
    pub reply: Reply,
    /// Whether the message may notify someone (a mention, a thread reply, a direct room):
    /// only those cost the reads that find whom.
    pub notifies: bool,
    /// The room is a direct one (the sender's rules said so): the other person is notified.
    pub direct: bool,
}

#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Pending>,
    max_batch: usize,
}

/// The `ack` frame for a committed message.
fn ack_frame(m: &MessageRecord) -> tokio_tungstenite::tungstenite::Utf8Bytes {
    ServerFrame::Ack {
        client_id: m.client_id.as_deref().map(std::borrow::Cow::Borrowed),
        id: m.id,
        seq: m.seq,
        room: m.room_id,
        created_at: rfc3339(m.created_at),
    }
    .encode()
}

impl GroupCommit {
    /// Starts the writer. It runs until every `GroupCommit` handle is dropped or `stop` is
    /// notified, and drains what was queued before it ends.
    pub fn start(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        metrics: Metrics,
        max_batch: usize,
        stop: Arc<tokio::sync::Notify>,
    ) -> (GroupCommit, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Pending>(max_batch * 8);
        // SQLite's statements run on sqlx's own thread, and a commit is five handoffs to it
        // and back; on the server's runtime each handoff back queues behind every socket task
        // a fan-out just woke. On a thread of its own the writer is woken by the OS instead
        // (measured under fan-out: commit 9 ms -> 1.6 ms; the price, when ingest saturates the
        // server's only core, is ~30% of its throughput: see docs/BENCHMARKS.md).
        // PostgreSQL's sockets belong to the runtime that opened them, so its writer stays.
        // (With SQLite the bus is in-process and this one writer publishes in seq order, so
        // nothing it hands the hub schedules work that would outlive its thread.)
        let own_runtime = store
            .statements_on_own_thread()
            .then(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .inspect_err(
                        |e| tracing::warn!(error = %e, "the writer runs on the server's runtime"),
                    )
                    .ok()
            })
            .flatten();
        let writer = async move {
            let mut batch = Vec::with_capacity(max_batch);
            loop {
                let got = tokio::select! {
                    n = rx.recv_many(&mut batch, max_batch) => n,
                    _ = stop.notified() => {
                        // Refuse new work; what is queued still commits below.
                        rx.close();
                        continue;
                    }
                };
                if got == 0 {
                    break;
                }
                write_batch(&*store, &hub, &metrics, std::mem::take(&mut batch)).await;
                batch.reserve(max_batch);
            }
        };
        let task = match own_runtime {
            Some(rt) => tokio::task::spawn_blocking(move || rt.block_on(writer)),
            None => tokio::spawn(writer),
        };
        (GroupCommit { tx, max_batch }, task)
    }

    /// More than a whole batch is waiting: the writer is behind, and background writers (the
    /// webhook worker) give it the store.
    pub fn behind(&self) -> bool {
        self.tx.max_capacity() - self.tx.capacity() > self.max_batch
    }

    /// Queues a message for the next batch. Fails only when the writer is shutting down.
    pub async fn submit(&self, pending: Pending) -> Result<(), ApiError> {
        self.tx
            .send(pending)
            .await
            .map_err(|_| ApiError::Unavailable("the server is shutting down; reconnect".into()))
    }
}

#[tracing::instrument(name = "commit_batch", skip_all, fields(messages = batch.len()))]
async fn write_batch(store: &dyn Store, hub: &Arc<Hub>, metrics: &Metrics, batch: Vec<Pending>) {
    let started = Instant::now();
    let messages: Vec<NewMessage> = batch.iter().map(|p| p.message.clone()).collect();
    let result = store.commit_messages(&messages).await;
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.commit_batch_size.observe(batch.len() as f64);

    let committed = match result {
        Ok(c) => c,
        Err(e) => {
            let e = ApiError::from(e);
            for p in batch {
                let err = clone_error(&e);
                match p.reply {
                    Reply::Caller(tx) => {
                        let _ = tx.send(Err(err));
                    }
                    Reply::Socket(out) => {
                        out.push(Outbound::direct(crate::protocol::error_frame(
                            &err,
                            p.message.client_id.as_deref(),
                        )));
                    }
                }
            }
            return;
        }
    };
    for (p, outcome) in batch.into_iter().zip(committed.outcomes) {
        let (notifies, direct) = (p.notifies, p.direct);
        let fresh = match &outcome {
            CommitOutcome::New(m) => {
                metrics.messages_committed.inc();
                Some(m.clone())
            }
            _ => None,
        };
        match p.reply {
            Reply::Caller(tx) => {
                let _ = tx.send(Ok(outcome));
            }
            Reply::Socket(out) => {
                let item = match &outcome {
                    CommitOutcome::New(m) | CommitOutcome::Duplicate(m) => {
                        metrics.acks.inc();
                        ack_frame(m)
                    }
                    CommitOutcome::Rejected(why) => crate::protocol::error_frame(
                        &ApiError::Forbidden(why.clone()),
                        p.message.client_id.as_deref(),
                    ),
                };
                out.push(Outbound::direct(item));
            }
        }
        if let Some(m) = fresh {
            hub.publish_message(&m);
            if notifies {
                hub.notify_for(&m, direct);
            }
        }
    }
    // A reply's root, with its new summary and the reply's rev, after the reply itself.
    for root in &committed.roots {
        let frame =
            ServerFrame::MessageUpdated(std::borrow::Cow::Borrowed(&Message::from(root))).encode();
        hub.publish_event(root.room_id, frame, None);
    }
}

/// `ApiError` holds non-clonable causes; a failed batch tells every sender the same thing.
fn clone_error(e: &ApiError) -> ApiError {
    match e {
        ApiError::Unavailable(m) => ApiError::Unavailable(m.clone()),
        ApiError::Conflict(m) => ApiError::Conflict(m.clone()),
        _ => ApiError::Unavailable("the message could not be committed; send it again".into()),
    }
}
