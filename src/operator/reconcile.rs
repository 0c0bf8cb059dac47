//! Making the running system match a `ChatRoom` (or a `ChatWebhook`): the one piece of reconcile logic that both the
//! Kubernetes controller and `--config-dir` call. It talks to the store and the hub only.

use std::collections::BTreeMap;

use crate::ids::{RoomId, UserId, WebhookId};
use crate::operator::resources::{ChatRoomSpec, WebhookEvent};
use crate::state::AppState;
use crate::store::{NewRoom, Role, RoomChanges, StoreError, UserRecord, WebhookRecord};

/// The account that creates rooms for resources that name no owner. Its name cannot be
/// registered (usernames are lowercase letters, digits and `_.-`), and it cannot log in.
pub const OPERATOR_USERNAME: &str = "confab:operator";

#[derive(Debug, Clone, PartialEq)]
pub struct RoomApplied {
    pub room_id: RoomId,
    /// Declared usernames with no account yet; applied once they register.
    pub unresolved: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReconcileError {
    /// The `reason` of a `Ready=False` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Invalid(_) => "InvalidSpec",
            ReconcileError::Conflict(_) => "NameConflict",
            ReconcileError::Store(_) => "StoreUnavailable",
        }
    }
}

/// Checks what the CRD schema checks, for documents that never went through an API server.
pub fn validate(spec: &ChatRoomSpec) -> Result<(), ReconcileError> {
    let bad = |m: String| Err(ReconcileError::Invalid(m));
    if !crate::validate::room_name(&spec.name) {
        return bad(format!(
            "spec.name {:?} must be 1-64 characters of a-z, 0-9, '_', '-'",
            spec.name
        ));
    }
    if let Some(topic) = &spec.topic {
        if topic.len() > 1024 {
            return bad("spec.topic must be at most 1024 bytes".into());
        }
        crate::validate::shown_text("spec.topic", topic, true).map_err(ReconcileError::Invalid)?;
    }
    if spec
        .slow_mode_seconds
        .is_some_and(|s| !(0..=86_400).contains(&s))
    {
        return bad("spec.slowModeSeconds must be between 0 and 86400".into());
    }
    if spec
        .retention_days
        .is_some_and(|d| !(1..=36_500).contains(&d))
    {
        return bad("spec.retentionDays must be between 1 and 36500".into());
    }
    for (field, names) in [
        ("owners", &spec.owners),
        ("moderators", &spec.moderators),
        ("members", &spec.members),
    ] {
        if let Some(n) = names.iter().find(|n| !crate::validate::username(n)) {
            return bad(format!(
                "spec.{field} has {n:?}, which is not a valid username"
            ));
        }
    }
    Ok(())
}

async fn operator_user(state: &AppState) -> Result<UserId, StoreError> {
    if let Some(u) = state.store.user_by_name(OPERATOR_USERNAME).await? {
        return Ok(u.id);
    }
    let u = UserRecord::new(OPERATOR_USERNAME.into(), "confab".into(), "!".into());
    match state.store.create_user(&u).await {
        Ok(()) => Ok(u.id),
        // Another pod created it at the same moment.
        Err(StoreError::Conflict(_)) => state
            .store
            .user_by_name(OPERATOR_USERNAME)
            .await?
            .map(|u| u.id)
            .ok_or(StoreError::NotFound),
        Err(e) => Err(e),
    }
}

/// Creates or updates the room `key` (`namespace/name` of the resource) declares.
pub async fn apply_room(
    state: &AppState,
    key: &str,
    spec: &ChatRoomSpec,
) -> Result<RoomApplied, ReconcileError> {
    validate(spec)?;
    // Declared users, the highest role winning.
    let mut wanted: BTreeMap<&str, Role> = BTreeMap::new();
    for (role, names) in [
        (Role::Member, &spec.members),
        (Role::Moderator, &spec.moderators),
        (Role::Owner, &spec.owners),
    ] {
        for n in names {
            wanted.insert(n, role);
        }
    }
    let names: Vec<String> = wanted.keys().map(|n| n.to_string()).collect();
    let found = state.store.users_by_names(&names).await?;
    let unresolved: Vec<String> = names
        .iter()
        .filter(|n| !found.iter().any(|u| &u.username == *n))
        .cloned()
        .collect();

    let room = match state.store.room_by_name(&spec.name).await? {
        Some(r) if r.managed_by.as_deref() == Some(key) => r,
        Some(r) => {
            return Err(ReconcileError::Conflict(match r.managed_by {
                Some(other) => format!("room {:?} is already managed by {other}", spec.name),
                None => format!(
                    "a room named {:?} was created through the API; rename it or the resource",
                    spec.name
                ),
            }));
        }
        None => {
            let creator = operator_user(state).await?;
            let r = state
                .store
                .create_room(&NewRoom {
                    id: RoomId::new(),
                    name: spec.name.clone(),
                    kind: spec.kind.into(),
                    topic: String::new(),
                    created_by: creator,
                    created_at: crate::now_ms(),
                })
                .await
                .map_err(|e| match e {
                    StoreError::Conflict(_) => {
                        ReconcileError::Conflict(format!("room {:?} exists", spec.name))
                    }
                    e => e.into(),
                })?;
            // The operator account is not a member; the update below marks the room managed.
            state.store.remove_member(r.id, creator).await?;
            tracing::info!(room = %r.id, resource = key, "room created for resource");
            r
        }
    };

    // Write only what differs: a resync of an unchanged resource costs reads, not writes.
    let changes = RoomChanges {
        topic: Some(spec.topic.as_deref().unwrap_or("")),
        kind: Some(spec.kind.into()),
        slow_mode_seconds: Some(spec.slow_mode_seconds.unwrap_or(0)),
        read_only: Some(spec.read_only.unwrap_or(false)),
        retention_days: Some(spec.retention_days),
        managed_by: Some(Some(key)),
        archived: Some(false),
    };
    let mut changed = changes.alter(&room);
    if changed {
        state.store.update_room(room.id, &changes).await?;
    }
    for user in &found {
        let role = wanted[user.username.as_str()];
        match state.store.member(room.id, user.id).await? {
            None => {
                crate::chat::add_member(state, room.id, user.id, role).await?;
                changed = true;
            }
            Some(m) if m.role != role => {
                state.store.set_role(room.id, user.id, role).await?;
                changed = true;
            }
            Some(_) => {}
        }
    }
    if changed && let Some(fresh) = state.store.room(room.id).await? {
        crate::chat::room_updated(state, &fresh);
    }
    Ok(RoomApplied {
        room_id: room.id,
        unresolved,
    })
}

/// The resource is gone: archive its room (read-only, history kept). Idempotent.
pub async fn archive_room(state: &AppState, key: &str, name: &str) -> Result<(), ReconcileError> {
    if let Some(r) = state.store.room_by_name(name).await?
        && r.managed_by.as_deref() == Some(key)
        && !r.archived
    {
        let archived = state
            .store
            .update_room(
                r.id,
                &RoomChanges {
                    archived: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        crate::chat::room_updated(state, &archived);
        tracing::info!(room = %r.id, resource = key, "room archived: its resource was deleted");
    }
    Ok(())
}

/// What marks a webhook as declared by the resource (or file) `key`.
pub fn webhook_owner(key: &str) -> String {
    format!("ChatWebhook {key}")
}

/// Makes the webhooks match a declared one: creates it, or updates the one this resource made
/// before. Its checks are the admin API's (a private address without the flag is refused).
pub async fn apply_webhook(
    state: &AppState,
    key: &str,
    url: &str,
    events: &[WebhookEvent],
    secret: &str,
) -> Result<WebhookId, ReconcileError> {
    let mut names: Vec<String> = events.iter().map(|e| e.name()).collect();
    names.sort();
    names.dedup();
    crate::http::webhooks::validate(state, url, &names, Some(secret))
        .await
        .map_err(|e| ReconcileError::Invalid(format!("spec: {e}")))?;
    let owner = webhook_owner(key);
    let events = serde_json::to_string(&names).expect("strings serialize");
    let existing = state
        .store
        .webhooks()
        .await?
        .into_iter()
        .find(|h| h.managed_by.as_deref() == Some(owner.as_str()));
    let id = match existing {
        Some(h) if h.url == url && h.events == events && h.secret == secret => return Ok(h.id),
        Some(h) => {
            let changed = WebhookRecord {
                url: url.to_string(),
                events,
                secret: secret.to_string(),
                ..h
            };
            state.store.update_webhook(&changed).await?;
            changed.id
        }
        None => {
            let hook = WebhookRecord {
                id: WebhookId::new(),
                url: url.to_string(),
                events,
                secret: secret.to_string(),
                managed_by: Some(owner),
                created_at: crate::now_ms(),
            };
            state.store.create_webhook(&hook).await?;
            hook.id
        }
    };
    state.hub.webhooks_changed().await?;
    Ok(id)
}

/// Removes the webhook a resource (or file) declared, if any.
pub async fn remove_webhook(state: &AppState, key: &str) -> Result<(), ReconcileError> {
    let owner = webhook_owner(key);
    for h in state.store.webhooks().await? {
        if h.managed_by.as_deref() == Some(owner.as_str()) {
            state.store.delete_webhook(h.id).await?;
            state.hub.webhooks_changed().await?;
        }
    }
    Ok(())
}
