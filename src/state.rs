//! [`AppState`]: the cheap handles every request, connection, background job and the operator
//! share, and the lookups they all need to decide who may do what (authentication, whether a
//! room is readable or writable). It knows no transport: nothing here speaks HTTP or WebSocket.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use crate::auth::oidc::{ExternalClaims, Oidc, username_candidates};
use crate::auth::{API_KEY_PREFIX, Auth, Identity, api_key_hash};
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
    /// The store reads of `subscribe`, batched across this pod's sockets.
    pub resumes: Arc<crate::resume::Resumes>,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub writer: GroupCommit,
    pub auth: Auth,
    /// The bounded path every password hash takes.
    pub hashing: Arc<crate::auth::PasswordHashing>,
    pub metrics: Metrics,
    pub admins: Arc<HashSet<String>>,
    /// The team's OpenID provider, when one is configured.
    pub oidc: Option<Arc<Oidc>>,
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
    /// The one copy that long-lived holders share ([`AppState::shared`]), while any holds it.
    pub(crate) shared: Arc<Mutex<Weak<AppState>>>,
}

/// The answer for a room that does not exist or that the user may not see.
pub fn no_such_room() -> ApiError {
    ApiError::not_found("no such room")
}

/// A public room is readable by anyone; another only by its members (to others it does not
/// exist).
pub fn may_read(kind: RoomKind, member: Option<&MemberRecord>) -> ApiResult<()> {
    if kind != RoomKind::Public && member.is_none() {
        return Err(no_such_room());
    }
    Ok(())
}

impl AppState {
    /// One copy of this state, shared by whatever holds it for long (every WebSocket
    /// connection): a pointer each instead of a copy of every handle (176 bytes per idle
    /// socket, docs/BENCHMARKS.md). Made again when the last holder has dropped it.
    pub fn shared(&self) -> Arc<AppState> {
        let mut weak = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = weak.upgrade() {
            return state;
        }
        let state = Arc::new(self.clone());
        *weak = Arc::downgrade(&state);
        state
    }

    /// A global admin: named in `--admins`, or an admin by its own account (an admin bot, a
    /// member of the provider's admin group).
    pub fn is_admin(&self, user: &UserRecord) -> bool {
        self.is_admin_named(user.admin, &user.username)
    }

    /// Whether an account is an admin, by its own flag or by its username in `--admins`.
    pub fn is_admin_named(&self, admin: bool, username: &str) -> bool {
        admin || self.admins.contains(username)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn user_json(&self, u: &UserRecord) -> User {
        crate::model::user(u, self.is_admin(u))
    }

    /// Checks a credential and loads its user: a bot's API key, a token of the OpenID
    /// provider (creating its account on first sight), or confab's own access token.
    pub async fn authenticate(&self, token: &str) -> ApiResult<Identity> {
        let identity = if token.starts_with(API_KEY_PREFIX) {
            let (key_id, user) = self
                .store
                .api_key_user(&api_key_hash(token))
                .await?
                .ok_or_else(|| ApiError::unauthorized("the API key is invalid or revoked"))?;
            Identity::api_key(user, key_id)
        } else if let Some(oidc) = self.oidc.as_ref().filter(|o| o.claims_issuer(token)) {
            let claims = oidc.verify(token).await?;
            let user = self.external_account(&claims).await?;
            Identity::token(user, claims.exp)
        } else {
            let claims = self.auth.verify_access(token)?;
            // Batched: a storm of reconnects signs in thousands of sockets at once.
            let user = self
                .resumes
                .account(claims.sub)
                .await?
                .ok_or_else(|| ApiError::unauthorized("the user no longer exists"))?;
            Identity::token(user, claims.exp)
        };
        if identity.user.banned_at(crate::now_ms()) {
            return Err(ApiError::forbidden("the user is banned"));
        }
        Ok(identity)
    }

    /// The account of a verified provider token: found by (issuer, subject), or created on
    /// its first token. Its admin right follows the admin group of each token.
    async fn external_account(&self, claims: &ExternalClaims) -> ApiResult<UserRecord> {
        let mut user = match self
            .store
            .external_user(&claims.issuer, &claims.subject)
            .await?
        {
            Some(user) => user,
            None => {
                let names = username_candidates(claims.username.as_deref());
                let display_name = claims
                    .name
                    .as_deref()
                    .map(|n| n.trim().chars().take(64).collect::<String>())
                    .filter(|n| {
                        !n.is_empty()
                            && crate::validate::shown_text("display_name", n, false).is_ok()
                    })
                    .unwrap_or_else(|| names[0].clone());
                let mut record = UserRecord::new(names[0].clone(), display_name, String::new());
                record.external = true;
                record.admin = claims.admin.unwrap_or(false);
                let user = self
                    .store
                    .create_external_user(&claims.issuer, &claims.subject, &record, &names)
                    .await?
                    .ok_or_else(|| {
                        ApiError::Conflict("no free username for this account".into())
                    })?;
                tracing::info!(user = %user.id, username = %user.username, "external account created");
                user
            }
        };
        if let Some(admin) = claims.admin
            && admin != user.admin
        {
            self.store.set_user_admin(user.id, admin).await?;
            user.admin = admin;
        }
        Ok(user)
    }

    /// The room if `user` may read it, with the user's membership. A private or direct room
    /// the user is not in is `not_found`: its existence is never disclosed.
    pub async fn readable_room(
        &self,
        room: RoomId,
        user: UserId,
    ) -> ApiResult<(RoomRecord, Option<MemberRecord>)> {
        let r = self.store.room(room).await?.ok_or_else(no_such_room)?;
        let member = self.store.member(room, user).await?;
        may_read(r.kind, member.as_ref())?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::Config;

    /// Sockets share one copy of the state while any holds it; once none does, the copy is
    /// freed and the next socket makes a new one.
    #[tokio::test]
    async fn long_lived_holders_share_one_copy_of_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _writer, _stop) =
            crate::server::build(Config::for_tests(dir.path().to_path_buf()))
                .await
                .unwrap();
        let first = state.shared();
        let second = state.clone().shared();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(Arc::strong_count(&first), 2);
        let weak = Arc::downgrade(&first);
        drop((first, second));
        assert!(
            weak.upgrade().is_none(),
            "the copy is freed with its last holder"
        );
        let again = state.shared();
        assert_eq!(Arc::strong_count(&again), 1);
    }
}
