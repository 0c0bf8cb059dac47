//! The WebSocket frames, both ways. Every frame is a JSON object whose `type` names it.
//!
//! [`ClientFrame`] is what a client sends; [`ServerFrame`] is every frame the server sends.
//! A server builds a [`ServerFrame`] from content it already holds ([`Cow::Borrowed`]); a
//! client reads one into owned values (`ServerFrame<'static>`, [`ServerFrame::parse`]).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, RoomId, UserId};
use crate::model::{Message, Room, User};

/// A frame a client sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// The first frame when the token is not in the upgrade request.
    Auth {
        token: String,
    },
    /// Start receiving a room's events. With `since`, the messages after that seq are sent
    /// first; with `since_rev`, the changes to older messages after that rev.
    Subscribe {
        room: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_rev: Option<i64>,
    },
    Unsubscribe {
        room: RoomId,
    },
    /// Send a message; answered by an `ack` (or an `error` whose `ref` is the `client_id`).
    /// Resending with the same `client_id` never makes a second message.
    Message {
        room: RoomId,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<i64>,
        /// Ids of files uploaded to the room.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<String>,
        /// The thread root's seq, for a reply in a thread.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<i64>,
    },
    Edit {
        room: RoomId,
        seq: i64,
        body: String,
    },
    Delete {
        room: RoomId,
        seq: i64,
    },
    Typing {
        room: RoomId,
        active: bool,
    },
    /// The client has shown messages up to `seq`.
    Delivered {
        room: RoomId,
        seq: i64,
    },
    /// The user has read messages up to `seq`.
    Read {
        room: RoomId,
        seq: i64,
    },
    React {
        room: RoomId,
        seq: i64,
        emoji: String,
        active: bool,
    },
    Ping,
}

impl ClientFrame {
    /// What an `error` frame about this frame echoes in `ref`: the message's `client_id`, or
    /// the room it concerns.
    pub fn reference(&self) -> Option<String> {
        match self {
            ClientFrame::Message {
                client_id: Some(c), ..
            } => Some(c.clone()),
            ClientFrame::Message { room, .. }
            | ClientFrame::Subscribe { room, .. }
            | ClientFrame::Unsubscribe { room }
            | ClientFrame::Edit { room, .. }
            | ClientFrame::Delete { room, .. }
            | ClientFrame::Typing { room, .. }
            | ClientFrame::Delivered { room, .. }
            | ClientFrame::Read { room, .. }
            | ClientFrame::React { room, .. } => Some(room.to_string()),
            ClientFrame::Auth { .. } | ClientFrame::Ping => None,
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client frames serialize")
    }
}

/// Every frame the server sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The first frame of every connection.
    Hello {
        user: User,
        connection_id: String,
        /// The server sends WebSocket pings this often and closes a socket that leaves two
        /// unanswered (WebSocket libraries answer them; the `ping` frame is optional).
        heartbeat_ms: u64,
    },
    /// The answer to `subscribe`; with `since`, the missed messages follow it.
    Subscribed {
        room: RoomId,
        last_seq: i64,
        /// Who in the room is online.
        presence: Vec<UserId>,
        /// Only in answer to a `since`: whether the missed messages follow (`false`: too many
        /// were missed; page the history instead).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// The room's change counter.
        rev: i64,
    },
    Unsubscribed {
        room: RoomId,
    },
    /// A new message in a subscribed room, in `seq` order.
    Message(Cow<'a, Message>),
    /// The sender's message is committed.
    Ack {
        client_id: Option<Cow<'a, str>>,
        id: MessageId,
        seq: i64,
        room: RoomId,
        created_at: String,
    },
    MessageEdited(Cow<'a, Message>),
    MessageDeleted {
        room: RoomId,
        seq: i64,
        id: MessageId,
        rev: i64,
    },
    /// A change to an existing message (a reaction, a pin, a thread's summary, a resume's
    /// catch-up): the whole message.
    MessageUpdated(Cow<'a, Message>),
    Reaction {
        room: RoomId,
        seq: i64,
        user: UserId,
        emoji: Cow<'a, str>,
        active: bool,
        rev: i64,
    },
    /// To a user's sockets not subscribed to the room: a mention, a DM, a reply in a thread.
    Notification {
        reason: NotificationReason,
        room: RoomId,
        message: Cow<'a, Message>,
    },
    Typing {
        room: RoomId,
        user: UserId,
        active: bool,
    },
    Receipt {
        room: RoomId,
        user: UserId,
        kind: ReceiptKind,
        seq: i64,
    },
    Presence {
        room: RoomId,
        user: UserId,
        status: PresenceStatus,
    },
    RoomUpdated(Cow<'a, Room>),
    /// The user became a member of a room (invited, a DM opened, joined elsewhere).
    RoomJoined(Cow<'a, Room>),
    /// The user was removed from the room (kicked or banned); its events stop.
    Kicked {
        room: RoomId,
    },
    /// A frame failed; the socket stays open.
    Error {
        /// A code of the protocol's error table (`bad_request`, `rate_limited`, …).
        code: Cow<'a, str>,
        message: String,
        /// The `client_id` or `room` of the frame that failed.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Cow<'a, str>>,
        /// When to try again (`rate_limited`, `slow_mode`, `unavailable`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Pong,
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames serialize")
    }

    /// The room a frame concerns, if any.
    pub fn room(&self) -> Option<RoomId> {
        match self {
            ServerFrame::Subscribed { room, .. }
            | ServerFrame::Unsubscribed { room }
            | ServerFrame::Ack { room, .. }
            | ServerFrame::MessageDeleted { room, .. }
            | ServerFrame::Reaction { room, .. }
            | ServerFrame::Notification { room, .. }
            | ServerFrame::Typing { room, .. }
            | ServerFrame::Receipt { room, .. }
            | ServerFrame::Presence { room, .. }
            | ServerFrame::Kicked { room } => Some(*room),
            ServerFrame::Message(m)
            | ServerFrame::MessageEdited(m)
            | ServerFrame::MessageUpdated(m) => Some(m.room),
            ServerFrame::RoomUpdated(r) | ServerFrame::RoomJoined(r) => Some(r.id),
            ServerFrame::Hello { .. } | ServerFrame::Error { .. } | ServerFrame::Pong => None,
        }
    }
}

impl ServerFrame<'static> {
    /// Reads a frame the server sent.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum NotificationReason {
    Mention,
    Dm,
    ThreadReply,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

/// The WebSocket close codes the server uses, and what a client does about each.
pub mod close {
    /// Going away (a pod draining): reconnect after the `retry_after_ms=N` of the close
    /// reason, to another pod, and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// The client fell too far behind (its queue overflowed): reconnect and resume.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// The client sent a frame over 64 KiB: a client bug; do not resend it.
    pub const TOO_BIG: u16 = 1009;
    /// The token expired or was revoked: get a new token, then reconnect.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The user is banned: stop.
    pub const BANNED: u16 = 4003;
    /// The client kept sending before the time a `rate_limited` answer named.
    pub const IGNORED_RETRY_AFTER: u16 = 4008;

    /// Whether a client should reconnect (and resume) by itself after this close code.
    pub fn reconnect(code: u16) -> bool {
        !matches!(code, BANNED | TOO_BIG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_round_trip_and_omit_what_is_unset() {
        let room = RoomId::new();
        let f = ClientFrame::Subscribe {
            room,
            since: Some(3),
            since_rev: None,
        };
        let text = f.to_json();
        assert_eq!(
            text,
            format!(r#"{{"type":"subscribe","room":"{room}","since":3}}"#)
        );
        assert_eq!(serde_json::from_str::<ClientFrame>(&text).unwrap(), f);
        assert_eq!(ClientFrame::Ping.to_json(), r#"{"type":"ping"}"#);
    }

    #[test]
    fn server_frames_read_back_owned() {
        let room = RoomId::new();
        let text = ServerFrame::Error {
            code: "rate_limited".into(),
            message: "slow down".into(),
            reference: Some(Cow::Borrowed("c1")),
            retry_after_ms: Some(250),
        }
        .to_json();
        assert_eq!(
            text,
            r#"{"type":"error","code":"rate_limited","message":"slow down","ref":"c1","retry_after_ms":250}"#
        );
        let ServerFrame::Error { reference, .. } = ServerFrame::parse(&text).unwrap() else {
            panic!("{text}")
        };
        assert_eq!(reference.as_deref(), Some("c1"));
        let back = ServerFrame::parse(&format!(r#"{{"type":"kicked","room":"{room}"}}"#)).unwrap();
        assert_eq!(back.room(), Some(room));
    }
}
