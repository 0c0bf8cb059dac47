//! The JSON shapes of the protocol (defined in the protocol crate), built from store records.
//! Nothing here does I/O.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::store::{AttachmentRecord, MemberRecord, MessageRecord, RoomRecord, UserRecord};
pub use confab_protocol::model::{
    Attachment, Message, ReactionCount, Role, Room, RoomKind, ThreadSummary, User,
};

/// RFC 3339 UTC with milliseconds, as every time in the protocol.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A user as the API shows it.
pub fn user(u: &UserRecord, is_admin: bool) -> User {
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

/// A room as its member sees it: with role and read marker.
pub fn room_for_member(r: &RoomRecord, member: Option<MemberRecord>) -> Room {
    let mut room = Room::from(r);
    if let Some(m) = member {
        room.role = Some(m.role);
        room.last_read_seq = Some(m.last_read_seq);
    }
    room
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
