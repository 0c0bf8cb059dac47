//! The JSON shapes the REST API returns and the frames carry: [`User`], [`Room`], [`Message`].
//! Times are RFC 3339 UTC strings with milliseconds.

use serde::{Deserialize, Serialize};

use crate::ids::{AttachmentId, MessageId, RoomId, UserId};

/// A closed set's value the reader does not know (sent by a newer server, or stored by one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    /// What the value was meant to be ("room kind", "role").
    pub what: &'static str,
    pub value: String,
}

impl std::fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown {} {:?}", self.what, self.value)
    }
}

impl std::error::Error for UnknownValue {}

/// Declares a closed set of values written as lowercase text.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident ($what:literal) { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
        #[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownValue;
            fn try_from(value: String) -> Result<Self, UnknownValue> {
                $name::parse(&value).ok_or(UnknownValue { what: $what, value })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// Who may find and read a room.
    RoomKind ("room kind") {
        /// Listed to everyone; anyone may read and join.
        Public = "public",
        /// Seen only by its members.
        Private = "private",
        /// The conversation of two people.
        Direct = "direct",
    }
}

text_enum! {
    /// A member's standing in a room.
    Role ("role") {
        Owner = "owner",
        Moderator = "moderator",
        Member = "member",
    }
}

impl Role {
    /// Owners and moderators moderate (delete others' messages, mute, post in read-only rooms).
    pub fn moderates(self) -> bool {
        matches!(self, Role::Owner | Role::Moderator)
    }
}

/// An account: a person or a bot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
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

/// A room as a listing or a member sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
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
    /// Seconds members wait between messages (0: off).
    pub slow_mode_seconds: i64,
    /// Only owners and moderators may post.
    pub read_only: bool,
    /// The reader's role (in a member's listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The reader's read marker (in a member's listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_read_seq: Option<i64>,
    /// Messages after the read marker (in a member's listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<i64>,
    /// For a member's listing: unread messages by others that mention them or `@room`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentions: Option<i64>,
    /// The room's change counter.
    pub rev: i64,
}

/// An uploaded file attached to a message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct Attachment {
    pub id: AttachmentId,
    pub room: RoomId,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    /// Where to download it (relative to the server, with the same bearer token).
    pub url: String,
}

/// One emoji's reactions on a message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct ReactionCount {
    pub emoji: String,
    pub count: i64,
    /// The first users to react with it, in the order they did.
    pub users: Vec<UserId>,
}

/// A message as the REST API and the `message`, `message_edited` and `message_updated` frames
/// show it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct Message {
    pub id: MessageId,
    pub room: RoomId,
    /// The message's place in its room: 1, 2, 3, … with no gaps.
    pub seq: i64,
    pub user: UserId,
    pub username: String,
    /// Empty once deleted.
    pub body: String,
    pub created_at: String,
    pub edited_at: Option<String>,
    pub deleted: bool,
    /// The sender's idempotency key, echoed.
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
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct ThreadSummary {
    pub reply_count: i64,
    pub last_reply_seq: i64,
    pub last_reply_at: String,
    /// Up to 10 repliers, in order of their first reply.
    pub participants: Vec<UserId>,
}
