//! Rooms, membership and direct messages.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router, routing::get, routing::post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, ApiPath, AppState, Caller};
use crate::chat;
use crate::error::{ApiError, ApiResult};
use crate::http::admin::{MuteBody, OptionalJson};
use crate::hub::ControlEvent;
use crate::ids::{RoomId, UserId};
use crate::model::Room;
use crate::store::{MemberRecord, NewRoom, Role, RoomChanges, RoomKind, RoomRecord};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/rooms", post(create).get(list))
        .route(
            "/api/v1/rooms/{id}",
            get(get_room).patch(update).delete(archive),
        )
        .route("/api/v1/rooms/{id}/join", post(join))
        .route("/api/v1/rooms/{id}/leave", post(leave))
        .route("/api/v1/rooms/{id}/members", get(members).post(invite))
        .route(
            "/api/v1/rooms/{id}/members/{user_id}",
            axum::routing::delete(kick).patch(set_role),
        )
        .route(
            "/api/v1/rooms/{id}/members/{user_id}/mute",
            post(mute).delete(unmute),
        )
        .route("/api/v1/dms", post(direct))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateRoomBody {
    /// 1-64 of `a-z`, `0-9`, `_`, `-` (the pattern is set from `validate::ROOM_NAME`).
    name: String,
    #[schema(pattern = "^(public|private)$")]
    kind: String,
    /// At most 1024 characters, no control or directional characters.
    #[schema(max_length = 1024)]
    topic: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct UpdateRoomBody {
    #[schema(max_length = 1024)]
    topic: Option<String>,
    #[schema(pattern = "^(public|private)$")]
    kind: Option<String>,
    /// Seconds a member must wait between messages (0 turns slow mode off).
    #[schema(minimum = 0, maximum = 86400)]
    slow_mode_seconds: Option<i64>,
    /// Only owners and moderators may post.
    read_only: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RoleBody {
    /// `moderator` or `member`.
    #[schema(pattern = "^(moderator|member)$")]
    role: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct UserIdBody {
    user_id: UserId,
}

const MAX_TOPIC: usize = 1024;

/// The kinds a client may create or switch to (a direct room comes from `POST /dm`).
fn check_kind(kind: &str) -> ApiResult<RoomKind> {
    match RoomKind::parse(kind) {
        Some(k @ (RoomKind::Public | RoomKind::Private)) => Ok(k),
        _ => Err(ApiError::bad_request(
            "kind must be \"public\" or \"private\"",
        )),
    }
}

fn check_topic(topic: &str) -> ApiResult<()> {
    if topic.chars().count() > MAX_TOPIC {
        return Err(ApiError::bad_request(format!(
            "topic must be at most {MAX_TOPIC} characters"
        )));
    }
    crate::validate::shown_text("topic", topic, true).map_err(ApiError::BadRequest)
}

/// Rooms declared by a `ChatRoom` resource change only through the resource: 409 naming it.
fn refuse_if_managed(r: &RoomRecord) -> ApiResult<()> {
    match &r.managed_by {
        Some(managed) => Err(ApiError::conflict(format!(
            "the room is managed by the ChatRoom resource {managed}; change it there"
        ))),
        None => Ok(()),
    }
}

#[utoipa::path(post, path = "/api/v1/rooms", tag = "rooms", request_body = CreateRoomBody,
    responses((status = 201, body = Room), (status = 400), (status = 409)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateRoomBody>,
) -> ApiResult<(StatusCode, Json<Room>)> {
    if !crate::validate::room_name(&body.name) {
        return Err(ApiError::bad_request(
            "name must be 1-64 characters of a-z, 0-9, '_', '-'",
        ));
    }
    let kind = check_kind(&body.kind)?;
    let topic = body.topic.unwrap_or_default();
    check_topic(&topic)?;
    let r = state
        .store
        .create_room(&NewRoom {
            id: RoomId::new(),
            name: body.name,
            kind,
            topic,
            created_by: caller.user.id,
            created_at: crate::now_ms(),
        })
        .await?;
    let mut room = Room::from(&r);
    room.role = Some(Role::Owner);
    room.last_read_seq = Some(0);
    room.unread = Some(0);
    room.mentions = Some(0);
    Ok((StatusCode::CREATED, Json(room)))
}

#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms",
    responses((status = 200, description = "{\"rooms\": [Room]}: the caller's rooms, then public rooms it is not in")))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let mine = state.store.rooms_of(caller.user.id).await?;
    let others = state.store.public_rooms_outside(caller.user.id).await?;
    let mut rooms: Vec<Room> = mine
        .iter()
        .map(|l| {
            let mut r = Room::from(&l.room);
            r.role = Some(l.role);
            r.last_read_seq = Some(l.last_read_seq);
            r.unread = Some(l.unread);
            r.mentions = Some(l.mentions);
            r
        })
        .collect();
    rooms.extend(others.iter().map(Room::from));
    Ok(Json(json!({"rooms": rooms})))
}

#[utoipa::path(get, path = "/api/v1/rooms/{id}", tag = "rooms",
    params(("id" = uuid::Uuid, Path, description = "room id")),
    responses((status = 200, body = Room), (status = 404)))]
pub async fn get_room(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
) -> ApiResult<Json<Room>> {
    let (r, member) = state.readable_room(id, caller.user.id).await?;
    Ok(Json(crate::model::room_for_member(&r, member)))
}

fn can_moderate(caller: &Caller, member: Option<&MemberRecord>) -> bool {
    caller.is_admin || member.is_some_and(|m| m.role.moderates())
}

#[utoipa::path(patch, path = "/api/v1/rooms/{id}", tag = "rooms", request_body = UpdateRoomBody,
    params(("id" = uuid::Uuid, Path, description = "room id")),
    responses((status = 200, body = Room), (status = 403), (status = 404), (status = 409)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
    ApiJson(body): ApiJson<UpdateRoomBody>,
) -> ApiResult<Json<Room>> {
    let (r, member) = state.readable_room(id, caller.user.id).await?;
    if !can_moderate(&caller, member.as_ref()) {
        return Err(ApiError::forbidden(
            "only the owner, a moderator or an admin may change the room",
        ));
    }
    refuse_if_managed(&r)?;
    if r.kind == RoomKind::Direct {
        return Err(ApiError::conflict("a direct room cannot be changed"));
    }
    let kind = body.kind.as_deref().map(check_kind).transpose()?;
    if let Some(t) = &body.topic {
        check_topic(t)?;
    }
    if let Some(s) = body.slow_mode_seconds
        && !(0..=86_400).contains(&s)
    {
        return Err(ApiError::bad_request(
            "slow_mode_seconds must be between 0 and 86400",
        ));
    }
    let changes = RoomChanges {
        topic: body.topic.as_deref(),
        kind,
        slow_mode_seconds: body.slow_mode_seconds,
        read_only: body.read_only,
        ..Default::default()
    };
    let r = state.store.update_room(id, &changes).await?;
    chat::room_updated(&state, &r);
    Ok(Json(Room::from(&r)))
}

#[utoipa::path(delete, path = "/api/v1/rooms/{id}", tag = "rooms",
    params(("id" = uuid::Uuid, Path, description = "room id")),
    responses((status = 204, description = "archived"), (status = 403), (status = 404)))]
pub async fn archive(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
) -> ApiResult<StatusCode> {
    let (r, member) = state.readable_room(id, caller.user.id).await?;
    let is_owner = member.as_ref().is_some_and(|m| m.role == Role::Owner);
    if !(is_owner || caller.is_admin) {
        return Err(ApiError::forbidden(
            "only the owner or an admin may archive the room",
        ));
    }
    refuse_if_managed(&r)?;
    state.store.archive_room(id).await?;
    if let Some(r) = state.store.room(id).await? {
        chat::room_updated(&state, &r);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/rooms/{id}/join", tag = "rooms",
    params(("id" = uuid::Uuid, Path, description = "room id")),
    responses((status = 200, body = Room), (status = 404)))]
pub async fn join(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
) -> ApiResult<Json<Room>> {
    let (r, member) = state.readable_room(id, caller.user.id).await?;
    if r.kind != RoomKind::Public && member.is_none() {
        return Err(ApiError::not_found("no such room"));
    }
    if r.archived {
        return Err(ApiError::forbidden("the room is archived"));
    }
    chat::add_member(&state, id, caller.user.id, Role::Member).await?;
    let r = state
        .store
        .room(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such room"))?;
    let m = state.store.member(id, caller.user.id).await?;
    Ok(Json(crate::model::room_for_member(&r, m)))
}

#[utoipa::path(post, path = "/api/v1/rooms/{id}/leave", tag = "rooms",
    params(("id" = uuid::Uuid, Path, description = "room id")),
    responses((status = 204), (status = 404)))]
pub async fn leave(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
) -> ApiResult<StatusCode> {
    let (r, _) = state.readable_room(id, caller.user.id).await?;
    if state.store.remove_member(id, caller.user.id).await? {
        // A public room stays readable; any other stops reaching the user's sockets.
        state
            .hub
            .member_removed(id, caller.user.id, false, r.kind != RoomKind::Public);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/rooms/{id}/members", tag = "rooms",
    params(("id" = uuid::Uuid, Path, description = "room id")),
    responses((status = 200, description = "{\"members\": [{\"user\": User, \"role\", \"online\"}]}"), (status = 404)))]
pub async fn members(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
) -> ApiResult<Json<Value>> {
    state.readable_room(id, caller.user.id).await?;
    let online = state.hub.online(id).await;
    let list: Vec<Value> = state
        .store
        .members(id)
        .await?
        .iter()
        .map(|m| {
            json!({
                "user": state.user_json(&m.user),
                "role": m.role,
                "online": online.contains(&m.user.id),
                "last_read_seq": m.last_read_seq,
                "last_delivered_seq": m.last_delivered_seq,
            })
        })
        .collect();
    Ok(Json(json!({"members": list})))
}

#[utoipa::path(post, path = "/api/v1/rooms/{id}/members", tag = "rooms", request_body = UserIdBody,
    params(("id" = uuid::Uuid, Path, description = "room id")),
    responses((status = 201), (status = 403), (status = 404)))]
pub async fn invite(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RoomId>,
    ApiJson(body): ApiJson<UserIdBody>,
) -> ApiResult<StatusCode> {
    // A global admin (an admin bot, say) may add members to any room, itself included.
    let (r, member) = if caller.is_admin {
        let r = state
            .store
            .room(id)
            .await?
            .ok_or_else(|| ApiError::not_found("no such room"))?;
        (r, state.store.member(id, caller.user.id).await?)
    } else {
        state.readable_room(id, caller.user.id).await?
    };
    if !can_moderate(&caller, member.as_ref()) {
        return Err(ApiError::forbidden(
            "only the owner or a moderator may invite",
        ));
    }
    if r.kind == RoomKind::Direct {
        return Err(ApiError::conflict(
            "nobody can be invited into a direct room",
        ));
    }
    if r.archived {
        return Err(ApiError::forbidden("the room is archived"));
    }
    state
        .store
        .user(body.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    refuse_if_blocked(&state, &caller, body.user_id).await?;
    chat::add_member(&state, id, body.user_id, Role::Member).await?;
    Ok(StatusCode::CREATED)
}

#[utoipa::path(delete, path = "/api/v1/rooms/{id}/members/{user_id}", tag = "rooms",
    params(("id" = uuid::Uuid, Path, description = "room id"), ("user_id" = uuid::Uuid, Path, description = "user id")),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn kick(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, user_id)): ApiPath<(RoomId, UserId)>,
) -> ApiResult<StatusCode> {
    moderated_member(&state, &caller, id, user_id, "remove").await?;
    state.store.remove_member(id, user_id).await?;
    state.hub.member_removed(id, user_id, true, true);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/dms", tag = "rooms", request_body = UserIdBody,
    responses((status = 200, body = Room), (status = 201, body = Room),
        (status = 400, description = "user_id is the caller's own: a direct room is between two users"), (status = 404)))]
pub async fn direct(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<UserIdBody>,
) -> ApiResult<(StatusCode, Json<Room>)> {
    if body.user_id == caller.user.id {
        return Err(ApiError::bad_request("user_id must be another user"));
    }
    state
        .store
        .user(body.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    refuse_if_blocked(&state, &caller, body.user_id).await?;
    let (r, created) = state
        .store
        .direct_room(caller.user.id, body.user_id, crate::now_ms())
        .await?;
    if created {
        for user in [caller.user.id, body.user_id] {
            state.hub.member_added(r.id, user);
        }
    }
    let room = crate::model::room_for_member(&r, state.store.member(r.id, caller.user.id).await?);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(room)))
}

/// A person who blocks the caller cannot be invited or messaged directly by them: 403.
async fn refuse_if_blocked(state: &AppState, caller: &Caller, other: UserId) -> ApiResult<()> {
    if state
        .store
        .blockers_of(caller.user.id, &[other])
        .await?
        .is_empty()
    {
        Ok(())
    } else {
        Err(ApiError::forbidden("this person has blocked you"))
    }
}

pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(b) = serde_json::from_slice::<CreateRoomBody>(data) {
        let _ = crate::validate::room_name(&b.name);
        let _ = check_kind(&b.kind);
        let _ = b.topic.as_deref().map(check_topic);
    }
    if let Ok(b) = serde_json::from_slice::<UpdateRoomBody>(data) {
        let _ = b.kind.as_deref().map(check_kind);
        let _ = b.topic.as_deref().map(check_topic);
    }
    let _ = serde_json::from_slice::<UserIdBody>(data);
}

/// Checks that the caller may `action` (remove, mute) `user_id` in the room: owner,
/// moderator or admin; the target a member who is not the owner.
async fn moderated_member(
    state: &AppState,
    caller: &Caller,
    room: RoomId,
    user_id: UserId,
    action: &str,
) -> ApiResult<()> {
    let (_, member) = state.readable_room(room, caller.user.id).await?;
    if !can_moderate(caller, member.as_ref()) {
        return Err(ApiError::forbidden(format!(
            "only the owner or a moderator may {action} members"
        )));
    }
    let target = state
        .store
        .member(room, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("the user is not a member"))?;
    if target.role == Role::Owner && !caller.is_admin {
        return Err(ApiError::forbidden(format!(
            "the owner cannot be {action}d"
        )));
    }
    Ok(())
}

#[utoipa::path(post, operation_id = "mute_member", path = "/api/v1/rooms/{id}/members/{user_id}/mute", tag = "rooms",
    request_body = MuteBody,
    params(("id" = uuid::Uuid, Path, description = "room id"), ("user_id" = uuid::Uuid, Path, description = "user id")),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn mute(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, user_id)): ApiPath<(RoomId, UserId)>,
    OptionalJson(body): OptionalJson<MuteBody>,
) -> ApiResult<StatusCode> {
    moderated_member(&state, &caller, id, user_id, "mute").await?;
    let until = Some(crate::moderation::until(
        crate::now_ms(),
        body.duration_seconds,
    ));
    state.store.set_member_mute(id, user_id, until).await?;
    state.hub.control(ControlEvent::MemberMuted {
        room: id,
        user: user_id,
        until,
    });
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, operation_id = "unmute_member", path = "/api/v1/rooms/{id}/members/{user_id}/mute", tag = "rooms",
    params(("id" = uuid::Uuid, Path, description = "room id"), ("user_id" = uuid::Uuid, Path, description = "user id")),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn unmute(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, user_id)): ApiPath<(RoomId, UserId)>,
) -> ApiResult<StatusCode> {
    moderated_member(&state, &caller, id, user_id, "mute").await?;
    state.store.set_member_mute(id, user_id, None).await?;
    state.hub.control(ControlEvent::MemberMuted {
        room: id,
        user: user_id,
        until: None,
    });
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/api/v1/rooms/{id}/members/{user_id}", tag = "rooms", request_body = RoleBody,
    params(("id" = uuid::Uuid, Path, description = "room id"), ("user_id" = uuid::Uuid, Path, description = "user id")),
    responses((status = 204), (status = 400), (status = 403), (status = 404)))]
pub async fn set_role(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, user_id)): ApiPath<(RoomId, UserId)>,
    ApiJson(body): ApiJson<RoleBody>,
) -> ApiResult<StatusCode> {
    let role = match Role::parse(&body.role) {
        Some(r @ (Role::Moderator | Role::Member)) => r,
        _ => {
            return Err(ApiError::bad_request(
                "role must be \"moderator\" or \"member\"",
            ));
        }
    };
    let (r, member) = state.readable_room(id, caller.user.id).await?;
    let is_owner = member.as_ref().is_some_and(|m| m.role == Role::Owner);
    if !(is_owner || caller.is_admin) {
        return Err(ApiError::forbidden(
            "only the owner or an admin may change roles",
        ));
    }
    refuse_if_managed(&r)?;
    let target = state
        .store
        .member(id, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("the user is not a member"))?;
    if target.role == Role::Owner {
        return Err(ApiError::forbidden("the owner's role cannot be changed"));
    }
    state.store.set_role(id, user_id, role).await?;
    // The member's sockets re-read their rules (a moderator escapes slow mode and read-only).
    state.hub.control(ControlEvent::RoomChanged { room: id });
    Ok(StatusCode::NO_CONTENT)
}
