//! A [`Store`] that times every call into `confab_store_query_duration_seconds{op}`. It wraps
//! whichever store the configuration opened; nothing else knows it is there.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::*;
use crate::ids::AttachmentId;
use crate::telemetry::Metrics;

pub struct TimedStore {
    inner: Arc<dyn Store>,
    metrics: Metrics,
}

impl TimedStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Metrics) -> Self {
        TimedStore { inner, metrics }
    }
}

macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        $self
            .metrics
            .store_query
            .with_label_values(&[$op])
            .observe(started.elapsed().as_secs_f64());
        result
    }};
}

#[async_trait]
impl Store for TimedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn statements_on_own_thread(&self) -> bool {
        self.inner.statements_on_own_thread()
    }

    async fn ping(&self) -> StoreResult<()> {
        timed!(self, "ping", self.inner.ping())
    }

    async fn setting_init(&self, key: &str, value: &str) -> StoreResult<String> {
        timed!(self, "setting_init", self.inner.setting_init(key, value))
    }

    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        timed!(self, "create_user", self.inner.create_user(user))
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        timed!(self, "user", self.inner.user(id))
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        timed!(self, "user_by_name", self.inner.user_by_name(username))
    }

    async fn insert_refresh(
        &self,
        token_hash: &str,
        family: FamilyId,
        user: UserId,
        expires_at: i64,
    ) -> StoreResult<()> {
        timed!(
            self,
            "insert_refresh",
            self.inner
                .insert_refresh(token_hash, family, user, expires_at)
        )
    }

    async fn spend_refresh(
        &self,
        token_hash: &str,
        now: i64,
        next: (&str, i64),
    ) -> StoreResult<RefreshOutcome> {
        timed!(
            self,
            "spend_refresh",
            self.inner.spend_refresh(token_hash, now, next)
        )
    }

    async fn revoke_family_of(&self, token_hash: &str) -> StoreResult<bool> {
        timed!(
            self,
            "revoke_family_of",
            self.inner.revoke_family_of(token_hash)
        )
    }

    async fn create_room(&self, room: &NewRoom) -> StoreResult<RoomRecord> {
        timed!(self, "create_room", self.inner.create_room(room))
    }

    async fn room(&self, id: RoomId) -> StoreResult<Option<RoomRecord>> {
        timed!(self, "room", self.inner.room(id))
    }

    async fn room_by_name(&self, name: &str) -> StoreResult<Option<RoomRecord>> {
        timed!(self, "room_by_name", self.inner.room_by_name(name))
    }

    async fn last_seqs(&self, rooms: &[RoomId]) -> StoreResult<Vec<(RoomId, i64)>> {
        timed!(self, "last_seqs", self.inner.last_seqs(rooms))
    }

    async fn users_by_names(&self, names: &[String]) -> StoreResult<Vec<UserRecord>> {
        timed!(self, "users_by_names", self.inner.users_by_names(names))
    }

    async fn expire_messages(&self, now: i64, default_days: Option<i64>) -> StoreResult<u64> {
        timed!(
            self,
            "expire_messages",
            self.inner.expire_messages(now, default_days)
        )
    }

    async fn rooms_of(&self, user: UserId) -> StoreResult<Vec<RoomListing>> {
        timed!(self, "rooms_of", self.inner.rooms_of(user))
    }

    async fn public_rooms_outside(&self, user: UserId) -> StoreResult<Vec<RoomRecord>> {
        timed!(
            self,
            "public_rooms_outside",
            self.inner.public_rooms_outside(user)
        )
    }

    async fn update_room(&self, id: RoomId, changes: &RoomChanges<'_>) -> StoreResult<RoomRecord> {
        timed!(self, "update_room", self.inner.update_room(id, changes))
    }

    async fn archive_room(&self, id: RoomId) -> StoreResult<()> {
        timed!(self, "archive_room", self.inner.archive_room(id))
    }

    async fn direct_room(&self, a: UserId, b: UserId, now: i64) -> StoreResult<(RoomRecord, bool)> {
        timed!(self, "direct_room", self.inner.direct_room(a, b, now))
    }

    async fn member(&self, room: RoomId, user: UserId) -> StoreResult<Option<MemberRecord>> {
        timed!(self, "member", self.inner.member(room, user))
    }

    async fn add_member(&self, room: RoomId, user: UserId, role: &str) -> StoreResult<bool> {
        timed!(self, "add_member", self.inner.add_member(room, user, role))
    }

    async fn set_role(&self, room: RoomId, user: UserId, role: &str) -> StoreResult<bool> {
        timed!(self, "set_role", self.inner.set_role(room, user, role))
    }

    async fn remove_member(&self, room: RoomId, user: UserId) -> StoreResult<bool> {
        timed!(self, "remove_member", self.inner.remove_member(room, user))
    }

    async fn members(&self, room: RoomId) -> StoreResult<Vec<MemberUser>> {
        timed!(self, "members", self.inner.members(room))
    }

    async fn commit_messages(&self, batch: &[NewMessage]) -> StoreResult<Vec<CommitOutcome>> {
        timed!(self, "commit_messages", self.inner.commit_messages(batch))
    }

    async fn messages_before(
        &self,
        room: RoomId,
        before: i64,
        limit: i64,
    ) -> StoreResult<Vec<MessageRecord>> {
        timed!(
            self,
            "messages_before",
            self.inner.messages_before(room, before, limit)
        )
    }

    async fn messages_after(
        &self,
        room: RoomId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<MessageRecord>> {
        timed!(
            self,
            "messages_after",
            self.inner.messages_after(room, after, limit)
        )
    }

    async fn message(&self, room: RoomId, seq: i64) -> StoreResult<Option<MessageRecord>> {
        timed!(self, "message", self.inner.message(room, seq))
    }

    async fn insert_attachment(&self, a: &AttachmentRecord) -> StoreResult<()> {
        timed!(self, "insert_attachment", self.inner.insert_attachment(a))
    }

    async fn attachment(&self, id: AttachmentId) -> StoreResult<Option<AttachmentRecord>> {
        timed!(self, "attachment", self.inner.attachment(id))
    }

    async fn edit_message(
        &self,
        room: RoomId,
        seq: i64,
        body: &str,
        now: i64,
    ) -> StoreResult<Option<MessageRecord>> {
        timed!(
            self,
            "edit_message",
            self.inner.edit_message(room, seq, body, now)
        )
    }

    async fn delete_message(&self, room: RoomId, seq: i64) -> StoreResult<Option<MessageRecord>> {
        timed!(self, "delete_message", self.inner.delete_message(room, seq))
    }

    async fn search_room(
        &self,
        room: RoomId,
        query: &str,
        limit: i64,
    ) -> StoreResult<Vec<MessageRecord>> {
        timed!(
            self,
            "search_room",
            self.inner.search_room(room, query, limit)
        )
    }

    async fn search_rooms_of(
        &self,
        user: UserId,
        query: &str,
        limit: i64,
    ) -> StoreResult<Vec<MessageRecord>> {
        timed!(
            self,
            "search_rooms_of",
            self.inner.search_rooms_of(user, query, limit)
        )
    }

    async fn set_ban(
        &self,
        user: UserId,
        until: Option<i64>,
        reason: Option<&str>,
    ) -> StoreResult<bool> {
        timed!(self, "set_ban", self.inner.set_ban(user, until, reason))
    }

    async fn set_mute(&self, user: UserId, until: Option<i64>) -> StoreResult<bool> {
        timed!(self, "set_mute", self.inner.set_mute(user, until))
    }

    async fn set_member_mute(
        &self,
        room: RoomId,
        user: UserId,
        until: Option<i64>,
    ) -> StoreResult<bool> {
        timed!(
            self,
            "set_member_mute",
            self.inner.set_member_mute(room, user, until)
        )
    }

    async fn revoke_user_tokens(&self, user: UserId) -> StoreResult<()> {
        timed!(
            self,
            "revoke_user_tokens",
            self.inner.revoke_user_tokens(user)
        )
    }

    async fn find_users(&self, query: &str, limit: i64) -> StoreResult<Vec<UserRecord>> {
        timed!(self, "find_users", self.inner.find_users(query, limit))
    }

    async fn all_rooms(&self) -> StoreResult<Vec<RoomRecord>> {
        timed!(self, "all_rooms", self.inner.all_rooms())
    }

    async fn totals(&self) -> StoreResult<Totals> {
        timed!(self, "totals", self.inner.totals())
    }

    async fn move_marker(
        &self,
        room: RoomId,
        user: UserId,
        marker: Marker,
        seq: i64,
    ) -> StoreResult<bool> {
        timed!(
            self,
            "move_marker",
            self.inner.move_marker(room, user, marker, seq)
        )
    }
}
