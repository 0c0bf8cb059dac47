//! The chat operations every entry point uses: REST handlers, WebSocket connections, bots and
//! the operator call these, so a rule is written once. Sending a message is
//! [`submit_message`]: checks, send rules, attachments, slow mode, the metric, then the
//! group-commit writer. Edits, deletes, markers and membership changes, each with the notice
//! the room's subscribers or the user's sockets get.
//!
//! Nothing here knows how a request arrived: callers pass who acts and what, and turn the
//! [`ApiError`] into a REST answer or an `error` frame.

use std::future::Future;

use tokio::sync::oneshot;

use crate::commit::{Pending, Reply};
use crate::error::{ApiError, ApiResult};
use crate::hub::ControlEvent;
use crate::ids::{AttachmentId, MessageId, RoomId, UserId};
use crate::model::{Attachment, Message, Room};
use crate::moderation::SendRules;
use crate::policy::Policy;
use crate::protocol::Encode as _;
use crate::protocol::{ReceiptKind, ServerFrame};
use crate::state::AppState;
use crate::store::{
    Change, CommitOutcome, MAX_EMOJI_PER_MESSAGE, MAX_PINS, Marker, MessageRecord, NewMessage,
    Role, RoomRecord, UserRecord,
};

/// The longest `client_id` a message may carry.
pub const MAX_CLIENT_ID: usize = 128;
/// At most this many attachments per message.
pub const MAX_ATTACHMENTS: usize = 10;

/// Who sends a message: the parts of the user the send path needs.
pub struct Author<'a> {
    pub id: UserId,
    pub username: &'a str,
    /// The user's installation-wide mute, as the caller knows it (a socket keeps it current
    /// from control events; REST reads it with the user).
    pub muted_until: Option<i64>,
    /// An admin by its own account (an installation's `--admins` are found by username).
    pub admin: bool,
}

impl<'a> From<&'a UserRecord> for Author<'a> {
    fn from(u: &'a UserRecord) -> Self {
        Author {
            id: u.id,
            username: &u.username,
            muted_until: u.muted_until,
            admin: u.admin,
        }
    }
}

/// A message as a client asks for it, before any check.
pub struct Draft {
    pub body: String,
    pub client_id: Option<String>,
    pub reply_to: Option<i64>,
    /// Ids of attachments the sender uploaded to the room.
    pub attachments: Vec<String>,
    /// A reply in the thread of the message with this seq.
    pub thread: Option<i64>,
}

/// Checks a message body and client id against the protocol's limits.
pub fn check_message(
    policy: &Policy,
    body: &str,
    client_id: Option<&str>,
    reply_to: Option<i64>,
) -> ApiResult<()> {
    policy.check_body(body)?;
    if body.trim().is_empty() {
        return Err(ApiError::bad_request("body must not be empty"));
    }
    if let Some(c) = client_id
        && (c.is_empty() || c.chars().count() > MAX_CLIENT_ID)
    {
        return Err(ApiError::bad_request(format!(
            "client_id must be 1-{MAX_CLIENT_ID} characters"
        )));
    }
    if let Some(r) = reply_to
        && r < 1
    {
        return Err(ApiError::bad_request(
            "reply_to must be the seq of a message (1 or more)",
        ));
    }
    Ok(())
}

/// Sends a message: the one send path of every entry point. Checks the draft, then the send
/// rules `rules` resolves to (the caller's membership: read from the store, or from a
/// socket's cache), mutes, attachments and slow mode, and queues the message for the writer.
/// The outcome reaches `reply` after the commit. A message refused for any reason costs no
/// slow-mode slot.
pub async fn submit_message(
    state: &AppState,
    author: Author<'_>,
    room: RoomId,
    draft: Draft,
    rules: impl Future<Output = ApiResult<SendRules>>,
    reply: Reply,
) -> ApiResult<()> {
    check_message(
        &state.policies.current(),
        &draft.body,
        draft.client_id.as_deref(),
        draft.reply_to,
    )?;
    let rules = rules.await?;
    rules.check(author.muted_until, crate::now_ms())?;
    // Nobody writes to a person who blocks them (checked per message: a block takes effect
    // at once, whatever a socket has cached).
    if rules.direct && state.store.blocked_in(room, author.id).await? {
        return Err(ApiError::forbidden("this person has blocked you"));
    }
    if let Some(root) = draft.thread {
        check_thread_root(state, room, root).await?;
    }
    let attachments = attachments_for_message(state, author.id, room, &draft.attachments).await?;
    let (mention_names, mentions_room) = crate::validate::mentions(&draft.body);
    let notifies =
        rules.direct || draft.thread.is_some() || mentions_room || !mention_names.is_empty();
    state.slow_mode.take(&rules, room, author.id)?;
    state.metrics.messages_received.inc();
    state
        .writer
        .submit(Pending {
            message: NewMessage {
                id: MessageId::new(),
                room_id: room,
                user_id: author.id,
                username: author.username.to_owned(),
                body: draft.body,
                client_id: draft.client_id,
                reply_to: draft.reply_to,
                created_at: crate::now_ms(),
                attachments,
                thread: draft.thread,
                mention_names,
                mentions_room,
            },
            reply,
            notifies,
            direct: rules.direct,
        })
        .await
}

/// A thread's root: a message of this room that is not deleted and not itself a reply.
async fn check_thread_root(state: &AppState, room: RoomId, root: i64) -> ApiResult<()> {
    let bad = || {
        ApiError::bad_request(
            "thread must be the seq of a message in this room that is not deleted and not a reply",
        )
    };
    if root < 1 {
        return Err(bad());
    }
    match state.store.message(room, root).await? {
        Some(m) if !m.deleted && m.thread.is_none() => Ok(()),
        _ => Err(bad()),
    }
}

/// [`submit_message`] for a caller that waits for the commit (REST, bots): the committed
/// message, and whether it is new (false: a repeated `client_id`).
pub async fn send_message(
    state: &AppState,
    user: &UserRecord,
    room: RoomId,
    draft: Draft,
) -> ApiResult<(MessageRecord, bool)> {
    let (tx, rx) = oneshot::channel();
    submit_message(
        state,
        Author::from(user),
        room,
        draft,
        state.writable_room(room, user.id),
        Reply::Caller(tx),
    )
    .await?;
    let outcome = rx
        .await
        .map_err(|_| ApiError::Unavailable("the server is shutting down; send again".into()))??;
    match outcome {
        CommitOutcome::New(m) => Ok((m, true)),
        CommitOutcome::Duplicate(m) => Ok((m, false)),
        CommitOutcome::Rejected(why) => Err(ApiError::Forbidden(why)),
    }
}

/// The attachments a message names, checked: each uploaded by the sender into the same room.
/// Returns the JSON stored with the message.
pub async fn attachments_for_message(
    state: &AppState,
    user: UserId,
    room: RoomId,
    ids: &[String],
) -> ApiResult<Option<String>> {
    if ids.is_empty() {
        return Ok(None);
    }
    if ids.len() > MAX_ATTACHMENTS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ATTACHMENTS} attachments per message"
        )));
    }
    let mut out = Vec::with_capacity(ids.len());
    for raw in ids {
        let bad = || {
            ApiError::bad_request(format!(
                "attachment {raw} is not one you uploaded to this room"
            ))
        };
        let id: AttachmentId = raw.parse().map_err(|_| bad())?;
        let a = state.store.attachment(id).await?.ok_or_else(bad)?;
        if a.room_id != room || a.user_id != user {
            return Err(bad());
        }
        out.push(Attachment::from(&a));
    }
    Ok(Some(
        serde_json::to_string(&out).expect("attachments serialize"),
    ))
}

/// Replaces a message's body: the author only, while allowed to send. Subscribers get
/// `message_edited` with the whole message.
pub async fn edit_message(
    state: &AppState,
    user: Author<'_>,
    room: RoomId,
    seq: i64,
    body: &str,
) -> ApiResult<MessageRecord> {
    check_message(&state.policies.current(), body, None, None)?;
    let rules = state.writable_room(room, user.id).await?;
    rules.check(user.muted_until, crate::now_ms())?;
    let existing = state
        .store
        .message(room, seq)
        .await?
        .filter(|m| !m.deleted)
        .ok_or_else(|| ApiError::not_found("no such message"))?;
    if existing.user_id != user.id {
        return Err(ApiError::forbidden("only the author may edit a message"));
    }
    let edited = state
        .store
        .edit_message(room, seq, body, crate::now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("no such message"))?;
    let frame =
        ServerFrame::MessageEdited(std::borrow::Cow::Borrowed(&Message::from(&edited))).encode();
    state.hub.publish_event(room, frame, None);
    Ok(edited)
}

/// Deletes a message (it keeps its seq, with an empty body): the author, a room owner or
/// moderator, or an admin. Subscribers get `message_deleted`.
pub async fn delete_message(
    state: &AppState,
    user: Author<'_>,
    room: RoomId,
    seq: i64,
) -> ApiResult<()> {
    let (_, member) = state.readable_room(room, user.id).await?;
    let existing = state
        .store
        .message(room, seq)
        .await?
        .ok_or_else(|| ApiError::not_found("no such message"))?;
    let moderator = member.as_ref().is_some_and(|m| m.role.moderates());
    if !(existing.user_id == user.id
        || moderator
        || state.is_admin_named(user.admin, user.username))
    {
        return Err(ApiError::forbidden(
            "only the author, a moderator or an admin may delete a message",
        ));
    }
    if let Some(deleted) = state.store.delete_message(room, seq).await? {
        let frame = ServerFrame::MessageDeleted {
            room,
            seq: deleted.seq,
            id: deleted.id,
            rev: deleted.rev,
        }
        .encode();
        state.hub.publish_event(room, frame, None);
    }
    Ok(())
}

/// Adds or removes the user's reaction on a message: members of the room only. Subscribers
/// (the reacting socket included) get `reaction`; a repeat changes nothing and sends nothing.
pub async fn react(
    state: &AppState,
    user: Author<'_>,
    room: RoomId,
    seq: i64,
    emoji: &str,
    active: bool,
) -> ApiResult<()> {
    if !crate::validate::emoji(emoji) {
        return Err(ApiError::bad_request(
            "emoji must be one emoji or a :shortcode: of 1-32 of a-z, 0-9, '_', '+', '-'",
        ));
    }
    let (_, member) = state.readable_room(room, user.id).await?;
    if member.is_none() {
        return Err(ApiError::forbidden("join the room first"));
    }
    match state.store.react(room, seq, user.id, emoji, active).await? {
        Change::Made(m) => {
            let frame = ServerFrame::Reaction {
                room,
                seq,
                user: user.id,
                emoji: std::borrow::Cow::Borrowed(emoji),
                active,
                rev: m.rev,
            }
            .encode();
            state.hub.publish_event(room, frame, None);
            Ok(())
        }
        Change::Unchanged => Ok(()),
        Change::NoMessage => Err(ApiError::not_found("no such message")),
        Change::TooMany => Err(ApiError::conflict(format!(
            "a message carries at most {MAX_EMOJI_PER_MESSAGE} different emoji"
        ))),
    }
}

/// Pins or unpins a message: a room owner or moderator, or an admin. Subscribers get
/// `message_updated`.
pub async fn pin(
    state: &AppState,
    user: &UserRecord,
    room: RoomId,
    seq: i64,
    pinned: bool,
) -> ApiResult<()> {
    let (_, member) = state.readable_room(room, user.id).await?;
    let moderator = member.as_ref().is_some_and(|m| m.role.moderates());
    if !(moderator || state.is_admin(user)) {
        return Err(ApiError::forbidden(
            "only the owner, a moderator or an admin may pin messages",
        ));
    }
    let at = pinned.then(crate::now_ms);
    match state.store.pin(room, seq, at).await? {
        Change::Made(m) => {
            let frame =
                ServerFrame::MessageUpdated(std::borrow::Cow::Borrowed(&Message::from(&*m)))
                    .encode();
            state.hub.publish_event(room, frame, None);
            Ok(())
        }
        Change::Unchanged => Ok(()),
        Change::NoMessage => Err(ApiError::not_found("no such message")),
        Change::TooMany => Err(ApiError::conflict(format!(
            "a room has at most {MAX_PINS} pinned messages; unpin one first"
        ))),
    }
}

/// Moves a read or delivered marker forward (never back). True when it moved; the caller
/// decides when subscribers hear of it ([`publish_receipt`]), since sockets coalesce them.
pub async fn move_marker(
    state: &AppState,
    room: RoomId,
    user: UserId,
    marker: Marker,
    seq: i64,
) -> ApiResult<bool> {
    if seq < 0 {
        return Err(ApiError::bad_request("seq must not be negative"));
    }
    Ok(state.store.move_marker(room, user, marker, seq).await?)
}

/// Tells a room's subscribers on every pod where a user's marker is.
pub fn publish_receipt(state: &AppState, room: RoomId, user: UserId, marker: Marker, seq: i64) {
    let kind = match marker {
        Marker::Read => ReceiptKind::Read,
        Marker::Delivered => ReceiptKind::Delivered,
    };
    let frame = ServerFrame::Receipt {
        room,
        user,
        kind,
        seq,
    }
    .encode();
    state.hub.publish_event(room, frame, None);
}

/// Makes `user` a member of `room` with `role`. When they were not one before, their sockets
/// on every pod are told (`room_joined`), whoever added them and however.
pub async fn add_member(
    state: &AppState,
    room: RoomId,
    user: UserId,
    role: Role,
) -> crate::store::StoreResult<bool> {
    let added = state.store.add_member(room, user, role).await?;
    if added {
        state.hub.member_added(room, user);
    }
    Ok(added)
}

/// Tells subscribers that a room changed, and every pod's sockets to re-read its rules.
pub fn room_updated(state: &AppState, r: &RoomRecord) {
    state.hub.control(ControlEvent::RoomChanged { room: r.id });
    let frame = ServerFrame::RoomUpdated(std::borrow::Cow::Borrowed(&Room::from(r))).encode();
    state.hub.publish_event(r.id, frame, None);
}
