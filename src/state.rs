//! [`AppState`]: the cheap handles every request, connection, background job and the operator
//! share, and the lookups they all need to decide who may do what (authentication, whether a
//! room is readable or writable). It knows no transport: nothing here speaks HTTP or WebSocket.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::auth::Auth;
use crate::bus::Bus;
use crate::commit::GroupCommit;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::hub::Hub;
use crate::ids::{RoomId, UserId};
use crate::model::User;
use crate::moderation::{SendRules, SlowMode};
use crate::policy::Policies;
use crate::store::blobs::Blobs;
use crate::store::{MemberRecord, RoomKind, RoomRecord, Store, UserRecord};
use crate::telemetry::Metrics;

/// Cheap handles shared by every request and connection.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub writer: GroupCommit,
    pub auth: Auth,
    pub metrics: Metrics,
    pub admins: Arc<HashSet<String>>,
    pub blobs: Arc<Blobs>,
    pub policies: Arc<Policies>,
    /// When members last posted in slow-mode rooms (per pod).
    pub slow_mode: Arc<SlowMode>,
    /// Whether this pod holds the controller Lease (always true outside Kubernetes): jobs that
    /// must run once per installation, like retention, run only here.
    pub leader: Arc<AtomicBool>,
    /// What `--config-dir` (or the controller) applied last, for `GET /api/v1/admin/config`.
    pub config_status: Arc<std::sync::RwLock<Option<serde_json::Value>>>,
    pub draining: Arc<AtomicBool>,
    pub started: Instant,
}

impl AppState {
    pub fn is_admin(&self, username: &str) -> bool {
        self.admins.contains(username)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn user_json(&self, u: &UserRecord) -> User {
        User::from_record(u, self.is_admin(&u.username))
    }

    /// Verifies an access token and loads its user.
    pub async fn authenticate(&self, token: &str) -> ApiResult<(UserRecord, crate::auth::Claims)> {
        let claims = self.auth.verify_access(token)?;
        let user = self
            .store
            .user(claims.sub)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the user no longer exists"))?;
        if user.banned_at(crate::now_ms()) {
            return Err(ApiError::forbidden("the user is banned"));
        }
        Ok((user, claims))
    }

    /// The room if `user` may read it, with the user's membership. A private or direct room
    /// the user is not in is `not_found`: its existence is never disclosed.
    pub async fn readable_room(
        &self,
        room: RoomId,
        user: UserId,
    ) -> ApiResult<(RoomRecord, Option<MemberRecord>)> {
        let not_found = || ApiError::not_found("no such room");
        let r = self.store.room(room).await?.ok_or_else(not_found)?;
        let member = self.store.member(room, user).await?;
        if r.kind != RoomKind::Public && member.is_none() {
            return Err(not_found());
        }
        Ok((r, member))
    }

    /// The rules `user` posts under in a room it belongs to; `forbidden` for a readable room
    /// it is not in. Callers still `check` them (mutes, read-only, archived).
    pub async fn writable_room(&self, room: RoomId, user: UserId) -> ApiResult<SendRules> {
        let (r, member) = self.readable_room(room, user).await?;
        let member = member.ok_or_else(|| ApiError::forbidden("join the room first"))?;
        Ok(SendRules::new(&r, &member))
    }
}
