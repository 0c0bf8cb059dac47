//! Durable state behind one trait, [`Store`], with a SQLite ([`SqliteStore`]) and a PostgreSQL
//! ([`PgStore`]) implementation generated from the same SQL in [`sql`].
//!
//! This module owns the schema (see `migrations/`) and every query. It knows nothing of HTTP,
//! WebSockets or the bus. Times are stored as milliseconds since the epoch (BIGINT) so that both
//! databases share one dialect.

pub mod blobs;
mod sql;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::ids::WebhookId;
use crate::ids::{AttachmentId, FamilyId, MessageId, RoomId, UserId};

pub use sql::{PgStore, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was broken; the text says which, in the client's words.
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    /// The database cannot be reached: the caller should fail fast and retry later.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error(transparent)]
    Other(sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            sqlx::Error::Database(ref db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")) =>
            {
                // PostgreSQL shutting down (57P01..03) or connection exceptions (08xxx).
                StoreError::Unavailable(e)
            }
            e => StoreError::Other(e),
        }
    }
}

impl StoreError {
    fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Other(sqlx::Error::Database(db)) if db.is_unique_violation())
    }
}

/// Turns a unique violation into a `Conflict` with the client-facing text.
pub(crate) fn conflict(e: sqlx::Error, what: &str) -> StoreError {
    let e = StoreError::from(e);
    if e.is_unique_violation() {
        StoreError::Conflict(what.to_string())
    } else {
        e
    }
}

/// A column value the code does not know (a row written by a newer release, or by hand).
pub use confab_protocol::UnknownValue;
pub use confab_protocol::{ReactionCount, Role, RoomKind};

#[derive(sqlx::FromRow, Clone, Debug)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub created_at: i64,
    /// Banned until this time (ms); `i64::MAX` for good. `None`: not banned.
    pub banned_until: Option<i64>,
    pub ban_reason: Option<String>,
    /// Muted everywhere until this time (ms).
    pub muted_until: Option<i64>,
    /// Created by a token of the OpenID provider: it has no password.
    pub external: bool,
    /// A bot: it authenticates with API keys, never a password.
    pub bot: bool,
    /// An admin by its own account (an admin bot, a member of the provider's admin group),
    /// beside the usernames of `--admins`.
    pub admin: bool,
}

/// A registered webhook endpoint.
#[derive(sqlx::FromRow, Clone, Debug)]
pub struct WebhookRecord {
    pub id: WebhookId,
    pub url: String,
    /// JSON array of event types.
    pub events: String,
    pub secret: String,
    pub managed_by: Option<String>,
    pub created_at: i64,
}

impl WebhookRecord {
    pub fn event_list(&self) -> Vec<String> {
        serde_json::from_str(&self.events).unwrap_or_default()
    }
}

/// Which webhooks want which events, as the store writes its outbox: loaded from the
/// `webhooks` table at start and again whenever any pod changes it.
#[derive(Clone, Default)]
pub struct WebhookRoutes(Arc<std::sync::RwLock<Vec<Route>>>);

/// A webhook and the event types it wants.
type Route = (WebhookId, Vec<String>);

impl WebhookRoutes {
    pub fn set(&self, hooks: &[WebhookRecord]) {
        *self.0.write().expect("routes lock") =
            hooks.iter().map(|h| (h.id, h.event_list())).collect();
    }

    /// The webhooks subscribed to `event`.
    pub fn subscribers(&self, event: &str) -> Vec<WebhookId> {
        self.0
            .read()
            .expect("routes lock")
            .iter()
            .filter(|(_, events)| events.iter().any(|e| e == event))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether any webhook wants `event`: callers build an event's data only then.
    pub fn wants(&self, event: &str) -> bool {
        self.0
            .read()
            .expect("routes lock")
            .iter()
            .any(|(_, events)| events.iter().any(|e| e == event))
    }
}

/// An outbox event claimed for one delivery attempt.
#[derive(sqlx::FromRow, Clone, Debug)]
pub struct DueEvent {
    pub id: String,
    pub webhook_id: WebhookId,
    pub event: String,
    pub body: String,
    pub created_at: i64,
    /// This attempt's number (1 for the first).
    pub attempts: i64,
}

/// One attempt as `GET …/deliveries` shows it.
#[derive(sqlx::FromRow, Clone, Debug)]
pub struct DeliveryRecord {
    pub event_id: String,
    pub event: String,
    pub attempt: i64,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub at: i64,
}

/// One finished delivery attempt, to record.
#[derive(Clone, Debug)]
pub struct FinishedAttempt {
    pub event: DueEvent,
    pub outcome: AttemptOutcome,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub at: i64,
}

/// What became of an attempt: the event's next state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttemptOutcome {
    Delivered,
    /// Try again at this time (ms).
    RetryAt(i64),
    /// Given up on: retried for the whole retry window.
    Failed,
}

/// An API key's id with the account it belongs to.
#[derive(sqlx::FromRow)]
pub(crate) struct KeyedUser {
    pub key_id: String,
    #[sqlx(flatten)]
    pub user: UserRecord,
}

/// A message erased with its author's account.
#[derive(Clone, Debug, PartialEq)]
pub struct Erased {
    pub room: RoomId,
    pub seq: i64,
    pub id: MessageId,
    pub rev: i64,
}

impl UserRecord {
    /// A new local account with no ban, mute or special rights.
    pub fn new(username: String, display_name: String, password_hash: String) -> Self {
        UserRecord {
            id: UserId::new(),
            username,
            display_name,
            password_hash,
            created_at: crate::now_ms(),
            banned_until: None,
            ban_reason: None,
            muted_until: None,
            external: false,
            bot: false,
            admin: false,
        }
    }

    pub fn banned_at(&self, now: i64) -> bool {
        self.banned_until.is_some_and(|t| t > now)
    }
    pub fn muted_at(&self, now: i64) -> bool {
        self.muted_until.is_some_and(|t| t > now)
    }
}

#[derive(sqlx::FromRow, Clone, Debug)]
pub struct RoomRecord {
    pub id: RoomId,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub kind: RoomKind,
    pub topic: String,
    pub created_at: i64,
    pub created_by: UserId,
    pub last_seq: i64,
    /// The room's change counter: every committed change to its messages adds one.
    pub rev: i64,
    pub archived: bool,
    pub managed_by: Option<String>,
    pub member_count: i64,
    pub slow_mode_seconds: i64,
    pub read_only: bool,
    pub retention_days: Option<i64>,
}

#[derive(sqlx::FromRow, Clone, Debug)]
pub struct RoomListing {
    #[sqlx(flatten)]
    pub room: RoomRecord,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub last_read_seq: i64,
    pub unread: i64,
    /// Unread messages by others that mention the member or `@room`.
    pub mentions: i64,
}

#[derive(sqlx::FromRow, Clone, Debug)]
pub struct MemberRecord {
    pub room_id: RoomId,
    pub user_id: UserId,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub last_read_seq: i64,
    pub last_delivered_seq: i64,
    pub muted_until: Option<i64>,
}

/// What a subscribe needs of a room: who may read it, how posting is ruled, and where its
/// history stands. Read in one query for many subscribes (`Store::room_gates`).
#[derive(sqlx::FromRow, Clone, Debug)]
pub struct RoomGate {
    #[sqlx(try_from = "String")]
    pub kind: RoomKind,
    pub last_seq: i64,
    pub rev: i64,
    pub archived: bool,
    pub read_only: bool,
    pub slow_mode_seconds: i64,
}

impl From<&RoomRecord> for RoomGate {
    fn from(r: &RoomRecord) -> Self {
        RoomGate {
            kind: r.kind,
            last_seq: r.last_seq,
            rev: r.rev,
            archived: r.archived,
            read_only: r.read_only,
            slow_mode_seconds: r.slow_mode_seconds,
        }
    }
}

/// A range of one room's messages asked for in a batch: `after < seq <= upto` for
/// `Store::messages_between`, `rev > after` and `seq <= upto` for `Store::changes_between`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub room: RoomId,
    pub after: i64,
    pub upto: i64,
}

#[derive(sqlx::FromRow, Clone, Debug)]
pub struct MemberUser {
    #[sqlx(flatten)]
    pub user: UserRecord,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub last_read_seq: i64,
    pub last_delivered_seq: i64,
}

#[derive(sqlx::FromRow, Clone, Debug, PartialEq)]
pub struct MessageRecord {
    pub id: MessageId,
    pub room_id: RoomId,
    pub seq: i64,
    pub user_id: UserId,
    pub username: String,
    pub body: String,
    pub created_at: i64,
    pub edited_at: Option<i64>,
    pub deleted: bool,
    pub client_id: Option<String>,
    pub reply_to: Option<i64>,
    /// The message's attachments as a JSON array of `Attachment` objects.
    pub attachments: Option<String>,
    /// The room's `rev` at the message's last change.
    pub rev: i64,
    /// The root's seq, for a reply in a thread.
    pub thread: Option<i64>,
    /// On a thread's root: a [`ThreadSummary`] as JSON.
    pub thread_summary: Option<String>,
    /// The reactions aggregate as a JSON array of [`ReactionCount`].
    pub reactions: Option<String>,
    /// Mentioned members' ids, as a JSON array, in order of first appearance.
    pub mentions: Option<String>,
    pub mentions_room: bool,
    pub pinned_at: Option<i64>,
}

/// A thread root's summary, kept by the writer in the transaction of each reply.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ThreadSummary {
    pub reply_count: i64,
    pub last_reply_seq: i64,
    /// Milliseconds since the epoch.
    pub last_reply_at: i64,
    /// Repliers in order of their first reply, at most [`MAX_THREAD_PARTICIPANTS`].
    pub participants: Vec<UserId>,
}

pub const MAX_THREAD_PARTICIPANTS: usize = 10;
/// Distinct emoji one message may carry.
pub const MAX_EMOJI_PER_MESSAGE: i64 = 20;
/// Users listed per emoji in a message's aggregate.
pub const MAX_REACTION_USERS: usize = 50;
/// Pinned messages per room.
pub const MAX_PINS: i64 = 50;

/// What became of a change to an existing message (a reaction, a pin).
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Committed: the message as it is now, with its new `rev`.
    Made(Box<MessageRecord>),
    /// Already so: nothing written, no `rev` taken.
    Unchanged,
    /// No such message (or it is deleted).
    NoMessage,
    /// A limit would be passed (distinct emoji, pins).
    TooMany,
}

#[derive(sqlx::FromRow, Clone, Debug, PartialEq)]
pub struct AttachmentRecord {
    pub id: AttachmentId,
    pub room_id: RoomId,
    pub user_id: UserId,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    pub created_at: i64,
}

/// A message waiting for the group commit; `seq` is allocated when it is written.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub id: MessageId,
    pub room_id: RoomId,
    pub user_id: UserId,
    pub username: String,
    pub body: String,
    pub client_id: Option<String>,
    pub reply_to: Option<i64>,
    pub created_at: i64,
    /// JSON array of `Attachment` objects, checked by the caller.
    pub attachments: Option<String>,
    /// A reply in the thread of this root (checked by the caller).
    pub thread: Option<i64>,
    /// `@names` in the body; those of members become the message's mentions at commit.
    pub mention_names: Vec<String>,
    pub mentions_room: bool,
}

/// A batch's outcomes, one per message in order, and the thread roots whose summary changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Committed {
    pub outcomes: Vec<CommitOutcome>,
    pub roots: Vec<MessageRecord>,
}

/// What became of one message of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum CommitOutcome {
    /// Written now with a fresh `seq`.
    New(MessageRecord),
    /// The same `(user, client_id)` was committed before: this is that message.
    Duplicate(MessageRecord),
    /// Not written, for a reason the sender is told (an archived or missing room).
    Rejected(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    Valid {
        user: UserId,
        family: FamilyId,
    },
    /// A spent token came back: its family is now revoked.
    Reused,
    Invalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    Read,
    Delivered,
}

/// Changes to a room; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct RoomChanges<'a> {
    pub topic: Option<&'a str>,
    pub kind: Option<RoomKind>,
    pub slow_mode_seconds: Option<i64>,
    pub read_only: Option<bool>,
    /// `Some(x)` sets the field to `x` (which may be `None`).
    pub retention_days: Option<Option<i64>>,
    pub managed_by: Option<Option<&'a str>>,
    pub archived: Option<bool>,
}

impl RoomChanges<'_> {
    /// Whether applying these changes would alter `r`: the fields set here that differ.
    pub fn alter(&self, r: &RoomRecord) -> bool {
        fn differs<T: PartialEq>(wanted: Option<T>, current: T) -> bool {
            wanted.is_some_and(|w| w != current)
        }
        differs(self.topic, r.topic.as_str())
            || differs(self.kind, r.kind)
            || differs(self.slow_mode_seconds, r.slow_mode_seconds)
            || differs(self.read_only, r.read_only)
            || differs(self.retention_days, r.retention_days)
            || differs(self.managed_by, r.managed_by.as_deref())
            || differs(self.archived, r.archived)
    }
}

/// Totals for the admin stats.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub users: i64,
    pub rooms: i64,
    pub messages: i64,
}

#[derive(Clone, Debug)]
pub struct NewRoom {
    pub id: RoomId,
    pub name: String,
    pub kind: RoomKind,
    pub topic: String,
    pub created_by: UserId,
    pub created_at: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Whether statements run on a thread of the driver's own, reached by handoffs (SQLite),
    /// rather than on the caller's runtime (PostgreSQL's sockets): the writer then gets a
    /// runtime of its own.
    fn statements_on_own_thread(&self) -> bool;
    async fn ping(&self) -> StoreResult<()>;

    /// Stores `value` under `key` unless a value is there; returns the value in force.
    async fn setting_init(&self, key: &str, value: &str) -> StoreResult<String>;

    async fn create_user(&self, user: &UserRecord) -> StoreResult<()>;
    async fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>>;
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    /// The account of an (issuer, subject) of the OpenID provider, if it has one.
    async fn external_user(&self, issuer: &str, subject: &str) -> StoreResult<Option<UserRecord>>;
    /// Creates the account of an (issuer, subject) under the first free username of
    /// `usernames`; when another request created it first, returns that one. None when every
    /// candidate name is taken.
    async fn create_external_user(
        &self,
        issuer: &str,
        subject: &str,
        user: &UserRecord,
        usernames: &[String],
    ) -> StoreResult<Option<UserRecord>>;
    /// Grants or withdraws the admin right held by the account itself.
    async fn set_user_admin(&self, user: UserId, admin: bool) -> StoreResult<()>;
    /// Bots that were not removed, by username.
    async fn bots(&self) -> StoreResult<Vec<UserRecord>>;
    /// Stores the SHA-256 of a new API key of `user`.
    async fn insert_api_key(&self, key_id: &str, user: UserId, key_hash: &str) -> StoreResult<()>;
    /// The key id and account of an API key, by the key's SHA-256 (an equality lookup on the
    /// hash, so its time says nothing about how much of a guess was right).
    async fn api_key_user(&self, key_hash: &str) -> StoreResult<Option<(String, UserRecord)>>;
    /// Revokes one key of `user`; false when it has no such key.
    async fn delete_api_key(&self, user: UserId, key_id: &str) -> StoreResult<bool>;

    /// Starts a token family with its first refresh token (at login); `spend_refresh`
    /// extends it.
    async fn insert_refresh(
        &self,
        token_hash: &str,
        family: FamilyId,
        user: UserId,
        expires_at: i64,
    ) -> StoreResult<()>;
    /// Spends a refresh token once and, in the same transaction, stores its successor
    /// (`next`: hash and expiry) in the same family, so a failure cannot leave a session with a
    /// spent token and no new one. A second presentation revokes the family.
    async fn spend_refresh(
        &self,
        token_hash: &str,
        now: i64,
        next: (&str, i64),
    ) -> StoreResult<RefreshOutcome>;
    /// Revokes the family the token belongs to (logout). False if the token is unknown.
    async fn revoke_family_of(&self, token_hash: &str) -> StoreResult<bool>;

    async fn create_room(&self, room: &NewRoom) -> StoreResult<RoomRecord>;
    async fn room(&self, id: RoomId) -> StoreResult<Option<RoomRecord>>;
    async fn room_by_name(&self, name: &str) -> StoreResult<Option<RoomRecord>>;
    /// The last committed seq and the rev of each of these rooms (one query).
    async fn last_seqs(&self, rooms: &[RoomId]) -> StoreResult<Vec<(RoomId, i64, i64)>>;
    /// Users with these usernames (unknown names are left out).
    async fn users_by_names(&self, names: &[String]) -> StoreResult<Vec<UserRecord>>;
    /// The accounts with these ids, in no order (unknown and deleted ones are left out). Lists
    /// are padded to a power of two, so a few prepared statements serve every size.
    async fn users_by_ids(&self, ids: &[UserId]) -> StoreResult<Vec<UserRecord>>;
    /// Marks messages past their room's retention (or `default_days` for rooms without one)
    /// as deleted; they keep their seq. Returns how many.
    async fn expire_messages(&self, now: i64, default_days: Option<i64>) -> StoreResult<u64>;
    /// The rooms `user` belongs to, with role, read marker and unread count.
    async fn rooms_of(&self, user: UserId) -> StoreResult<Vec<RoomListing>>;
    /// Public rooms `user` does not belong to.
    async fn public_rooms_outside(&self, user: UserId) -> StoreResult<Vec<RoomRecord>>;
    async fn update_room(&self, id: RoomId, changes: &RoomChanges<'_>) -> StoreResult<RoomRecord>;
    async fn archive_room(&self, id: RoomId) -> StoreResult<()>;
    /// The direct room between two users, created on first use. True when created now.
    async fn direct_room(&self, a: UserId, b: UserId, now: i64) -> StoreResult<(RoomRecord, bool)>;

    async fn member(&self, room: RoomId, user: UserId) -> StoreResult<Option<MemberRecord>>;
    /// True when the user was not a member before.
    async fn add_member(&self, room: RoomId, user: UserId, role: Role) -> StoreResult<bool>;
    /// Changes a member's role. False when the user is not a member.
    async fn set_role(&self, room: RoomId, user: UserId, role: Role) -> StoreResult<bool>;
    /// True when the user was a member.
    async fn remove_member(&self, room: RoomId, user: UserId) -> StoreResult<bool>;
    async fn members(&self, room: RoomId) -> StoreResult<Vec<MemberUser>>;

    /// Writes a batch in one transaction, allocating each room's `seq`; one outcome per input,
    /// in order.
    async fn commit_messages(&self, batch: &[NewMessage]) -> StoreResult<Committed>;
    /// Up to `limit` messages with `seq < before` (newest first in the database, returned in
    /// ascending order).
    async fn messages_before(
        &self,
        room: RoomId,
        before: i64,
        limit: i64,
    ) -> StoreResult<Vec<MessageRecord>>;
    /// Up to `limit` messages with `seq > after`, ascending.
    async fn messages_after(
        &self,
        room: RoomId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<MessageRecord>>;
    async fn message(&self, room: RoomId, seq: i64) -> StoreResult<Option<MessageRecord>>;
    async fn insert_attachment(&self, a: &AttachmentRecord) -> StoreResult<()>;
    async fn attachment(&self, id: AttachmentId) -> StoreResult<Option<AttachmentRecord>>;
    /// Replaces a message's body; `None` if there is no such message (or it is deleted).
    async fn edit_message(
        &self,
        room: RoomId,
        seq: i64,
        body: &str,
        now: i64,
    ) -> StoreResult<Option<MessageRecord>>;
    /// Empties a message and marks it deleted; it keeps its seq.
    async fn delete_message(&self, room: RoomId, seq: i64) -> StoreResult<Option<MessageRecord>>;
    /// Adds (`active`) or removes `user`'s `emoji` on a message, with a new `rev` when it
    /// changed anything.
    async fn react(
        &self,
        room: RoomId,
        seq: i64,
        user: UserId,
        emoji: &str,
        active: bool,
    ) -> StoreResult<Change>;
    /// Pins (`Some(now)`) or unpins (`None`) a message.
    async fn pin(&self, room: RoomId, seq: i64, at: Option<i64>) -> StoreResult<Change>;
    /// The room's pinned messages, most recently pinned first.
    async fn pins(&self, room: RoomId) -> StoreResult<Vec<MessageRecord>>;
    /// Up to `limit` messages whose `rev` is above `since_rev` and whose seq is at most
    /// `max_seq`, in `rev` order.
    async fn changes(
        &self,
        room: RoomId,
        since_rev: i64,
        max_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<MessageRecord>>;
    /// For each (room, user): the room's gate and the user's membership, or None for a room
    /// that does not exist. One query for the whole slice (the reads of many subscribes).
    async fn room_gates(
        &self,
        asks: &[(RoomId, UserId)],
    ) -> StoreResult<Vec<Option<(RoomGate, Option<MemberRecord>)>>>;
    /// For each span, the room's messages with `after < seq <= upto` in seq order, in one
    /// query. Callers bound each span (a resume replays at most a thousand).
    async fn messages_between(&self, spans: &[Span]) -> StoreResult<Vec<Vec<MessageRecord>>>;
    /// For each span, the room's messages with `rev > after` and `seq <= upto` in rev order,
    /// in one query. Callers bound each span by the room's rev (each change adds one to it).
    async fn changes_between(&self, spans: &[Span]) -> StoreResult<Vec<Vec<MessageRecord>>>;
    /// Up to `limit` replies in the thread of `root` with `seq > after`, ascending.
    async fn thread_replies(
        &self,
        room: RoomId,
        root: i64,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<MessageRecord>>;
    /// Full-text search in one room, best match first.
    async fn search_room(
        &self,
        room: RoomId,
        query: &str,
        limit: i64,
    ) -> StoreResult<Vec<MessageRecord>>;
    /// Full-text search over every room `user` belongs to, best match first.
    async fn search_rooms_of(
        &self,
        user: UserId,
        query: &str,
        limit: i64,
    ) -> StoreResult<Vec<MessageRecord>>;

    /// Sets or lifts (`None`) a global ban.
    async fn set_ban(
        &self,
        user: UserId,
        until: Option<i64>,
        reason: Option<&str>,
    ) -> StoreResult<bool>;
    /// Sets or lifts (`None`) a global mute.
    async fn set_mute(&self, user: UserId, until: Option<i64>) -> StoreResult<bool>;
    /// Sets or lifts a mute in one room. False when the user is not a member.
    async fn set_member_mute(
        &self,
        room: RoomId,
        user: UserId,
        until: Option<i64>,
    ) -> StoreResult<bool>;
    /// Revokes every refresh-token family of a user.
    async fn revoke_user_tokens(&self, user: UserId) -> StoreResult<()>;
    /// Users whose username contains `query`, by username.
    async fn find_users(&self, query: &str, limit: i64) -> StoreResult<Vec<UserRecord>>;
    async fn all_rooms(&self) -> StoreResult<Vec<RoomRecord>>;
    async fn totals(&self) -> StoreResult<Totals>;

    /// `user` blocks (`true`) or unblocks `other`. True when that changed anything.
    async fn set_block(
        &self,
        user: UserId,
        other: UserId,
        blocked: bool,
        now: i64,
    ) -> StoreResult<bool>;
    /// The users `user` blocks, by username.
    async fn blocked_users(&self, user: UserId) -> StoreResult<Vec<UserRecord>>;
    /// Deletes an account: it can no longer be found, log in or refresh; its memberships and
    /// blocks go. With `erase`, every message it wrote becomes deleted (each a change with its
    /// own rev), returned so subscribers can be told. False when there was no such account.
    async fn delete_user(
        &self,
        user: UserId,
        erase: bool,
        now: i64,
    ) -> StoreResult<Option<Vec<Erased>>>;
    /// Up to `limit` messages `user` wrote after `(created_at, id)`, in time order.
    async fn messages_by(
        &self,
        user: UserId,
        after: (i64, MessageId),
        limit: i64,
    ) -> StoreResult<Vec<MessageRecord>>;

    /// Whether a member of `room` blocks `user` (for direct rooms: the other person).
    async fn blocked_in(&self, room: RoomId, user: UserId) -> StoreResult<bool>;
    /// Which of `users` block `author`.
    async fn blockers_of(&self, author: UserId, users: &[UserId]) -> StoreResult<Vec<UserId>>;

    // ---- webhooks ----

    /// The outbox's view of which webhooks want which events (shared with the store).
    fn webhook_routes(&self) -> &WebhookRoutes;
    /// Reads the webhooks into [`Store::webhook_routes`] (at start, and when any pod changed them).
    async fn reload_webhooks(&self) -> StoreResult<Vec<WebhookRecord>>;
    async fn create_webhook(&self, hook: &WebhookRecord) -> StoreResult<()>;
    async fn webhooks(&self) -> StoreResult<Vec<WebhookRecord>>;
    /// Changes a webhook's URL, events and secret (declared webhooks whose resource changed).
    async fn update_webhook(&self, hook: &WebhookRecord) -> StoreResult<()>;
    async fn webhook(&self, id: WebhookId) -> StoreResult<Option<WebhookRecord>>;
    /// Removes a webhook and its undelivered events. False when there was none.
    async fn delete_webhook(&self, id: WebhookId) -> StoreResult<bool>;
    /// Records `finished` attempts (moving their events on) and claims up to `limit` due events
    /// for one attempt each, leaving out the webhooks in `busy`, all in one transaction: nobody
    /// else claims them until `now + lease_ms` (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so pods
    /// never take the same one).
    async fn claim_webhook_events(
        &self,
        finished: &[FinishedAttempt],
        now: i64,
        lease_ms: i64,
        limit: i64,
        busy: &[WebhookId],
    ) -> StoreResult<Vec<DueEvent>>;
    /// The latest attempts of a webhook, newest first.
    async fn webhook_deliveries(
        &self,
        id: WebhookId,
        limit: i64,
    ) -> StoreResult<Vec<DeliveryRecord>>;
    /// Records webhook events (type and `data`) for the webhooks that want them, in a
    /// transaction of their own (for events that follow a commit, like notifications).
    async fn enqueue_webhook_events(
        &self,
        events: Vec<(&'static str, serde_json::Value)>,
    ) -> StoreResult<()>;
    /// Events waiting for delivery and the creation time of the oldest (ms).
    async fn webhook_backlog(&self) -> StoreResult<(i64, Option<i64>)>;
    /// Deletes delivered and failed events, and attempts, older than `before` (ms).
    async fn prune_webhooks(&self, before: i64) -> StoreResult<u64>;

    /// Moves a marker forward (never back). True when it moved.
    async fn move_marker(
        &self,
        room: RoomId,
        user: UserId,
        marker: Marker,
        seq: i64,
    ) -> StoreResult<bool>;
}

/// Where a store reports how long each call took (`confab_store_query_duration_seconds{op}`);
/// `None` when nothing is measured (the `migrate` command, store tests).
#[derive(Clone, Default)]
pub struct QueryTimer(Option<prometheus::HistogramVec>);

impl QueryTimer {
    pub fn new(histogram: prometheus::HistogramVec) -> Self {
        QueryTimer(Some(histogram))
    }

    fn observe(&self, op: &str, started: Instant) {
        if let Some(h) = &self.0 {
            h.with_label_values(&[op])
                .observe(started.elapsed().as_secs_f64());
        }
    }
}

/// How the store is opened: the PostgreSQL pool's size, and whether pending migrations are
/// applied (`confab migrate` and the default) or only checked (`--migrate-on-start=false`, when
/// the chart's migration Job applies them).
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    pub max_connections: u32,
    pub migrate: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            max_connections: 16,
            migrate: true,
        }
    }
}

/// Opens the store the configuration names and applies pending migrations.
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
    timer: QueryTimer,
) -> anyhow::Result<Arc<dyn Store>> {
    open_with(database_url, data_dir, timer, OpenOptions::default()).await
}

/// Opens the store with explicit pool and migration options.
pub async fn open_with(
    database_url: Option<&str>,
    data_dir: &Path,
    timer: QueryTimer,
    options: OpenOptions,
) -> anyhow::Result<Arc<dyn Store>> {
    use anyhow::Context;
    match database_url {
        Some(url) => {
            let opts = sqlx::postgres::PgConnectOptions::from_str(url)
                .context("CONFAB_DATABASE_URL is not a valid PostgreSQL URL")?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(Duration::from_secs(3))
                .connect_with(opts)
                .await
                .context("cannot connect to PostgreSQL (CONFAB_DATABASE_URL)")?;
            let mut migrator = sqlx::migrate!("./migrations/postgres");
            // A schema one release ahead (after a rollback) is fine: migrations only add.
            migrator.set_ignore_missing(true);
            if options.migrate {
                migrator
                    .run(&pool)
                    .await
                    .context("PostgreSQL migrations failed")?;
            } else {
                check_migrated(&migrator, sqlx::query_as(APPLIED).fetch_all(&pool).await)?;
            }
            Ok(Arc::new(PgStore::new(pool, timer)))
        }
        None => {
            std::fs::create_dir_all(data_dir).with_context(|| {
                format!(
                    "cannot create the data dir {} (CONFAB_DATA_DIR)",
                    data_dir.display()
                )
            })?;
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(data_dir.join("confab.db"))
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                // FULL: an acknowledged commit survives power loss, not only a crash.
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(opts)
                .await
                .context("cannot open the SQLite database in the data dir")?;
            let mut migrator = sqlx::migrate!("./migrations/sqlite");
            migrator.set_ignore_missing(true);
            if options.migrate {
                migrator
                    .run(&pool)
                    .await
                    .context("SQLite migrations failed")?;
            } else {
                check_migrated(&migrator, sqlx::query_as(APPLIED).fetch_all(&pool).await)?;
            }
            Ok(Arc::new(SqliteStore::new(pool, timer)))
        }
    }
}

const APPLIED: &str = "SELECT version FROM _sqlx_migrations WHERE success";

/// With `--migrate-on-start=false`: refuses to start on a schema older than this release, with
/// the step that fixes it, instead of failing later on a missing column.
fn check_migrated(
    migrator: &sqlx::migrate::Migrator,
    applied: Result<Vec<(i64,)>, sqlx::Error>,
) -> anyhow::Result<()> {
    // No migrations table at all reads as nothing applied.
    let applied = applied.unwrap_or_default();
    let applied: std::collections::HashSet<i64> = applied.into_iter().map(|(v,)| v).collect();
    if let Some(missing) = migrator
        .iter()
        .find(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
    {
        anyhow::bail!(
            "the database schema is older than this release (migration {} \"{}\" is not applied): \
             run `confab migrate` (the chart's migration Job) first, or set \
             CONFAB_MIGRATE_ON_START=true",
            missing.version,
            missing.description
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_enums_read_back_what_they_write() {
        for k in [RoomKind::Public, RoomKind::Private, RoomKind::Direct] {
            assert_eq!(RoomKind::try_from(k.as_str().to_string()).unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for r in [Role::Owner, Role::Moderator, Role::Member] {
            assert_eq!(Role::try_from(r.to_string()).unwrap(), r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        let e = Role::try_from("admin".to_string()).unwrap_err();
        assert_eq!(e.to_string(), "unknown role \"admin\"");
        assert!(Role::Moderator.moderates() && !Role::Member.moderates());
    }
}
