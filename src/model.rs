//! The JSON shapes of PROTOCOL.md, built from store records. Nothing here does I/O.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::ids::{AttachmentId, MessageId, RoomId, UserId};
use crate::store::{AttachmentRecord, MemberRecord, MessageRecord, RoomRecord, UserRecord};
pub use crate::store::{ReactionCount, Role, RoomKind};

/// RFC 3339 UTC with milliseconds, as every time in the protocol.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Serialize, Clone, Debug, utoipa::ToSchema)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub is_admin: bool,
    pub created_at: String,
    /// The account was created by a token of the team's OpenID provider (it has no password).
    pub external: bool,
    /// The account is a bot (it signs in with API keys).
    pub bot: bool,
}

impl User {
    pub fn from_record(u: &UserRecord, is_admin: bool) -> Self {
        User {
            id: u.id,
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            is_admin,
            created_at: rfc3339(u.created_at),
            external: u.external,
            bot: u.bot,
        }
    }
}

#[derive(Serialize, Clone, Debug, utoipa::ToSchema)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub kind: RoomKind,
    pub topic: String,
    pub created_at: String,
    pub created_by: UserId,
    pub member_count: i64,
    pub last_seq: i64,
    pub archived: bool,
    pub managed_by: Option<String>,
    /// Seconds members wait between messages (0: off). An addition to PROTOCOL.md's Room.
    pub slow_mode_seconds: i64,
    /// Only owners and moderators may post. An addition to PROTOCOL.md's Room.
    pub read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_read_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<i64>,
    /// For a member's listing: unread messages by others that mention them or `@room`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mentions: Option<i64>,
    /// The room's change counter.
    pub rev: i64,
}

impl From<&RoomRecord> for Room {
    fn from(r: &RoomRecord) -> Self {
        Room {
            id: r.id,
            name: r.name.clone(),
            kind: r.kind,
            topic: r.topic.clone(),
            created_at: rfc3339(r.created_at),
            created_by: r.created_by,
            member_count: r.member_count,
            last_seq: r.last_seq,
            archived: r.archived,
            managed_by: r.managed_by.clone(),
            slow_mode_seconds: r.slow_mode_seconds,
            read_only: r.read_only,
            role: None,
            last_read_seq: None,
            unread: None,
            mentions: None,
            rev: r.rev,
        }
    }
}

impl Room {
    /// A room as its member sees it: with role and read marker.
    pub fn for_member(r: &RoomRecord, member: Option<MemberRecord>) -> Room {
        let mut room = Room::from(r);
        if let Some(m) = member {
            room.role = Some(m.role);
            room.last_read_seq = Some(m.last_read_seq);
        }
        room
    }
}

#[derive(Serialize, serde::Deserialize, Clone, Debug, utoipa::ToSchema)]
pub struct Attachment {
    pub id: AttachmentId,
    pub room: RoomId,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    pub url: String,
}

#[derive(Serialize, Clone, Debug, utoipa::ToSchema)]
pub struct Message {
    pub id: MessageId,
    pub room: RoomId,
    pub seq: i64,
    pub user: UserId,
    pub username: String,
    pub body: String,
    pub created_at: String,
    pub edited_at: Option<String>,
    pub deleted: bool,
    pub client_id: Option<String>,
    pub reply_to: Option<i64>,
    pub attachments: Vec<Attachment>,
    /// The room's `rev` at this message's last change.
    pub rev: i64,
    /// In order of each emoji's first use; `[]` when none.
    pub reactions: Vec<ReactionCount>,
    /// The root's seq, for a reply in a thread.
    pub thread: Option<i64>,
    /// On a thread's root (null on others and on roots without replies).
    pub thread_summary: Option<ThreadSummary>,
    /// Members mentioned by `@username`, in order of first appearance.
    pub mentions: Vec<UserId>,
    /// Whether the body mentions `@room`.
    pub mentions_room: bool,
    pub pinned: bool,
}

/// A thread root's replies at a glance.
#[derive(Serialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct ThreadSummary {
    pub reply_count: i64,
    pub last_reply_seq: i64,
    pub last_reply_at: String,
    /// Up to 10 repliers, in order of their first reply.
    pub participants: Vec<UserId>,
}

impl From<&MessageRecord> for Message {
    fn from(m: &MessageRecord) -> Self {
        Message {
            id: m.id,
            room: m.room_id,
            seq: m.seq,
            user: m.user_id,
            username: m.username.clone(),
            body: if m.deleted {
                String::new()
            } else {
                m.body.clone()
            },
            created_at: rfc3339(m.created_at),
            edited_at: m.edited_at.map(rfc3339),
            deleted: m.deleted,
            client_id: m.client_id.clone(),
            reply_to: m.reply_to,
            attachments: match (&m.attachments, m.deleted) {
                (Some(json), false) => serde_json::from_str(json).unwrap_or_default(),
                _ => Vec::new(),
            },
            rev: m.rev,
            reactions: m
                .reactions
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or_default(),
            thread: m.thread,
            thread_summary: m
                .thread_summary
                .as_deref()
                .and_then(|j| serde_json::from_str::<crate::store::ThreadSummary>(j).ok())
                .map(|t| ThreadSummary {
                    reply_count: t.reply_count,
                    last_reply_seq: t.last_reply_seq,
                    last_reply_at: rfc3339(t.last_reply_at),
                    participants: t.participants,
                }),
            mentions: m
                .mentions
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or_default(),
            mentions_room: m.mentions_room,
            pinned: m.pinned_at.is_some(),
        }
    }
}

#[derive(Serialize, Debug, utoipa::ToSchema)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

impl From<&AttachmentRecord> for Attachment {
    fn from(a: &AttachmentRecord) -> Self {
        Attachment {
            id: a.id,
            room: a.room_id,
            filename: a.filename.clone(),
            content_type: a.content_type.clone(),
            size: a.size,
            url: format!("/api/v1/attachments/{}", a.id),
        }
    }
}
