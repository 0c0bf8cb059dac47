//! The one SQL implementation of [`Store`], generated for PostgreSQL and SQLite by
//! `sql_store!`. Both databases accept `$N` placeholders, `RETURNING`, `ON CONFLICT` and
//! row-value `IN (VALUES ...)`, so the statements are the same text; where a dialect differs,
//! the difference is written here and nowhere else.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use sqlx::{Postgres, QueryBuilder, Sqlite};

use super::*;
use crate::ids::AttachmentId;

macro_rules! room_columns {
    () => {
        "r.id, r.name, r.kind, r.topic, r.created_at, r.created_by, \
     r.last_seq, r.rev, r.archived, r.managed_by, \
     (SELECT COUNT(*) FROM members c WHERE c.room_id = r.id) AS member_count, \
     r.slow_mode_seconds, r.read_only, r.retention_days"
    };
}

macro_rules! message_columns {
    () => {
        "m.id, m.room_id, m.seq, m.user_id, u.username, m.body, \
     m.created_at, m.edited_at, m.deleted, m.client_id, m.reply_to, m.attachments, \
     m.rev, m.thread, m.thread_summary, m.reactions, m.mentions, m.mentions_room, m.pinned_at"
    };
}

/// How many times a batch is retried when another pod's commit raced it (a duplicate
/// `client_id` or a deadlock); each retry re-reads what is already committed.
const COMMIT_ATTEMPTS: usize = 3;

#[derive(Clone)]
pub struct PgStore {
    pool: sqlx::PgPool,
    timer: QueryTimer,
    hooks: WebhookRoutes,
    gate: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

impl PgStore {
    pub fn new(pool: sqlx::PgPool, timer: QueryTimer) -> Self {
        Self {
            pool,
            timer,
            hooks: WebhookRoutes::default(),
            gate: None,
        }
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    timer: QueryTimer,
    hooks: WebhookRoutes,
    gate: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

impl SqliteStore {
    pub fn new(pool: sqlx::SqlitePool, timer: QueryTimer) -> Self {
        Self {
            pool,
            timer,
            hooks: WebhookRoutes::default(),
            // SQLite has one writer. The busy writers of this process (the group commit and
            // the webhook worker) queue here in turn instead of meeting at SQLite's lock,
            // whose busy handler sleeps between tries (1 ms growing to 100 ms) and left the
            // commit waiting behind the worker: measured in docs/BENCHMARKS.md, "Webhooks".
            gate: Some(Default::default()),
        }
    }
}

/// Emits `impl Store for $store`: the plain methods as written, and each async method timed into
/// `confab_store_query_duration_seconds{op}` under its own name, so the implementation is the
/// one list of operations.
macro_rules! timed_store_impl {
    (
        $store:ident,
        plain { $($plain:item)* }
        timed {
        $(
            async fn $op:ident(&$self:ident $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $body:block
        )*
        }
    ) => {
        #[async_trait]
        impl Store for $store {
            $($plain)*
            $(
                async fn $op(&$self $(, $arg: $ty)*) -> $ret {
                    let started = std::time::Instant::now();
                    let result: $ret = async { $body }.await;
                    $self.timer.observe(stringify!($op), started);
                    result
                }
            )*
        }
    };
}

/// A row of `room_gates`: which ask it answers, the room, and the membership if any.
#[derive(sqlx::FromRow)]
struct GateRow {
    ask: i64,
    #[sqlx(flatten)]
    gate: RoomGate,
    member_role: Option<String>,
    member_last_read_seq: Option<i64>,
    member_last_delivered_seq: Option<i64>,
    member_muted_until: Option<i64>,
}

/// A message row of a batch of spans, with the span it answers.
#[derive(sqlx::FromRow)]
struct SpanRow {
    ask: i64,
    #[sqlx(flatten)]
    message: MessageRecord,
}

/// The query for many spans of messages (`Store::messages_between`, `changes_between`): the
/// spans as a `VALUES` list joined to `messages` on `room_id`, `seq <= upto` and `lower`, each
/// span's rows in `order`, tagged with the span's index.
fn spans_query<DB>(spans: &[Span], lower: &str, order: &str) -> QueryBuilder<DB>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Arguments: Default,
    i64: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    RoomId: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut q = QueryBuilder::<DB>::new("WITH q(ask, room_id, after, upto) AS (VALUES ");
    for i in 0..padded(spans.len()) {
        q.push(if i == 0 { "(" } else { ", (" });
        // Padding asks for an empty span (seq <= 0) under index -1.
        let (ask, s) = match spans.get(i) {
            Some(s) => (i as i64, *s),
            None => (
                -1,
                Span {
                    after: 0,
                    upto: 0,
                    ..spans[0]
                },
            ),
        };
        q.push_bind(ask)
            .push(", ")
            .push_bind(s.room)
            .push(", ")
            .push_bind(s.after)
            .push(", ")
            .push_bind(s.upto)
            .push(")");
    }
    q.push(concat!(
        ") SELECT q.ask, ",
        message_columns!(),
        " FROM q JOIN messages m ON m.room_id = q.room_id AND m.seq <= q.upto AND "
    ));
    q.push(lower);
    q.push(" JOIN users u ON u.id = m.user_id ORDER BY q.ask, ");
    q.push(order);
    q
}

/// Batches are padded to a power of two, so that a few prepared statements serve every size
/// (parsing and planning a new one per batch showed in PostgreSQL's profile).
fn padded(n: usize) -> usize {
    n.next_power_of_two()
}

/// Each span's messages, from the rows of a spans query.
fn by_span(rows: Vec<SpanRow>, spans: usize) -> Vec<Vec<MessageRecord>> {
    let mut out = vec![Vec::new(); spans];
    for row in rows.into_iter().filter(|r| r.ask >= 0) {
        out[row.ask as usize].push(row.message);
    }
    out
}

fn dm_key(a: UserId, b: UserId) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

/// A webhook event's JSON: its type, when it happened, and its data.
fn event_body<D: serde::Serialize>(event: &str, timestamp: &str, data: D) -> String {
    #[derive(serde::Serialize)]
    struct Envelope<'a, D> {
        r#type: &'a str,
        timestamp: &'a str,
        data: D,
    }
    serde_json::to_string(&Envelope {
        r#type: event,
        timestamp,
        data,
    })
    .expect("an event serializes")
}

/// A new event's `webhook-id`: `evt_` and a UUIDv7 drawn from the thread's generator (one
/// system call per event showed in the commit's profile).
fn event_id(now_ms: i64) -> String {
    let id = uuid::Builder::from_unix_timestamp_millis(now_ms as u64, &rand::random::<[u8; 10]>())
        .into_uuid();
    format!("evt_{}", id.simple())
}

fn is_retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Other(sqlx::Error::Database(db)) => {
            db.is_unique_violation()
                // PostgreSQL deadlock_detected / serialization_failure.
                || matches!(db.code().as_deref(), Some("40P01") | Some("40001"))
        }
        _ => false,
    }
}

/// The new rows of a batch: which messages of the batch, with the seq, rev and mentions each
/// was given (those three indexed like the batch).
struct NewRows<'a> {
    batch: &'a [NewMessage],
    rows: &'a [usize],
    seqs: &'a [i64],
    revs: &'a [i64],
    mentions: &'a [Option<String>],
}

impl<'a> NewRows<'a> {
    /// One column of the rows: `f` of each row's batch index and message.
    fn column<T>(&self, f: impl Fn(usize, &'a NewMessage) -> T) -> Vec<T> {
        self.rows.iter().map(|&i| f(i, &self.batch[i])).collect()
    }
}

/// PostgreSQL: the batch as one array per column, `UNNEST`ed into one insert. One statement
/// text for every batch size, so it is parsed and planned once per connection (a `VALUES`
/// list of 13 parameters per row was parsed and planned again for each batch).
///
/// A `bet` (that no `client_id` of the batch is committed already) is a plain insert too:
/// `ON CONFLICT DO NOTHING` probes the `(user_id, client_id)` index and takes a
/// speculative-insertion lock for every row, ~15% of PostgreSQL's time in a batch. A resend
/// makes the plain insert fail on that index instead, which is answered as zero rows inserted:
/// the bet is lost, and the caller rolls back and looks the resends up.
async fn insert_messages_unnest(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    new: &NewRows<'_>,
    bet: bool,
) -> Result<u64, sqlx::Error> {
    const INSERT: &str = "INSERT INTO messages (id, room_id, seq, user_id, body, created_at, \
         client_id, reply_to, attachments, rev, thread, mentions, mentions_room) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::uuid[], $5::text[], \
         $6::int8[], $7::text[], $8::int8[], $9::text[], $10::int8[], $11::int8[], $12::text[], \
         $13::bool[])";
    let inserted = sqlx::query(INSERT)
        .bind(new.column(|_, m| m.id.0))
        .bind(new.column(|_, m| m.room_id.0))
        .bind(new.column(|i, _| new.seqs[i]))
        .bind(new.column(|_, m| m.user_id.0))
        .bind(new.column(|_, m| m.body.as_str()))
        .bind(new.column(|_, m| m.created_at))
        .bind(new.column(|_, m| m.client_id.as_deref()))
        .bind(new.column(|_, m| m.reply_to))
        .bind(new.column(|_, m| m.attachments.as_deref()))
        .bind(new.column(|i, _| new.revs[i]))
        .bind(new.column(|_, m| m.thread))
        .bind(new.column(|i, _| new.mentions[i].as_deref()))
        .bind(new.column(|_, m| m.mentions_room))
        .execute(&mut **tx)
        .await;
    match inserted {
        Ok(done) => Ok(done.rows_affected()),
        Err(sqlx::Error::Database(e))
            if bet && e.constraint() == Some("messages_user_client_id_key") =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// SQLite: one multi-row `VALUES` insert (SQLite has no arrays to bind). A `bet` skips the
/// rows whose `client_id` is committed already, so fewer rows than asked means it was lost.
async fn insert_messages_values(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    new: &NewRows<'_>,
    bet: bool,
) -> Result<u64, sqlx::Error> {
    let mut q = QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO messages (id, room_id, seq, user_id, body, created_at, \
         client_id, reply_to, attachments, rev, thread, mentions, mentions_room) ",
    );
    q.push_values(new.rows, |mut b, &i| {
        let m = &new.batch[i];
        b.push_bind(m.id)
            .push_bind(m.room_id)
            .push_bind(new.seqs[i])
            .push_bind(m.user_id)
            .push_bind(m.body.clone())
            .push_bind(m.created_at)
            .push_bind(m.client_id.clone())
            .push_bind(m.reply_to)
            .push_bind(m.attachments.clone())
            .push_bind(new.revs[i])
            .push_bind(m.thread)
            .push_bind(new.mentions[i].clone())
            .push_bind(m.mentions_room);
    });
    if bet {
        q.push(" ON CONFLICT (user_id, client_id) DO NOTHING");
    }
    Ok(q.build().execute(&mut **tx).await?.rows_affected())
}

macro_rules! sql_store {
    (
        $store:ident, $db:ty, $backend:literal,
        begin_write: $begin_write:literal,
        statements_on_own_thread: $own_thread:literal,
        claim_lock: $claim_lock:literal,
        insert_messages: $insert_messages:path,
        search_query: $search_query:path,
        search_room: $search_room:expr,
        search_rooms_of: $search_rooms_of:expr $(,)?
    ) => {
        impl $store {
            /// Waits for this process's turn to write (SQLite; PostgreSQL has no gate).
            async fn gate(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
                match &self.gate {
                    Some(g) => Some(g.clone().lock_owned().await),
                    None => None,
                }
            }

            /// A write transaction. SQLite needs `BEGIN IMMEDIATE`: a deferred transaction that
            /// reads and then writes fails with SQLITE_BUSY_SNAPSHOT when another writer got in
            /// between, which no busy timeout can wait out.
            async fn begin_write(&self) -> Result<sqlx::Transaction<'static, $db>, sqlx::Error> {
                self.pool.begin_with($begin_write).await
            }

            /// One unspent refresh token of `family`, inside `tx`.
            async fn insert_token(
                tx: &mut sqlx::Transaction<'static, $db>,
                token_hash: &str,
                family: FamilyId,
                user: UserId,
                expires_at: i64,
                now: i64,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO refresh_tokens \
                     (token_hash, family_id, user_id, expires_at, spent, created_at) \
                     VALUES ($1, $2, $3, $4, FALSE, $5)",
                )
                .bind(token_hash)
                .bind(family)
                .bind(user)
                .bind(expires_at)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// One attempt at a batch. With `look_up` false the batch is written on the bet
            /// that no `client_id` in it is committed already (a resend is rare): the insert
            /// skips conflicting rows, and if it skipped any the transaction is rolled back and
            /// `Ok(None)` asks for the attempt that looks them up first, so a resend never
            /// takes a `seq`. With `look_up` the insert is plain: a client_id another pod
            /// commits meanwhile fails it with a unique violation, which is retried.
            async fn commit_once(
                &self,
                batch: &[NewMessage],
                look_up: bool,
            ) -> StoreResult<Option<Committed>> {
                let mut out: Vec<Option<CommitOutcome>> = vec![None; batch.len()];
                let mut tx = self.begin_write().await?;

                // 1. Messages whose (user, client_id) is already committed get that message.
                let keyed: Vec<&NewMessage> =
                    batch.iter().filter(|m| m.client_id.is_some()).collect();
                let mut existing: HashMap<(UserId, String), MessageRecord> = HashMap::new();
                if look_up && !keyed.is_empty() {
                    let mut q = QueryBuilder::<$db>::new(concat!(
                        "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
                         WHERE (m.user_id, m.client_id) IN (VALUES "
                    ));
                    let mut sep = q.separated(", ");
                    for m in &keyed {
                        sep.push("(");
                        sep.push_bind_unseparated(m.user_id);
                        sep.push_unseparated(", ");
                        sep.push_bind_unseparated(m.client_id.clone());
                        sep.push_unseparated(")");
                    }
                    q.push(")");
                    let rows: Vec<MessageRecord> =
                        q.build_query_as().fetch_all(&mut *tx).await?;
                    for r in rows {
                        let key = (r.user_id, r.client_id.clone().unwrap_or_default());
                        existing.insert(key, r);
                    }
                }

                // 2. Group the new ones by room; a repeat inside the batch points at its first.
                let mut by_room: BTreeMap<RoomId, Vec<usize>> = BTreeMap::new();
                let mut first_in_batch: HashMap<(UserId, &str), usize> = HashMap::new();
                let mut repeats: Vec<(usize, usize)> = Vec::new();
                for (i, m) in batch.iter().enumerate() {
                    if let Some(cid) = &m.client_id {
                        if let Some(r) = existing.get(&(m.user_id, cid.clone())) {
                            out[i] = Some(CommitOutcome::Duplicate(r.clone()));
                            continue;
                        }
                        if let Some(&first) = first_in_batch.get(&(m.user_id, cid.as_str())) {
                            repeats.push((i, first));
                            continue;
                        }
                        first_in_batch.insert((m.user_id, cid.as_str()), i);
                    }
                    by_room.entry(m.room_id).or_default().push(i);
                }

                // 3. Allocate each room's seq range (rooms in id order, so concurrent pods
                //    lock rows in the same order and cannot deadlock each other).
                //    Each message is one change: the room's rev moves with its seq.
                let mut seqs: Vec<i64> = vec![0; batch.len()];
                let mut revs: Vec<i64> = vec![0; batch.len()];
                let mut rows: Vec<usize> = Vec::new();
                for (room, idx) in &by_room {
                    let last: Option<(i64, i64)> = sqlx::query_as(
                        "UPDATE rooms SET last_seq = last_seq + $1, rev = rev + $1 \
                         WHERE id = $2 AND archived = FALSE RETURNING last_seq, rev",
                    )
                    .bind(idx.len() as i64)
                    .bind(*room)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match last {
                        Some((last, rev)) => {
                            let first = last - idx.len() as i64 + 1;
                            let first_rev = rev - idx.len() as i64 + 1;
                            for (k, &i) in idx.iter().enumerate() {
                                seqs[i] = first + k as i64;
                                revs[i] = first_rev + k as i64;
                                rows.push(i);
                            }
                        }
                        None => {
                            for &i in idx {
                                out[i] = Some(CommitOutcome::Rejected(
                                    "the room is archived or does not exist".into(),
                                ));
                            }
                        }
                    }
                }

                // 4. Mentions: the named members of each message's room, one query for all.
                let mentions = Self::resolve_mentions(&mut tx, batch, &rows).await?;

                // 5. One multi-row insert, then the senders' read markers.
                let mut roots = Vec::new();
                if !rows.is_empty() {
                    let new = NewRows { batch, rows: &rows, seqs: &seqs, revs: &revs, mentions: &mentions };
                    let inserted = $insert_messages(&mut tx, &new, !look_up).await?;
                    if inserted < rows.len() as u64 {
                        // The bet is lost: a client_id was committed before. Look those up.
                        tx.rollback().await?;
                        return Ok(None);
                    }

                    let mut markers: BTreeMap<(RoomId, UserId), i64> = BTreeMap::new();
                    for &i in &rows {
                        let e = markers.entry((batch[i].room_id, batch[i].user_id)).or_default();
                        *e = (*e).max(seqs[i]);
                    }
                    // One statement for every sender of the batch, not a round trip each.
                    // (VALUES columns are column1.. in both dialects; the rows' locks are
                    // taken under the rooms' row locks above, so pods cannot deadlock here.)
                    let mut q = QueryBuilder::<$db>::new(
                        "UPDATE members SET last_read_seq = v.column3 FROM (",
                    );
                    q.push_values(&markers, |mut b, ((room, user), seq)| {
                        b.push_bind(*room).push_bind(*user).push_bind(*seq);
                    });
                    q.push(
                        ") AS v WHERE members.room_id = v.column1 \
                         AND members.user_id = v.column2 AND members.last_read_seq < v.column3",
                    );
                    q.build().execute(&mut *tx).await?;

                    // Mention rows, for the per-member counts of room listings.
                    let named: Vec<(RoomId, i64, UserId)> = rows
                        .iter()
                        .flat_map(|&i| {
                            let ids: Vec<UserId> = mentions[i]
                                .as_deref()
                                .and_then(|j| serde_json::from_str(j).ok())
                                .unwrap_or_default();
                            let (room, seq) = (batch[i].room_id, seqs[i]);
                            ids.into_iter().map(move |u| (room, seq, u))
                        })
                        .collect();
                    if !named.is_empty() {
                        let mut q = QueryBuilder::<$db>::new(
                            "INSERT INTO mentions (room_id, seq, user_id) ",
                        );
                        q.push_values(&named, |mut b, (room, seq, user)| {
                            b.push_bind(*room).push_bind(*seq).push_bind(*user);
                        });
                        q.build().execute(&mut *tx).await?;
                    }

                    // 6. Thread roots: one summary update per root, carrying the rev of its
                    //    last reply in the batch (a reply and its root's summary are one change).
                    let mut threads: BTreeMap<(RoomId, i64), Vec<usize>> = BTreeMap::new();
                    for &i in &rows {
                        if let Some(root) = batch[i].thread {
                            threads.entry((batch[i].room_id, root)).or_default().push(i);
                        }
                    }
                    for ((room, root), replies) in threads {
                        let current: Option<Option<String>> = sqlx::query_scalar(
                            "SELECT thread_summary FROM messages WHERE room_id = $1 AND seq = $2",
                        )
                        .bind(room)
                        .bind(root)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some(current) = current else { continue };
                        let mut summary: ThreadSummary = current
                            .as_deref()
                            .and_then(|j| serde_json::from_str(j).ok())
                            .unwrap_or_default();
                        for &i in &replies {
                            summary.reply_count += 1;
                            summary.last_reply_seq = seqs[i];
                            summary.last_reply_at = batch[i].created_at;
                            let who = batch[i].user_id;
                            if !summary.participants.contains(&who)
                                && summary.participants.len() < MAX_THREAD_PARTICIPANTS
                            {
                                summary.participants.push(who);
                            }
                        }
                        let rev = revs[*replies.last().expect("a thread has a reply")];
                        sqlx::query(
                            "UPDATE messages SET thread_summary = $3, rev = $4 \
                             WHERE room_id = $1 AND seq = $2",
                        )
                        .bind(room)
                        .bind(root)
                        .bind(serde_json::to_string(&summary).expect("summary serializes"))
                        .bind(rev)
                        .execute(&mut *tx)
                        .await?;
                        if let Some(r) = Self::message_in(&mut tx, room, root).await? {
                            roots.push(r);
                        }
                    }
                }
                let mut records = Vec::with_capacity(rows.len());
                for &i in &rows {
                    let m = &batch[i];
                    records.push((i, MessageRecord {
                        id: m.id,
                        room_id: m.room_id,
                        seq: seqs[i],
                        user_id: m.user_id,
                        username: m.username.clone(),
                        body: m.body.clone(),
                        created_at: m.created_at,
                        edited_at: None,
                        deleted: false,
                        client_id: m.client_id.clone(),
                        reply_to: m.reply_to,
                        attachments: m.attachments.clone(),
                        rev: revs[i],
                        thread: m.thread,
                        thread_summary: None,
                        reactions: None,
                        mentions: mentions[i].clone(),
                        mentions_room: m.mentions_room,
                        pinned_at: None,
                    }));
                }
                // 7. The outbox: for every webhook that wants `message.created`, one row per
                // room naming the seqs this batch added there (consecutive); the worker makes
                // the events from them after the commit.
                let hooks = self.hooks.subscribers("message.created");
                if !hooks.is_empty() {
                    let mut ranges: BTreeMap<RoomId, (i64, i64)> = BTreeMap::new();
                    for (_, r) in &records {
                        let e = ranges.entry(r.room_id).or_insert((r.seq, r.seq));
                        e.0 = e.0.min(r.seq);
                        e.1 = e.1.max(r.seq);
                    }
                    let rows: Vec<(WebhookId, RoomId, i64, i64)> = hooks
                        .iter()
                        .flat_map(|h| ranges.iter().map(move |(r, (a, b))| (*h, *r, *a, *b)))
                        .collect();
                    let now = crate::now_ms();
                    for chunk in rows.chunks(1000) {
                        let mut q = QueryBuilder::<$db>::new(
                            "INSERT INTO webhook_message_ranges \
                             (webhook_id, room_id, first_seq, last_seq, created_at) ",
                        );
                        q.push_values(chunk, |mut b, (h, r, a, z)| {
                            b.push_bind(*h).push_bind(*r).push_bind(*a).push_bind(*z).push_bind(now);
                        });
                        q.build().execute(&mut *tx).await?;
                    }
                }
                tx.commit().await?;
                for (i, r) in records {
                    out[i] = Some(CommitOutcome::New(r));
                }
                for (i, first) in repeats {
                    out[i] = match &out[first] {
                        Some(CommitOutcome::New(r)) | Some(CommitOutcome::Duplicate(r)) => {
                            Some(CommitOutcome::Duplicate(r.clone()))
                        }
                        other => other.clone(),
                    };
                }
                Ok(Some(Committed {
                    outcomes: out
                        .into_iter()
                        .map(|o| o.expect("every message has an outcome"))
                        .collect(),
                    roots,
                }))
            }

            /// Each row's mentions as a JSON array of member ids (None when it names nobody
            /// who is a member), from one query over the whole batch.
            async fn resolve_mentions(
                tx: &mut sqlx::Transaction<'static, $db>,
                batch: &[NewMessage],
                rows: &[usize],
            ) -> Result<Vec<Option<String>>, sqlx::Error> {
                let mut out = vec![None; batch.len()];
                let wanted: Vec<(RoomId, &str, UserId)> = rows
                    .iter()
                    .flat_map(|&i| {
                        let m = &batch[i];
                        m.mention_names.iter().map(move |n| (m.room_id, n.as_str(), m.user_id))
                    })
                    .collect();
                if wanted.is_empty() {
                    return Ok(out);
                }
                // A member who blocks the author is not mentioned by them.
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT v.column1, v.column2, v.column3, u.id FROM (",
                );
                q.push_values(&wanted, |mut b, (room, name, author)| {
                    b.push_bind(*room).push_bind(name.to_string()).push_bind(*author);
                });
                q.push(
                    ") AS v JOIN users u ON u.username = v.column2 \
                     JOIN members m ON m.room_id = v.column1 AND m.user_id = u.id \
                     WHERE NOT EXISTS (SELECT 1 FROM blocks b \
                       WHERE b.user_id = u.id AND b.blocked_id = v.column3)",
                );
                let found: Vec<(RoomId, String, UserId, UserId)> =
                    q.build_query_as().fetch_all(&mut **tx).await?;
                let members: HashMap<(RoomId, &str, UserId), UserId> = found
                    .iter()
                    .map(|(r, n, a, u)| ((*r, n.as_str(), *a), *u))
                    .collect();
                for &i in rows {
                    let m = &batch[i];
                    let mut ids: Vec<UserId> = Vec::new();
                    for n in &m.mention_names {
                        if let Some(&u) = members.get(&(m.room_id, n.as_str(), m.user_id))
                            && !ids.contains(&u)
                        {
                            ids.push(u);
                        }
                    }
                    if !ids.is_empty() {
                        out[i] = Some(serde_json::to_string(&ids).expect("ids serialize"));
                    }
                }
                Ok(out)
            }

            /// One message, read inside `tx`.
            async fn message_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                room: RoomId,
                seq: i64,
            ) -> Result<Option<MessageRecord>, sqlx::Error> {
                sqlx::query_as(concat!(
                    "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
                     WHERE m.room_id = $1 AND m.seq = $2"
                ))
                .bind(room)
                .bind(seq)
                .fetch_optional(&mut **tx)
                .await
            }

            /// Writes the outbox rows of `events` (type and `data`) for every webhook subscribed
            /// to each, inside `tx`: an event is as durable as the change that causes it. Costs
            /// nothing when no webhook wants the event.
            async fn enqueue<D: serde::Serialize>(
                tx: &mut sqlx::Transaction<'static, $db>,
                routes: &WebhookRoutes,
                events: impl IntoIterator<Item = (&'static str, D)>,
            ) -> Result<(), sqlx::Error> {
                // Member events build their small data anyway; nothing is written unless wanted.
                let now = crate::now_ms();
                let timestamp = crate::model::rfc3339(now);
                let mut rows = Vec::new();
                for (event, data) in events {
                    let hooks = routes.subscribers(event);
                    if hooks.is_empty() {
                        continue;
                    }
                    let body = event_body(event, &timestamp, data);
                    for hook in hooks {
                        rows.push((event_id(now), hook, event, body.clone(), now));
                    }
                }
                Self::insert_events(tx, rows).await
            }

            /// Inserts due events: (webhook-id, webhook, type, body, created_at).
            async fn insert_events(
                tx: &mut sqlx::Transaction<'static, $db>,
                mut rows: Vec<(String, WebhookId, &'static str, String, i64)>,
            ) -> Result<(), sqlx::Error> {
                let now = crate::now_ms();
                while !rows.is_empty() {
                    let chunk: Vec<_> = rows.drain(..rows.len().min(500)).collect();
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO webhook_events (id, webhook_id, event, body, created_at, state, \
                         attempts, next_attempt_at) ",
                    );
                    q.push_values(chunk, |mut b, (id, hook, event, body, created_at)| {
                        b.push_bind(id)
                            .push_bind(hook)
                            .push_bind(event)
                            .push_bind(body)
                            .push_bind(created_at)
                            .push_bind("due")
                            .push_bind(0_i64)
                            .push_bind(now);
                    });
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Turns the oldest `message.created` ranges the commits recorded into one due event
            /// per message (as the message is now), about `budget` messages' worth, and removes
            /// them; inside the worker's claim transaction (PostgreSQL: ranges another pod is
            /// turning are skipped).
            async fn expand_message_ranges(
                tx: &mut sqlx::Transaction<'static, $db>,
                budget: i64,
            ) -> Result<(), sqlx::Error> {
                let ranges: Vec<(i64, WebhookId, RoomId, i64, i64, i64)> = sqlx::query_as(concat!(
                    "SELECT id, webhook_id, room_id, first_seq, last_seq, created_at \
                     FROM webhook_message_ranges ORDER BY id LIMIT 64 ",
                    $claim_lock
                ))
                .fetch_all(&mut **tx)
                .await?;
                let (mut taken, mut rows, mut done) = (0, Vec::new(), Vec::new());
                for (id, hook, room, first, last, created_at) in ranges {
                    if taken >= budget {
                        break;
                    }
                    let messages: Vec<MessageRecord> = sqlx::query_as(concat!(
                        "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
                         WHERE m.room_id = $1 AND m.seq >= $2 AND m.seq <= $3 ORDER BY m.seq"
                    ))
                    .bind(room)
                    .bind(first)
                    .bind(last)
                    .fetch_all(&mut **tx)
                    .await?;
                    for m in &messages {
                        let body = event_body(
                            "message.created",
                            &crate::model::rfc3339(m.created_at),
                            crate::model::Message::from(m),
                        );
                        rows.push((event_id(created_at), hook, "message.created", body, created_at));
                    }
                    taken += last - first + 1;
                    done.push(id);
                }
                if done.is_empty() {
                    return Ok(());
                }
                Self::insert_events(tx, rows).await?;
                let mut q = QueryBuilder::<$db>::new("DELETE FROM webhook_message_ranges WHERE id IN (");
                let mut ids = q.separated(", ");
                for id in done {
                    ids.push_bind(id);
                }
                q.push(")");
                q.build().execute(&mut **tx).await?;
                Ok(())
            }

            /// Records attempts and moves their events on, inside `tx`.
            async fn finish_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                attempts: &[FinishedAttempt],
            ) -> Result<(), sqlx::Error> {
                for chunk in attempts.chunks(500) {
                    // One statement for every event's next state…
                    let mut q = QueryBuilder::<$db>::new(
                        "UPDATE webhook_events SET state = v.column2, next_attempt_at = v.column3, \
                         locked_until = NULL FROM (",
                    );
                    q.push_values(chunk, |mut b, a| {
                        let (state, next) = match a.outcome {
                            AttemptOutcome::Delivered => ("delivered", a.at),
                            AttemptOutcome::RetryAt(at) => ("due", at),
                            AttemptOutcome::Failed => ("failed", a.at),
                        };
                        b.push_bind(a.event.id.clone()).push_bind(state).push_bind(next);
                    });
                    q.push(") AS v WHERE webhook_events.id = v.column1");
                    q.build().execute(&mut **tx).await?;
                    // …and one for the attempts.
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO webhook_deliveries (webhook_id, event_id, event, attempt, \
                         status, error, at) ",
                    );
                    q.push_values(chunk, |mut b, a| {
                        b.push_bind(a.event.webhook_id)
                            .push_bind(a.event.id.clone())
                            .push_bind(a.event.event.clone())
                            .push_bind(a.event.attempts)
                            .push_bind(a.status)
                            .push_bind(a.error.clone())
                            .push_bind(a.at);
                    });
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// The `message.updated` event of a message changed inside `tx`.
            async fn message_updated(
                tx: &mut sqlx::Transaction<'static, $db>,
                routes: &WebhookRoutes,
                m: &Option<MessageRecord>,
            ) -> Result<(), sqlx::Error> {
                if let Some(m) = m.as_ref().filter(|_| routes.wants("message.updated")) {
                    let data = serde_json::to_value(crate::model::Message::from(m))
                        .expect("a message serializes");
                    Self::enqueue(tx, routes, [("message.updated", data)]).await?;
                }
                Ok(())
            }

            /// A room read inside `tx`, with its `room.created` / `room.updated` event.
            async fn room_event(
                tx: &mut sqlx::Transaction<'static, $db>,
                routes: &WebhookRoutes,
                id: RoomId,
                event: &'static str,
            ) -> Result<(), sqlx::Error> {
                if !routes.wants(event) {
                    return Ok(());
                }
                let room: Option<RoomRecord> = sqlx::query_as(concat!(
                    "SELECT ", room_columns!(), " FROM rooms r WHERE r.id = $1"
                ))
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
                if let Some(r) = room {
                    let data = serde_json::to_value(crate::model::Room::from(&r))
                        .expect("a room serializes");
                    Self::enqueue(tx, routes, [(event, data)]).await?;
                }
                Ok(())
            }

            /// Takes the room's next rev inside `tx` (and, on PostgreSQL, its row lock: changes
            /// to one room's messages are serialised). None when the room does not exist.
            async fn next_rev(
                tx: &mut sqlx::Transaction<'static, $db>,
                room: RoomId,
            ) -> Result<Option<i64>, sqlx::Error> {
                sqlx::query_scalar("UPDATE rooms SET rev = rev + 1 WHERE id = $1 RETURNING rev")
                    .bind(room)
                    .fetch_optional(&mut **tx)
                    .await
            }
        }

        timed_store_impl! {
            $store,
            plain {
                fn backend(&self) -> &'static str {
                    $backend
                }

                fn statements_on_own_thread(&self) -> bool {
                    $own_thread
                }

                fn webhook_routes(&self) -> &WebhookRoutes {
                    &self.hooks
                }
            }
            timed {
                async fn ping(&self) -> StoreResult<()> {
                    sqlx::query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                }

                async fn setting_init(&self, key: &str, value: &str) -> StoreResult<String> {
                    sqlx::query(
                        "INSERT INTO settings (key, value) VALUES ($1, $2) \
                         ON CONFLICT (key) DO NOTHING",
                    )
                    .bind(key)
                    .bind(value)
                    .execute(&self.pool)
                    .await?;
                    Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                        .bind(key)
                        .fetch_one(&self.pool)
                        .await?)
                }

                async fn create_user(&self, u: &UserRecord) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO users (id, username, display_name, password_hash, created_at, \
                         external, bot, admin) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(u.id)
                    .bind(&u.username)
                    .bind(&u.display_name)
                    .bind(&u.password_hash)
                    .bind(u.created_at)
                    .bind(u.external)
                    .bind(u.bot)
                    .bind(u.admin)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| conflict(e, "the username is taken"))?;
                    Ok(())
                }

                async fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
                    Ok(sqlx::query_as("SELECT * FROM users WHERE id = $1 AND deleted_at IS NULL")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?)
                }

                async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
                    Ok(sqlx::query_as(
                        "SELECT * FROM users WHERE username = $1 AND deleted_at IS NULL",
                    )
                        .bind(username)
                        .fetch_optional(&self.pool)
                        .await?)
                }

                async fn external_user(
                    &self,
                    issuer: &str,
                    subject: &str,
                ) -> StoreResult<Option<UserRecord>> {
                    Ok(sqlx::query_as(
                        "SELECT u.* FROM external_identities e JOIN users u ON u.id = e.user_id \
                         WHERE e.issuer = $1 AND e.subject = $2 AND u.deleted_at IS NULL",
                    )
                    .bind(issuer)
                    .bind(subject)
                    .fetch_optional(&self.pool)
                    .await?)
                }

                async fn create_external_user(
                    &self,
                    issuer: &str,
                    subject: &str,
                    user: &UserRecord,
                    usernames: &[String],
                ) -> StoreResult<Option<UserRecord>> {
                    let mut tx = self.begin_write().await?;
                    // A name held by another account is skipped without failing the transaction.
                    let mut created = None;
                    for name in usernames {
                        let done = sqlx::query(
                            "INSERT INTO users (id, username, display_name, password_hash, created_at, \
                             external, bot, admin) VALUES ($1, $2, $3, '', $4, TRUE, FALSE, $5) \
                             ON CONFLICT (username) DO NOTHING",
                        )
                        .bind(user.id)
                        .bind(name)
                        .bind(&user.display_name)
                        .bind(user.created_at)
                        .bind(user.admin)
                        .execute(&mut *tx)
                        .await?;
                        if done.rows_affected() == 1 {
                            created = Some(name.clone());
                            break;
                        }
                    }
                    let Some(username) = created else {
                        return Ok(None);
                    };
                    let claimed = sqlx::query(
                        "INSERT INTO external_identities (issuer, subject, user_id, created_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (issuer, subject) DO NOTHING",
                    )
                    .bind(issuer)
                    .bind(subject)
                    .bind(user.id)
                    .bind(user.created_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if !claimed {
                        // Another request made this identity's account first: that one it is.
                        tx.rollback().await?;
                        return self.external_user(issuer, subject).await;
                    }
                    tx.commit().await?;
                    Ok(Some(UserRecord {
                        username,
                        external: true,
                        password_hash: String::new(),
                        ..user.clone()
                    }))
                }

                async fn set_user_admin(&self, user: UserId, admin: bool) -> StoreResult<()> {
                    sqlx::query("UPDATE users SET admin = $2 WHERE id = $1")
                        .bind(user)
                        .bind(admin)
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn bots(&self) -> StoreResult<Vec<UserRecord>> {
                    Ok(sqlx::query_as(
                        "SELECT * FROM users WHERE bot = TRUE AND deleted_at IS NULL ORDER BY username",
                    )
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn insert_api_key(
                    &self,
                    key_id: &str,
                    user: UserId,
                    key_hash: &str,
                ) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO api_keys (id, user_id, key_hash, created_at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(key_id)
                    .bind(user)
                    .bind(key_hash)
                    .bind(crate::now_ms())
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn api_key_user(
                    &self,
                    key_hash: &str,
                ) -> StoreResult<Option<(String, UserRecord)>> {
                    let found: Option<KeyedUser> = sqlx::query_as(
                        "SELECT k.id AS key_id, u.* FROM api_keys k JOIN users u ON u.id = k.user_id \
                         WHERE k.key_hash = $1 AND u.deleted_at IS NULL",
                    )
                    .bind(key_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(found.map(|k| (k.key_id, k.user)))
                }

                async fn delete_api_key(&self, user: UserId, key_id: &str) -> StoreResult<bool> {
                    let done = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND user_id = $2")
                        .bind(key_id)
                        .bind(user)
                        .execute(&self.pool)
                        .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn reload_webhooks(&self) -> StoreResult<Vec<WebhookRecord>> {
                    let hooks = self.webhooks().await?;
                    self.hooks.set(&hooks);
                    Ok(hooks)
                }

                async fn create_webhook(&self, hook: &WebhookRecord) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO webhooks (id, url, events, secret, managed_by, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(hook.id)
                    .bind(&hook.url)
                    .bind(&hook.events)
                    .bind(&hook.secret)
                    .bind(&hook.managed_by)
                    .bind(hook.created_at)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn webhooks(&self) -> StoreResult<Vec<WebhookRecord>> {
                    Ok(sqlx::query_as("SELECT * FROM webhooks ORDER BY created_at, id")
                        .fetch_all(&self.pool)
                        .await?)
                }

                async fn update_webhook(&self, hook: &WebhookRecord) -> StoreResult<()> {
                    sqlx::query(
                        "UPDATE webhooks SET url = $2, events = $3, secret = $4, managed_by = $5 \
                         WHERE id = $1",
                    )
                    .bind(hook.id)
                    .bind(&hook.url)
                    .bind(&hook.events)
                    .bind(&hook.secret)
                    .bind(&hook.managed_by)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn webhook(&self, id: WebhookId) -> StoreResult<Option<WebhookRecord>> {
                    Ok(sqlx::query_as("SELECT * FROM webhooks WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?)
                }

                async fn delete_webhook(&self, id: WebhookId) -> StoreResult<bool> {
                    let mut tx = self.begin_write().await?;
                    for sql in [
                        "DELETE FROM webhook_message_ranges WHERE webhook_id = $1",
                        "DELETE FROM webhook_events WHERE webhook_id = $1",
                        "DELETE FROM webhook_deliveries WHERE webhook_id = $1",
                    ] {
                        sqlx::query(sql).bind(id).execute(&mut *tx).await?;
                    }
                    let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn claim_webhook_events(
                    &self,
                    finished: &[FinishedAttempt],
                    now: i64,
                    lease_ms: i64,
                    limit: i64,
                    busy: &[WebhookId],
                ) -> StoreResult<Vec<DueEvent>> {
                    let _turn = self.gate().await;
                    let mut tx = self.begin_write().await?;
                    Self::finish_in(&mut tx, finished).await?;
                    if limit == 0 {
                        tx.commit().await?;
                        return Ok(Vec::new());
                    }
                    Self::expand_message_ranges(&mut tx, limit).await?;
                    let mut q = QueryBuilder::<$db>::new(
                        "UPDATE webhook_events SET attempts = attempts + 1, locked_until = ",
                    );
                    q.push_bind(now + lease_ms);
                    q.push(
                        " WHERE id IN (SELECT id FROM webhook_events WHERE state = 'due' \
                         AND next_attempt_at <= ",
                    );
                    q.push_bind(now);
                    q.push(" AND (locked_until IS NULL OR locked_until <= ");
                    q.push_bind(now);
                    q.push(")");
                    if !busy.is_empty() {
                        q.push(" AND webhook_id NOT IN (");
                        let mut ids = q.separated(", ");
                        for id in busy {
                            ids.push_bind(*id);
                        }
                        q.push(")");
                    }
                    q.push(" ORDER BY next_attempt_at LIMIT ");
                    q.push_bind(limit);
                    q.push(concat!(
                        " ",
                        $claim_lock,
                        ") RETURNING id, webhook_id, event, body, created_at, attempts"
                    ));
                    let claimed: Vec<DueEvent> =
                        q.build_query_as().fetch_all(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(claimed)
                }

                async fn webhook_deliveries(
                    &self,
                    id: WebhookId,
                    limit: i64,
                ) -> StoreResult<Vec<DeliveryRecord>> {
                    Ok(sqlx::query_as(
                        "SELECT event_id, event, attempt, status, error, at FROM webhook_deliveries \
                         WHERE webhook_id = $1 ORDER BY at DESC, attempt DESC LIMIT $2",
                    )
                    .bind(id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn enqueue_webhook_events(
                    &self,
                    events: Vec<(&'static str, serde_json::Value)>,
                ) -> StoreResult<()> {
                    let mut tx = self.begin_write().await?;
                    Self::enqueue(&mut tx, &self.hooks, events).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn webhook_backlog(&self) -> StoreResult<(i64, Option<i64>)> {
                    let (due, oldest): (i64, Option<i64>) = sqlx::query_as(
                        "SELECT COUNT(*), MIN(created_at) FROM webhook_events WHERE state = 'due'",
                    )
                    .fetch_one(&self.pool)
                    .await?;
                    // Messages whose `message.created` events are not made yet are due too.
                    let (waiting, first): (Option<i64>, Option<i64>) = sqlx::query_as(
                        "SELECT CAST(SUM(last_seq - first_seq + 1) AS BIGINT), MIN(created_at) \
                         FROM webhook_message_ranges",
                    )
                    .fetch_one(&self.pool)
                    .await?;
                    let oldest = match (oldest, first) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    Ok((due + waiting.unwrap_or(0), oldest))
                }

                async fn prune_webhooks(&self, before: i64) -> StoreResult<u64> {
                    let events = sqlx::query(
                        "DELETE FROM webhook_events WHERE state <> 'due' AND next_attempt_at < $1",
                    )
                    .bind(before)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                    sqlx::query("DELETE FROM webhook_deliveries WHERE at < $1")
                        .bind(before)
                        .execute(&self.pool)
                        .await?;
                    Ok(events)
                }

                async fn insert_refresh(
                    &self,
                    token_hash: &str,
                    family: FamilyId,
                    user: UserId,
                    expires_at: i64,
                ) -> StoreResult<()> {
                    let now = crate::now_ms();
                    let mut tx = self.begin_write().await?;
                    sqlx::query(
                        "INSERT INTO token_families (id, user_id, revoked, created_at) \
                         VALUES ($1, $2, FALSE, $3)",
                    )
                    .bind(family)
                    .bind(user)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    Self::insert_token(&mut tx, token_hash, family, user, expires_at, now).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn spend_refresh(
                    &self,
                    token_hash: &str,
                    now: i64,
                    next: (&str, i64),
                ) -> StoreResult<RefreshOutcome> {
                    let mut tx = self.begin_write().await?;
                    let row: Option<(FamilyId, UserId, i64, bool, bool)> = sqlx::query_as(
                        "SELECT t.family_id, t.user_id, t.expires_at, t.spent, f.revoked \
                         FROM refresh_tokens t JOIN token_families f ON f.id = t.family_id \
                         WHERE t.token_hash = $1",
                    )
                    .bind(token_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((family, user, expires_at, spent, revoked)) = row else {
                        return Ok(RefreshOutcome::Invalid);
                    };
                    if revoked || expires_at <= now {
                        return Ok(RefreshOutcome::Invalid);
                    }
                    let claimed = !spent
                        && sqlx::query(
                            "UPDATE refresh_tokens SET spent = TRUE \
                             WHERE token_hash = $1 AND spent = FALSE",
                        )
                        .bind(token_hash)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1;
                    if !claimed {
                        // Theft detection: whoever holds this family's tokens loses them all.
                        sqlx::query("UPDATE token_families SET revoked = TRUE WHERE id = $1")
                            .bind(family)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        return Ok(RefreshOutcome::Reused);
                    }
                    Self::insert_token(&mut tx, next.0, family, user, next.1, now).await?;
                    tx.commit().await?;
                    Ok(RefreshOutcome::Valid { user, family })
                }

                async fn revoke_family_of(&self, token_hash: &str) -> StoreResult<bool> {
                    let done = sqlx::query(
                        "UPDATE token_families SET revoked = TRUE WHERE id = \
                         (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
                    )
                    .bind(token_hash)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn create_room(&self, r: &NewRoom) -> StoreResult<RoomRecord> {
                    let mut tx = self.begin_write().await?;
                    sqlx::query(
                        "INSERT INTO rooms (id, name, kind, topic, created_at, created_by) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(r.id)
                    .bind(&r.name)
                    .bind(r.kind.as_str())
                    .bind(&r.topic)
                    .bind(r.created_at)
                    .bind(r.created_by)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| conflict(e, "a room with this name exists"))?;
                    sqlx::query(
                        "INSERT INTO members (room_id, user_id, role, joined_at) \
                         VALUES ($1, $2, 'owner', $3)",
                    )
                    .bind(r.id)
                    .bind(r.created_by)
                    .bind(r.created_at)
                    .execute(&mut *tx)
                    .await?;
                    Self::room_event(&mut tx, &self.hooks, r.id, "room.created").await?;
                    tx.commit().await?;
                    self.room(r.id).await?.ok_or(StoreError::NotFound)
                }

                async fn room(&self, id: RoomId) -> StoreResult<Option<RoomRecord>> {
                    Ok(sqlx::query_as(concat!("SELECT ", room_columns!(), " FROM rooms r WHERE r.id = $1"))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?)
                }

                async fn room_by_name(&self, name: &str) -> StoreResult<Option<RoomRecord>> {
                    Ok(sqlx::query_as(concat!("SELECT ", room_columns!(), " FROM rooms r WHERE r.name = $1"))
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await?)
                }

                async fn last_seqs(&self, rooms: &[RoomId]) -> StoreResult<Vec<(RoomId, i64, i64)>> {
                    if rooms.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut q =
                        QueryBuilder::<$db>::new("SELECT id, last_seq, rev FROM rooms WHERE id IN (");
                    let mut sep = q.separated(", ");
                    for r in rooms {
                        sep.push_bind(*r);
                    }
                    q.push(")");
                    Ok(q.build_query_as().fetch_all(&self.pool).await?)
                }

                async fn users_by_ids(&self, ids: &[UserId]) -> StoreResult<Vec<UserRecord>> {
                    let Some(&first) = ids.first() else {
                        return Ok(Vec::new());
                    };
                    let mut q = QueryBuilder::<$db>::new(
                        "SELECT * FROM users WHERE deleted_at IS NULL AND id IN (",
                    );
                    let mut sep = q.separated(", ");
                    for i in 0..padded(ids.len()) {
                        sep.push_bind(ids.get(i).copied().unwrap_or(first));
                    }
                    q.push(")");
                    Ok(q.build_query_as().fetch_all(&self.pool).await?)
                }

                async fn users_by_names(&self, names: &[String]) -> StoreResult<Vec<UserRecord>> {
                    if names.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut q = QueryBuilder::<$db>::new(
                        "SELECT * FROM users WHERE deleted_at IS NULL AND username IN (",
                    );
                    let mut sep = q.separated(", ");
                    for n in names {
                        sep.push_bind(n.clone());
                    }
                    q.push(")");
                    Ok(q.build_query_as().fetch_all(&self.pool).await?)
                }

                async fn expire_messages(&self, now: i64, default_days: Option<i64>) -> StoreResult<u64> {
                    const DAY: i64 = 86_400_000;
                    let mut n = sqlx::query(
                        "UPDATE messages SET body = '', deleted = TRUE, attachments = NULL \
                         WHERE deleted = FALSE AND room_id IN \
                           (SELECT id FROM rooms WHERE retention_days IS NOT NULL) \
                         AND created_at < $1 - (SELECT retention_days FROM rooms WHERE id = messages.room_id) * $2",
                    )
                    .bind(now)
                    .bind(DAY)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                    if let Some(days) = default_days {
                        n += sqlx::query(
                            "UPDATE messages SET body = '', deleted = TRUE, attachments = NULL \
                             WHERE deleted = FALSE AND created_at < $1 AND room_id IN \
                               (SELECT id FROM rooms WHERE retention_days IS NULL)",
                        )
                        .bind(now - days.saturating_mul(DAY))
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                    }
                    Ok(n)
                }

                async fn rooms_of(&self, user: UserId) -> StoreResult<Vec<RoomListing>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ", room_columns!(), ", m.role, m.last_read_seq, \
                         (SELECT COUNT(*) FROM messages x WHERE x.room_id = r.id \
                            AND x.seq > m.last_read_seq AND x.user_id <> m.user_id \
                            AND x.deleted = FALSE) AS unread, \
                         (SELECT COUNT(*) FROM messages x WHERE x.room_id = r.id AND x.mentions_room \
                            AND x.seq > m.last_read_seq AND x.user_id <> m.user_id \
                            AND x.deleted = FALSE AND NOT EXISTS (SELECT 1 FROM blocks b \
                              WHERE b.user_id = m.user_id AND b.blocked_id = x.user_id)) + \
                         (SELECT COUNT(*) FROM mentions y JOIN messages x \
                            ON x.room_id = y.room_id AND x.seq = y.seq \
                            WHERE y.user_id = m.user_id AND y.room_id = r.id \
                            AND y.seq > m.last_read_seq AND x.user_id <> m.user_id \
                            AND x.deleted = FALSE AND x.mentions_room = FALSE) AS mentions \
                         FROM rooms r JOIN members m ON m.room_id = r.id \
                         WHERE m.user_id = $1 ORDER BY r.name"
                    ))
                    .bind(user)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn public_rooms_outside(&self, user: UserId) -> StoreResult<Vec<RoomRecord>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ", room_columns!(), " FROM rooms r WHERE r.kind = 'public' \
                         AND NOT EXISTS (SELECT 1 FROM members m \
                                         WHERE m.room_id = r.id AND m.user_id = $1) \
                         ORDER BY r.name"
                    ))
                    .bind(user)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn update_room(&self, id: RoomId, c: &RoomChanges<'_>) -> StoreResult<RoomRecord> {
                    let mut tx = self.begin_write().await?;
                    sqlx::query(
                        "UPDATE rooms SET topic = COALESCE($2, topic), kind = COALESCE($3, kind), \
                         slow_mode_seconds = COALESCE($4, slow_mode_seconds), \
                         read_only = COALESCE($5, read_only), \
                         retention_days = CASE WHEN $6 THEN $7 ELSE retention_days END, \
                         managed_by = CASE WHEN $8 THEN $9 ELSE managed_by END, \
                         archived = COALESCE($10, archived) WHERE id = $1",
                    )
                    .bind(id)
                    .bind(c.topic)
                    .bind(c.kind.map(RoomKind::as_str))
                    .bind(c.slow_mode_seconds)
                    .bind(c.read_only)
                    .bind(c.retention_days.is_some())
                    .bind(c.retention_days.flatten())
                    .bind(c.managed_by.is_some())
                    .bind(c.managed_by.flatten())
                    .bind(c.archived)
                    .execute(&mut *tx)
                    .await?;
                    Self::room_event(&mut tx, &self.hooks, id, "room.updated").await?;
                    tx.commit().await?;
                    self.room(id).await?.ok_or(StoreError::NotFound)
                }

                async fn archive_room(&self, id: RoomId) -> StoreResult<()> {
                    let mut tx = self.begin_write().await?;
                    sqlx::query("UPDATE rooms SET archived = TRUE WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    Self::room_event(&mut tx, &self.hooks, id, "room.updated").await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn direct_room(
                    &self,
                    a: UserId,
                    b: UserId,
                    now: i64,
                ) -> StoreResult<(RoomRecord, bool)> {
                    let key = dm_key(a, b);
                    let find = concat!("SELECT ", room_columns!(), " FROM rooms r WHERE r.dm_key = $1");
                    if let Some(r) = sqlx::query_as(find).bind(&key).fetch_optional(&self.pool).await? {
                        return Ok((r, false));
                    }
                    let id = RoomId::new();
                    let mut tx = self.begin_write().await?;
                    let created = sqlx::query(
                        "INSERT INTO rooms (id, name, kind, topic, created_at, created_by, dm_key) \
                         VALUES ($1, $2, 'direct', '', $3, $4, $5) ON CONFLICT (dm_key) DO NOTHING",
                    )
                    .bind(id)
                    .bind(format!("dm-{id}"))
                    .bind(now)
                    .bind(a)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if created {
                        for user in [a, b] {
                            sqlx::query(
                                "INSERT INTO members (room_id, user_id, role, joined_at) \
                                 VALUES ($1, $2, 'member', $3)",
                            )
                            .bind(id)
                            .bind(user)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                    tx.commit().await?;
                    let r = sqlx::query_as(find).bind(&key).fetch_one(&self.pool).await?;
                    Ok((r, created))
                }

                async fn member(&self, room: RoomId, user: UserId) -> StoreResult<Option<MemberRecord>> {
                    Ok(sqlx::query_as(
                        "SELECT room_id, user_id, role, last_read_seq, last_delivered_seq, muted_until \
                         FROM members WHERE room_id = $1 AND user_id = $2",
                    )
                    .bind(room)
                    .bind(user)
                    .fetch_optional(&self.pool)
                    .await?)
                }

                async fn add_member(&self, room: RoomId, user: UserId, role: Role) -> StoreResult<bool> {
                    let mut tx = self.begin_write().await?;
                    let done = sqlx::query(
                        "INSERT INTO members (room_id, user_id, role, joined_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (room_id, user_id) DO NOTHING",
                    )
                    .bind(room)
                    .bind(user)
                    .bind(role.as_str())
                    .bind(crate::now_ms())
                    .execute(&mut *tx)
                    .await?;
                    let added = done.rows_affected() == 1;
                    if added {
                        let data = serde_json::json!({"room": room, "user": user});
                        Self::enqueue(&mut tx, &self.hooks, [("member.joined", data)]).await?;
                    }
                    tx.commit().await?;
                    Ok(added)
                }

                async fn set_role(&self, room: RoomId, user: UserId, role: Role) -> StoreResult<bool> {
                    let done = sqlx::query("UPDATE members SET role = $3 WHERE room_id = $1 AND user_id = $2")
                        .bind(room)
                        .bind(user)
                        .bind(role.as_str())
                        .execute(&self.pool)
                        .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn remove_member(&self, room: RoomId, user: UserId) -> StoreResult<bool> {
                    let mut tx = self.begin_write().await?;
                    let done = sqlx::query("DELETE FROM members WHERE room_id = $1 AND user_id = $2")
                        .bind(room)
                        .bind(user)
                        .execute(&mut *tx)
                        .await?;
                    let removed = done.rows_affected() == 1;
                    if removed {
                        let data = serde_json::json!({"room": room, "user": user});
                        Self::enqueue(&mut tx, &self.hooks, [("member.left", data)]).await?;
                    }
                    tx.commit().await?;
                    Ok(removed)
                }

                async fn members(&self, room: RoomId) -> StoreResult<Vec<MemberUser>> {
                    Ok(sqlx::query_as(
                        "SELECT u.*, m.role, m.last_read_seq, m.last_delivered_seq FROM members m JOIN users u ON u.id = m.user_id \
                         WHERE m.room_id = $1 ORDER BY u.username",
                    )
                    .bind(room)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn commit_messages(&self, batch: &[NewMessage]) -> StoreResult<Committed> {
                    let _turn = self.gate().await;
                    let mut attempt = 1;
                    let mut look_up = false;
                    loop {
                        match self.commit_once(batch, look_up).await {
                            Ok(Some(outcomes)) => return Ok(outcomes),
                            // The bet lost (only the first attempt bets): a resend was in the
                            // batch, and the next attempt looks it up.
                            Ok(None) => look_up = true,
                            Err(e) if attempt < COMMIT_ATTEMPTS && is_retryable(&e) => {
                                attempt += 1;
                                tracing::debug!(error = %e, attempt, "commit raced another pod; retrying");
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }

                async fn messages_before(
                    &self,
                    room: RoomId,
                    before: i64,
                    limit: i64,
                ) -> StoreResult<Vec<MessageRecord>> {
                    let mut rows: Vec<MessageRecord> = sqlx::query_as(concat!(
                        "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
                         WHERE m.room_id = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3"
                    ))
                    .bind(room)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.reverse();
                    Ok(rows)
                }

                async fn messages_after(
                    &self,
                    room: RoomId,
                    after: i64,
                    limit: i64,
                ) -> StoreResult<Vec<MessageRecord>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
                         WHERE m.room_id = $1 AND m.seq > $2 ORDER BY m.seq ASC LIMIT $3"
                    ))
                    .bind(room)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn message(&self, room: RoomId, seq: i64) -> StoreResult<Option<MessageRecord>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
                         WHERE m.room_id = $1 AND m.seq = $2"
                    ))
                    .bind(room)
                    .bind(seq)
                    .fetch_optional(&self.pool)
                    .await?)
                }

                async fn insert_attachment(&self, a: &AttachmentRecord) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO attachments (id, room_id, user_id, filename, content_type, size, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(a.id)
                    .bind(a.room_id)
                    .bind(a.user_id)
                    .bind(&a.filename)
                    .bind(&a.content_type)
                    .bind(a.size)
                    .bind(a.created_at)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn attachment(&self, id: AttachmentId) -> StoreResult<Option<AttachmentRecord>> {
                    Ok(sqlx::query_as("SELECT * FROM attachments WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?)
                }

                async fn edit_message(
                    &self,
                    room: RoomId,
                    seq: i64,
                    body: &str,
                    now: i64,
                ) -> StoreResult<Option<MessageRecord>> {
                    let mut tx = self.begin_write().await?;
                    let Some(rev) = Self::next_rev(&mut tx, room).await? else {
                        return Ok(None);
                    };
                    let done = sqlx::query(
                        "UPDATE messages SET body = $3, edited_at = $4, rev = $5 \
                         WHERE room_id = $1 AND seq = $2 AND deleted = FALSE",
                    )
                    .bind(room)
                    .bind(seq)
                    .bind(body)
                    .bind(now)
                    .bind(rev)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        return Ok(None); // dropping the transaction gives the rev back
                    }
                    let m = Self::message_in(&mut tx, room, seq).await?;
                    Self::message_updated(&mut tx, &self.hooks, &m).await?;
                    tx.commit().await?;
                    Ok(m)
                }

                async fn delete_message(&self, room: RoomId, seq: i64) -> StoreResult<Option<MessageRecord>> {
                    let mut tx = self.begin_write().await?;
                    let Some(rev) = Self::next_rev(&mut tx, room).await? else {
                        return Ok(None);
                    };
                    // A deleted message keeps no reactions and no pin.
                    let done = sqlx::query(
                        "UPDATE messages SET body = '', deleted = TRUE, rev = $3, \
                         reactions = NULL, pinned_at = NULL \
                         WHERE room_id = $1 AND seq = $2 AND deleted = FALSE",
                    )
                    .bind(room)
                    .bind(seq)
                    .bind(rev)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        return Ok(None);
                    }
                    sqlx::query("DELETE FROM reactions WHERE room_id = $1 AND seq = $2")
                        .bind(room)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?;
                    let m = Self::message_in(&mut tx, room, seq).await?;
                    Self::message_updated(&mut tx, &self.hooks, &m).await?;
                    tx.commit().await?;
                    Ok(m)
                }

                async fn react(
                    &self,
                    room: RoomId,
                    seq: i64,
                    user: UserId,
                    emoji: &str,
                    active: bool,
                ) -> StoreResult<Change> {
                    let mut tx = self.begin_write().await?;
                    let Some(rev) = Self::next_rev(&mut tx, room).await? else {
                        return Ok(Change::NoMessage);
                    };
                    let live: Option<bool> = sqlx::query_scalar(
                        "SELECT deleted FROM messages WHERE room_id = $1 AND seq = $2",
                    )
                    .bind(room)
                    .bind(seq)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if live != Some(false) {
                        return Ok(Change::NoMessage);
                    }
                    let done = if active {
                        sqlx::query(
                            "INSERT INTO reactions (room_id, seq, emoji, user_id, rev) \
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        )
                        .bind(room)
                        .bind(seq)
                        .bind(emoji)
                        .bind(user)
                        .bind(rev)
                        .execute(&mut *tx)
                        .await?
                    } else {
                        sqlx::query(
                            "DELETE FROM reactions \
                             WHERE room_id = $1 AND seq = $2 AND emoji = $3 AND user_id = $4",
                        )
                        .bind(room)
                        .bind(seq)
                        .bind(emoji)
                        .bind(user)
                        .execute(&mut *tx)
                        .await?
                    };
                    if done.rows_affected() == 0 {
                        return Ok(Change::Unchanged); // the rollback gives the rev back
                    }
                    // Every (emoji, user) in order of reaction: the aggregate is built from it.
                    let all: Vec<(String, UserId)> = sqlx::query_as(
                        "SELECT emoji, user_id FROM reactions \
                         WHERE room_id = $1 AND seq = $2 ORDER BY rev",
                    )
                    .bind(room)
                    .bind(seq)
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut counts: Vec<ReactionCount> = Vec::new();
                    for (e, u) in all {
                        match counts.iter_mut().find(|c| c.emoji == e) {
                            Some(c) => {
                                c.count += 1;
                                if c.users.len() < MAX_REACTION_USERS {
                                    c.users.push(u);
                                }
                            }
                            None => counts.push(ReactionCount { emoji: e, count: 1, users: vec![u] }),
                        }
                    }
                    if counts.len() as i64 > MAX_EMOJI_PER_MESSAGE {
                        return Ok(Change::TooMany);
                    }
                    // `[]` rather than NULL once a message has had reactions: its row says it
                    // changed (a pod refilling after a bus outage looks for changed messages).
                    let aggregate = serde_json::to_string(&counts).expect("reactions serialize");
                    sqlx::query(
                        "UPDATE messages SET reactions = $3, rev = $4 WHERE room_id = $1 AND seq = $2",
                    )
                    .bind(room)
                    .bind(seq)
                    .bind(aggregate)
                    .bind(rev)
                    .execute(&mut *tx)
                    .await?;
                    let m = Self::message_in(&mut tx, room, seq).await?;
                    Self::message_updated(&mut tx, &self.hooks, &m).await?;
                    tx.commit().await?;
                    Ok(m.map_or(Change::NoMessage, |m| Change::Made(Box::new(m))))
                }

                async fn pin(&self, room: RoomId, seq: i64, at: Option<i64>) -> StoreResult<Change> {
                    let mut tx = self.begin_write().await?;
                    let Some(rev) = Self::next_rev(&mut tx, room).await? else {
                        return Ok(Change::NoMessage);
                    };
                    let current: Option<(bool, Option<i64>)> = sqlx::query_as(
                        "SELECT deleted, pinned_at FROM messages WHERE room_id = $1 AND seq = $2",
                    )
                    .bind(room)
                    .bind(seq)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let pinned = match current {
                        Some((false, pinned_at)) => pinned_at.is_some(),
                        _ => return Ok(Change::NoMessage),
                    };
                    if pinned == at.is_some() {
                        return Ok(Change::Unchanged);
                    }
                    if at.is_some() {
                        let count: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM messages WHERE room_id = $1 AND pinned_at IS NOT NULL",
                        )
                        .bind(room)
                        .fetch_one(&mut *tx)
                        .await?;
                        if count >= MAX_PINS {
                            return Ok(Change::TooMany);
                        }
                    }
                    sqlx::query(
                        "UPDATE messages SET pinned_at = $3, rev = $4 WHERE room_id = $1 AND seq = $2",
                    )
                    .bind(room)
                    .bind(seq)
                    .bind(at)
                    .bind(rev)
                    .execute(&mut *tx)
                    .await?;
                    let m = Self::message_in(&mut tx, room, seq).await?;
                    Self::message_updated(&mut tx, &self.hooks, &m).await?;
                    tx.commit().await?;
                    Ok(m.map_or(Change::NoMessage, |m| Change::Made(Box::new(m))))
                }

                async fn pins(&self, room: RoomId) -> StoreResult<Vec<MessageRecord>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
                         WHERE m.room_id = $1 AND m.pinned_at IS NOT NULL ORDER BY m.pinned_at DESC, m.seq DESC"
                    ))
                    .bind(room)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn changes(
                    &self,
                    room: RoomId,
                    since_rev: i64,
                    max_seq: i64,
                    limit: i64,
                ) -> StoreResult<Vec<MessageRecord>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
                         WHERE m.room_id = $1 AND m.rev > $2 AND m.seq <= $3 ORDER BY m.rev, m.seq LIMIT $4"
                    ))
                    .bind(room)
                    .bind(since_rev)
                    .bind(max_seq)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn room_gates(
                    &self,
                    asks: &[(RoomId, UserId)],
                ) -> StoreResult<Vec<Option<(RoomGate, Option<MemberRecord>)>>> {
                    let mut out = vec![None; asks.len()];
                    if asks.is_empty() {
                        return Ok(out);
                    }
                    let mut q = QueryBuilder::<$db>::new("WITH q(ask, room_id, user_id) AS (VALUES ");
                    for i in 0..padded(asks.len()) {
                        // Padding repeats the first ask under index -1.
                        let (ask, (room, user)) = match asks.get(i) {
                            Some(a) => (i as i64, *a),
                            None => (-1, asks[0]),
                        };
                        q.push(if i == 0 { "(" } else { ", (" });
                        q.push_bind(ask).push(", ").push_bind(room).push(", ").push_bind(user).push(")");
                    }
                    q.push(
                        ") SELECT q.ask, r.kind, r.last_seq, r.rev, r.archived, r.read_only, r.slow_mode_seconds, \
                         m.role AS member_role, m.last_read_seq AS member_last_read_seq, \
                         m.last_delivered_seq AS member_last_delivered_seq, m.muted_until AS member_muted_until \
                         FROM q JOIN rooms r ON r.id = q.room_id \
                         LEFT JOIN members m ON m.room_id = q.room_id AND m.user_id = q.user_id",
                    );
                    let rows: Vec<GateRow> = q.build_query_as().fetch_all(&self.pool).await?;
                    for row in rows.into_iter().filter(|r| r.ask >= 0) {
                        let i = row.ask as usize;
                        let (room_id, user_id) = asks[i];
                        let member = match row.member_role {
                            Some(role) => Some(MemberRecord {
                                room_id,
                                user_id,
                                role: Role::parse(&role).ok_or_else(|| {
                                    StoreError::Other(sqlx::Error::Decode(format!("unknown role {role:?}").into()))
                                })?,
                                last_read_seq: row.member_last_read_seq.unwrap_or(0),
                                last_delivered_seq: row.member_last_delivered_seq.unwrap_or(0),
                                muted_until: row.member_muted_until,
                            }),
                            None => None,
                        };
                        out[i] = Some((row.gate, member));
                    }
                    Ok(out)
                }

                async fn messages_between(&self, spans: &[Span]) -> StoreResult<Vec<Vec<MessageRecord>>> {
                    if spans.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut q = spans_query::<$db>(spans, "m.seq > q.after", "m.seq");
                    let rows = q.build_query_as().fetch_all(&self.pool).await?;
                    Ok(by_span(rows, spans.len()))
                }

                async fn changes_between(&self, spans: &[Span]) -> StoreResult<Vec<Vec<MessageRecord>>> {
                    if spans.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut q = spans_query::<$db>(spans, "m.rev > q.after", "m.rev, m.seq");
                    let rows = q.build_query_as().fetch_all(&self.pool).await?;
                    Ok(by_span(rows, spans.len()))
                }

                async fn thread_replies(
                    &self,
                    room: RoomId,
                    root: i64,
                    after: i64,
                    limit: i64,
                ) -> StoreResult<Vec<MessageRecord>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
                         WHERE m.room_id = $1 AND m.thread = $2 AND m.seq > $3 ORDER BY m.seq LIMIT $4"
                    ))
                    .bind(room)
                    .bind(root)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn search_room(&self, room: RoomId, query: &str, limit: i64) -> StoreResult<Vec<MessageRecord>> {
                    Ok(sqlx::query_as($search_room)
                        .bind($search_query(query))
                        .bind(room)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?)
                }

                async fn search_rooms_of(&self, user: UserId, query: &str, limit: i64) -> StoreResult<Vec<MessageRecord>> {
                    Ok(sqlx::query_as($search_rooms_of)
                        .bind($search_query(query))
                        .bind(user)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?)
                }

                async fn set_ban(&self, user: UserId, until: Option<i64>, reason: Option<&str>) -> StoreResult<bool> {
                    let done = sqlx::query("UPDATE users SET banned_until = $2, ban_reason = $3 WHERE id = $1")
                        .bind(user)
                        .bind(until)
                        .bind(reason)
                        .execute(&self.pool)
                        .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn set_mute(&self, user: UserId, until: Option<i64>) -> StoreResult<bool> {
                    let done = sqlx::query("UPDATE users SET muted_until = $2 WHERE id = $1")
                        .bind(user)
                        .bind(until)
                        .execute(&self.pool)
                        .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn set_member_mute(&self, room: RoomId, user: UserId, until: Option<i64>) -> StoreResult<bool> {
                    let done = sqlx::query("UPDATE members SET muted_until = $3 WHERE room_id = $1 AND user_id = $2")
                        .bind(room)
                        .bind(user)
                        .bind(until)
                        .execute(&self.pool)
                        .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn revoke_user_tokens(&self, user: UserId) -> StoreResult<()> {
                    sqlx::query("UPDATE token_families SET revoked = TRUE WHERE user_id = $1")
                        .bind(user)
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn find_users(&self, query: &str, limit: i64) -> StoreResult<Vec<UserRecord>> {
                    let pattern = format!("%{}%", query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
                    Ok(sqlx::query_as(
                        "SELECT * FROM users WHERE username LIKE $1 ESCAPE '\\' AND deleted_at IS NULL \
                         ORDER BY username LIMIT $2",
                    )
                    .bind(pattern)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn all_rooms(&self) -> StoreResult<Vec<RoomRecord>> {
                    Ok(sqlx::query_as(concat!("SELECT ", room_columns!(), " FROM rooms r ORDER BY r.name"))
                        .fetch_all(&self.pool)
                        .await?)
                }

                async fn totals(&self) -> StoreResult<Totals> {
                    let (users, rooms, messages): (i64, i64, i64) = sqlx::query_as(
                        "SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM rooms), \
                         (SELECT COUNT(*) FROM messages)",
                    )
                    .fetch_one(&self.pool)
                    .await?;
                    Ok(Totals { users, rooms, messages })
                }

                async fn set_block(
                    &self,
                    user: UserId,
                    other: UserId,
                    blocked: bool,
                    now: i64,
                ) -> StoreResult<bool> {
                    let done = if blocked {
                        sqlx::query(
                            "INSERT INTO blocks (user_id, blocked_id, created_at) VALUES ($1, $2, $3) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(user)
                        .bind(other)
                        .bind(now)
                        .execute(&self.pool)
                        .await?
                    } else {
                        sqlx::query("DELETE FROM blocks WHERE user_id = $1 AND blocked_id = $2")
                            .bind(user)
                            .bind(other)
                            .execute(&self.pool)
                            .await?
                    };
                    Ok(done.rows_affected() == 1)
                }

                async fn blocked_users(&self, user: UserId) -> StoreResult<Vec<UserRecord>> {
                    Ok(sqlx::query_as(
                        "SELECT u.* FROM blocks b JOIN users u ON u.id = b.blocked_id \
                         WHERE b.user_id = $1 ORDER BY u.username",
                    )
                    .bind(user)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn delete_user(
                    &self,
                    user: UserId,
                    erase: bool,
                    now: i64,
                ) -> StoreResult<Option<Vec<Erased>>> {
                    let mut tx = self.begin_write().await?;
                    let done = sqlx::query(
                        "UPDATE users SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
                    )
                    .bind(user)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        return Ok(None);
                    }
                    for sql in [
                        "UPDATE token_families SET revoked = TRUE WHERE user_id = $1",
                        "DELETE FROM members WHERE user_id = $1",
                        "DELETE FROM blocks WHERE user_id = $1 OR blocked_id = $1",
                        "DELETE FROM mentions WHERE user_id = $1",
                        "DELETE FROM api_keys WHERE user_id = $1",
                        "DELETE FROM external_identities WHERE user_id = $1",
                    ] {
                        sqlx::query(sql).bind(user).execute(&mut *tx).await?;
                    }
                    let mut erased = Vec::new();
                    if erase {
                        let rows: Vec<(RoomId, i64, MessageId)> = sqlx::query_as(
                            "SELECT room_id, seq, id FROM messages \
                             WHERE user_id = $1 AND deleted = FALSE ORDER BY room_id, seq",
                        )
                        .bind(user)
                        .fetch_all(&mut *tx)
                        .await?;
                        let mut by_room: BTreeMap<RoomId, Vec<(i64, MessageId)>> = BTreeMap::new();
                        for (room, seq, id) in rows {
                            by_room.entry(room).or_default().push((seq, id));
                        }
                        // Each erased message is one change: the room's rev moves by their count.
                        for (room, msgs) in by_room {
                            let rev: i64 = sqlx::query_scalar(
                                "UPDATE rooms SET rev = rev + $2 WHERE id = $1 RETURNING rev",
                            )
                            .bind(room)
                            .bind(msgs.len() as i64)
                            .fetch_one(&mut *tx)
                            .await?;
                            let first = rev - msgs.len() as i64 + 1;
                            for chunk in msgs.chunks(500).enumerate() {
                                let (c, part) = chunk;
                                let base = first + (c * 500) as i64;
                                let mut q = QueryBuilder::<$db>::new(
                                    "UPDATE messages SET body = '', deleted = TRUE, reactions = NULL, \
                                     pinned_at = NULL, rev = v.column2 FROM (",
                                );
                                q.push_values(part.iter().enumerate(), |mut b, (k, (seq, _))| {
                                    b.push_bind(*seq).push_bind(base + k as i64);
                                });
                                q.push(") AS v WHERE messages.room_id = ");
                                q.push_bind(room);
                                q.push(" AND messages.seq = v.column1");
                                q.build().execute(&mut *tx).await?;
                                for (k, (seq, id)) in part.iter().enumerate() {
                                    erased.push(Erased { room, seq: *seq, id: *id, rev: base + k as i64 });
                                }
                            }
                            sqlx::query("DELETE FROM reactions WHERE room_id = $1 AND seq IN \
                                         (SELECT seq FROM messages WHERE room_id = $1 AND user_id = $2)")
                                .bind(room)
                                .bind(user)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                    tx.commit().await?;
                    Ok(Some(erased))
                }

                async fn messages_by(
                    &self,
                    user: UserId,
                    after: (i64, MessageId),
                    limit: i64,
                ) -> StoreResult<Vec<MessageRecord>> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
                         WHERE m.user_id = $1 AND (m.created_at > $2 OR (m.created_at = $2 AND m.id > $3)) \
                         ORDER BY m.created_at, m.id LIMIT $4"
                    ))
                    .bind(user)
                    .bind(after.0)
                    .bind(after.1)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn blocked_in(&self, room: RoomId, user: UserId) -> StoreResult<bool> {
                    let found: Option<bool> = sqlx::query_scalar(
                        "SELECT TRUE FROM members m JOIN blocks b \
                         ON b.user_id = m.user_id AND b.blocked_id = $2 \
                         WHERE m.room_id = $1 LIMIT 1",
                    )
                    .bind(room)
                    .bind(user)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(found.is_some())
                }

                async fn blockers_of(&self, author: UserId, users: &[UserId]) -> StoreResult<Vec<UserId>> {
                    if users.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut q = QueryBuilder::<$db>::new(
                        "SELECT user_id FROM blocks WHERE blocked_id = ",
                    );
                    q.push_bind(author);
                    q.push(" AND user_id IN (");
                    let mut sep = q.separated(", ");
                    for u in users {
                        sep.push_bind(*u);
                    }
                    q.push(")");
                    Ok(q.build_query_scalar().fetch_all(&self.pool).await?)
                }

                async fn move_marker(
                    &self,
                    room: RoomId,
                    user: UserId,
                    marker: Marker,
                    seq: i64,
                ) -> StoreResult<bool> {
                    let sql = match marker {
                        Marker::Read => {
                            "UPDATE members SET last_read_seq = $1 \
                             WHERE room_id = $2 AND user_id = $3 AND last_read_seq < $1 \
                             AND $1 <= (SELECT last_seq FROM rooms WHERE id = $2)"
                        }
                        Marker::Delivered => {
                            "UPDATE members SET last_delivered_seq = $1 \
                             WHERE room_id = $2 AND user_id = $3 AND last_delivered_seq < $1 \
                             AND $1 <= (SELECT last_seq FROM rooms WHERE id = $2)"
                        }
                    };
                    let done = sqlx::query(sql)
                        .bind(seq)
                        .bind(room)
                        .bind(user)
                        .execute(&self.pool)
                        .await?;
                    Ok(done.rows_affected() == 1)
                }
            }
        }
    };
}

/// PostgreSQL parses free text itself (`plainto_tsquery`).
fn plain_text(q: &str) -> String {
    q.to_string()
}

/// FTS5 has a query language; quoting every word makes user input plain words (all required).
fn fts5_words(q: &str) -> String {
    q.split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

sql_store!(
    PgStore, Postgres, "postgres",
    begin_write: "BEGIN",
    // Its connections are sockets of the runtime that opened them.
    statements_on_own_thread: false,
    claim_lock: "FOR UPDATE SKIP LOCKED",
    insert_messages: insert_messages_unnest,
    search_query: plain_text,
    search_room: concat!(
        "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
         WHERE m.search @@ plainto_tsquery('simple', $1) AND m.room_id = $2 AND m.deleted = FALSE \
         ORDER BY ts_rank(m.search, plainto_tsquery('simple', $1)) DESC, m.seq DESC LIMIT $3"
    ),
    search_rooms_of: concat!(
        "SELECT ", message_columns!(), " FROM messages m JOIN users u ON u.id = m.user_id \
         WHERE m.search @@ plainto_tsquery('simple', $1) AND m.deleted = FALSE \
         AND m.room_id IN (SELECT room_id FROM members WHERE user_id = $2) \
         ORDER BY ts_rank(m.search, plainto_tsquery('simple', $1)) DESC, m.created_at DESC LIMIT $3"
    ),
);

sql_store!(
    SqliteStore, Sqlite, "sqlite",
    begin_write: "BEGIN IMMEDIATE",
    // sqlx runs each SQLite connection's statements on a thread of its own.
    statements_on_own_thread: true,
    // One process writes SQLite: nothing to skip.
    claim_lock: "",
    insert_messages: insert_messages_values,
    search_query: fts5_words,
    search_room: concat!(
        "SELECT ", message_columns!(), " FROM messages_fts f \
         JOIN messages m ON m.rowid = f.rowid JOIN users u ON u.id = m.user_id \
         WHERE messages_fts MATCH $1 AND m.room_id = $2 AND m.deleted = FALSE \
         ORDER BY bm25(messages_fts), m.seq DESC LIMIT $3"
    ),
    search_rooms_of: concat!(
        "SELECT ", message_columns!(), " FROM messages_fts f \
         JOIN messages m ON m.rowid = f.rowid JOIN users u ON u.id = m.user_id \
         WHERE messages_fts MATCH $1 AND m.deleted = FALSE \
         AND m.room_id IN (SELECT room_id FROM members WHERE user_id = $2) \
         ORDER BY bm25(messages_fts), m.created_at DESC LIMIT $3"
    ),
);
