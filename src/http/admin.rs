//! Administration for the usernames in `--admins`: users with their ban and mute state, all
//! rooms, bans and mutes that take effect on every pod within a second, per-pod stats.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router, routing::get, routing::post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::hub::ControlEvent;
use crate::ids::UserId;
use crate::model::{Room, rfc3339};
use crate::moderation::until;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/users", get(users))
        .route("/api/v1/admin/rooms", get(rooms))
        .route("/api/v1/admin/users/{id}/ban", post(ban).delete(unban))
        .route("/api/v1/admin/users/{id}/mute", post(mute).delete(unmute))
        .route("/api/v1/admin/stats", get(stats))
        .route("/api/v1/admin/config", get(config))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// Part of a username.
    q: Option<String>,
    /// At most this many (default 50; beyond 1-500 it is clamped).
    limit: Option<i64>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct BanBody {
    /// Shown to the user when they try to log in.
    #[schema(max_length = 512)]
    reason: Option<String>,
    /// For good when absent.
    #[schema(minimum = 0)]
    duration_seconds: Option<u64>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub struct MuteBody {
    /// For good when absent.
    #[schema(minimum = 0)]
    pub duration_seconds: Option<u64>,
}

/// An optional JSON body: no body at all means the defaults.
pub struct OptionalJson<T>(pub T);

impl<T: serde::de::DeserializeOwned + Default, S: Send + Sync> axum::extract::FromRequest<S>
    for OptionalJson<T>
{
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> ApiResult<Self> {
        let empty = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|l| l == "0")
            || (req
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .is_none()
                && req
                    .headers()
                    .get(axum::http::header::TRANSFER_ENCODING)
                    .is_none());
        if empty {
            return Ok(OptionalJson(T::default()));
        }
        ApiJson::<T>::from_request(req, state)
            .await
            .map(|j| OptionalJson(j.0))
    }
}

#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", params(UsersQuery),
    responses((status = 200, description = "{\"users\": [User + banned, muted]}"), (status = 403)))]
pub async fn users(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UsersQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let now = crate::now_ms();
    let users: Vec<Value> = state
        .store
        .find_users(q.q.as_deref().unwrap_or(""), limit)
        .await?
        .iter()
        .map(|u| {
            let mut v = serde_json::to_value(state.user_json(u)).expect("user serializes");
            v["banned"] = json!(u.banned_at(now));
            v["muted"] = json!(u.muted_at(now));
            if u.banned_at(now) {
                v["ban_reason"] = json!(u.ban_reason);
                v["banned_until"] = json!(u.banned_until.filter(|t| *t < i64::MAX).map(rfc3339));
            }
            v
        })
        .collect();
    Ok(Json(json!({"users": users})))
}

#[utoipa::path(get, path = "/api/v1/admin/rooms", tag = "admin",
    responses((status = 200, description = "{\"rooms\": [Room]}, every room"), (status = 403)))]
pub async fn rooms(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let rooms: Vec<Room> = state
        .store
        .all_rooms()
        .await?
        .iter()
        .map(Room::from)
        .collect();
    Ok(Json(json!({"rooms": rooms})))
}

async fn target(state: &AppState, id: UserId) -> ApiResult<()> {
    state
        .store
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/admin/users/{id}/ban", tag = "admin", request_body = BanBody,
    params(("id" = uuid::Uuid, Path, description = "user id")),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn ban(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<UserId>,
    OptionalJson(body): OptionalJson<BanBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    target(&state, id).await?;
    if id == caller.user.id {
        return Err(ApiError::forbidden("an admin cannot ban itself"));
    }
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > 512)
    {
        return Err(ApiError::bad_request(
            "reason must be at most 512 characters",
        ));
    }
    let until = until(crate::now_ms(), body.duration_seconds);
    state
        .store
        .set_ban(id, Some(until), body.reason.as_deref())
        .await?;
    state.store.revoke_user_tokens(id).await?;
    state.hub.control(ControlEvent::UserBanned { user: id });
    tracing::info!(user = %id, by = %caller.user.id, "user banned");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/admin/users/{id}/ban", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "user id")),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn unban(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<UserId>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    target(&state, id).await?;
    state.store.set_ban(id, None, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, operation_id = "mute_user", path = "/api/v1/admin/users/{id}/mute", tag = "admin", request_body = MuteBody,
    params(("id" = uuid::Uuid, Path, description = "user id")),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn mute(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<UserId>,
    OptionalJson(body): OptionalJson<MuteBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    target(&state, id).await?;
    set_mute(
        &state,
        id,
        Some(until(crate::now_ms(), body.duration_seconds)),
    )
    .await
}

#[utoipa::path(delete, operation_id = "unmute_user", path = "/api/v1/admin/users/{id}/mute", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "user id")),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn unmute(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<UserId>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    target(&state, id).await?;
    set_mute(&state, id, None).await
}

/// Mutes (`until`) or unmutes (`None`) a user everywhere: stored, and on every pod's sockets.
async fn set_mute(state: &AppState, id: UserId, until: Option<i64>) -> ApiResult<StatusCode> {
    state.store.set_mute(id, until).await?;
    state
        .hub
        .control(ControlEvent::UserMuted { user: id, until });
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/admin/stats", tag = "admin",
    responses((status = 200, description = "{\"pods\": [{id, connections, uptime_seconds}], users, rooms, messages}"), (status = 403)))]
pub async fn stats(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let now = crate::now_ms();
    let mut pods = vec![state.hub.pod_stats()];
    pods.extend(state.bus.pods_remote().await);
    let pods: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "connections": p.connections,
                "uptime_seconds": (now - p.started_ms).max(0) / 1000,
            })
        })
        .collect();
    let totals = state.store.totals().await?;
    Ok(Json(json!({
        "pods": pods,
        "users": totals.users,
        "rooms": totals.rooms,
        "messages": totals.messages,
    })))
}

pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(b) = serde_json::from_slice::<BanBody>(data) {
        let _ = crate::moderation::until(crate::now_ms(), b.duration_seconds);
        let _ = b.reason.map(|r| r.len());
    }
    if let Ok(b) = serde_json::from_slice::<MuteBody>(data) {
        let _ = crate::moderation::until(crate::now_ms(), b.duration_seconds);
    }
}

#[utoipa::path(get, path = "/api/v1/admin/config", tag = "admin",
    responses((status = 200, description = "the ChatRoom / ChatPolicy resources applied, with their state, and every error; {\"source\": null} when none are configured"), (status = 403)))]
pub async fn config(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let status = state
        .config_status
        .read()
        .expect("config status lock")
        .clone();
    let policy = state.policies.current();
    let policy = json!({
        "registration": if policy.registration_open { "open" } else { "closed" },
        "max_message_bytes": policy.max_message_bytes,
        "max_attachment_bytes": policy.max_attachment_bytes,
        "messages_per_second": policy.messages_per_second,
        "burst": policy.burst,
        "blocked_words": policy.blocked_words.len(),
        "default_retention_days": policy.default_retention_days,
    });
    Ok(Json(match status {
        Some(mut s) => {
            s["policy_in_force"] = policy;
            s
        }
        None => json!({"source": null, "resources": [], "errors": [], "policy_in_force": policy}),
    }))
}
