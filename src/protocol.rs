//! The WebSocket protocol's frames, both ways: [`ClientFrame`] is parsed once with serde,
//! [`ServerFrame`] is every frame the server sends, encoded once ([`ServerFrame::encode`]) into
//! bytes that every recipient shares. Adding a frame type is adding a variant here; nothing
//! else builds frames. The REST shapes the frames carry (`Message`, `Room`, `User`) are in
//! [`crate::model`]. Nothing here does I/O.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::ids::{MessageId, RoomId, UserId};
use crate::model::{Message, Room, User};

#[derive(Deserialize, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Auth {
        token: String,
    },
    Subscribe {
        room: RoomId,
        since: Option<i64>,
        since_rev: Option<i64>,
    },
    Unsubscribe {
        room: RoomId,
    },
    Message {
        room: RoomId,
        body: String,
        client_id: Option<String>,
        reply_to: Option<i64>,
        #[serde(default)]
        attachments: Vec<String>,
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
    Delivered {
        room: RoomId,
        seq: i64,
    },
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
}

/// Every frame the server sends. Borrowed where the content already exists (a message, a
/// room), so building a frame copies nothing before it is encoded.
#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The first frame of every connection.
    Hello {
        user: User,
        connection_id: String,
        heartbeat_ms: u64,
    },
    Subscribed {
        room: RoomId,
        last_seq: i64,
        presence: Vec<UserId>,
        /// Only in answer to a `since`: whether the missed messages follow.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// The room's change counter.
        rev: i64,
    },
    Unsubscribed {
        room: RoomId,
    },
    Message(&'a Message),
    Ack {
        client_id: Option<&'a str>,
        id: MessageId,
        seq: i64,
        room: RoomId,
        created_at: String,
    },
    MessageEdited(&'a Message),
    MessageDeleted {
        room: RoomId,
        seq: i64,
        id: MessageId,
        rev: i64,
    },
    /// A change to an existing message (a reaction, a pin, a thread's summary, a resume's
    /// catch-up): the whole message.
    MessageUpdated(&'a Message),
    Reaction {
        room: RoomId,
        seq: i64,
        user: UserId,
        emoji: &'a str,
        active: bool,
        rev: i64,
    },
    /// To a user's sockets not subscribed to the room.
    Notification {
        reason: NotificationReason,
        room: RoomId,
        message: &'a Message,
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
    RoomUpdated(&'a Room),
    /// The user became a member of a room (invited, a DM opened, joined elsewhere).
    RoomJoined(&'a Room),
    Kicked {
        room: RoomId,
    },
    Error {
        code: &'static str,
        message: String,
        /// The `client_id` or `room` of the frame that failed.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Pong,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NotificationReason {
    Mention,
    Dm,
    ThreadReply,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

impl ServerFrame<'_> {
    /// Encodes the frame once, for every recipient to share.
    pub fn encode(&self) -> Utf8Bytes {
        Utf8Bytes::from(serde_json::to_string(self).expect("server frames serialize"))
    }

    /// The `error` frame for a failure; `reference` echoes the client_id or room concerned.
    pub fn error(e: &'_ ApiError, reference: Option<&'_ str>) -> Utf8Bytes {
        ServerFrame::Error {
            code: e.code(),
            message: e.public_message(),
            reference,
            retry_after_ms: e.retry_after_ms(),
        }
        .encode()
    }
}

/// What an `error` frame's `ref` can echo from a frame that did not parse.
#[derive(Deserialize, Default)]
struct Loose {
    client_id: Option<String>,
    room: Option<String>,
}

/// Parses a text frame; on failure, the message names the problem and `ref` what it can.
pub fn parse(text: &str) -> Result<ClientFrame, (String, Option<String>)> {
    serde_json::from_str(text).map_err(|e| {
        let loose: Loose = serde_json::from_str(text).unwrap_or_default();
        let reference = loose.client_id.or(loose.room);
        let msg = if e.is_syntax() || e.is_eof() {
            format!("the frame is not valid JSON: {e}")
        } else {
            format!(
                "invalid frame: {}",
                crate::error::in_json_words(&e.to_string())
            )
        };
        (msg, reference)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_frame_kind() {
        let room = RoomId::new();
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
        assert_eq!(
            parse(&format!(
                r#"{{"type":"subscribe","room":"{room}","since":3}}"#
            )),
            Ok(ClientFrame::Subscribe {
                room,
                since: Some(3),
                since_rev: None,
            })
        );
        assert_eq!(
            parse(&format!(
                r#"{{"type":"message","room":"{room}","body":"hi","client_id":"c1","extra":1}}"#
            )),
            Ok(ClientFrame::Message {
                room,
                body: "hi".into(),
                client_id: Some("c1".into()),
                reply_to: None,
                attachments: vec![],
                thread: None,
            })
        );
    }

    #[test]
    fn server_frames_carry_their_type_first_and_only_the_fields_that_apply() {
        let room = RoomId::new();
        let text = ServerFrame::Unsubscribed { room }.encode();
        assert_eq!(
            text.as_str(),
            format!(r#"{{"type":"unsubscribed","room":"{room}"}}"#)
        );
        let e = ApiError::RateLimited {
            message: "slow down".into(),
            retry_after_ms: 250,
        };
        let v: serde_json::Value =
            serde_json::from_str(ServerFrame::error(&e, Some("c1")).as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "code": "rate_limited", "message": "slow down",
                "ref": "c1", "retry_after_ms": 250})
        );
        let v: serde_json::Value =
            serde_json::from_str(ServerFrame::error(&ApiError::bad_request("no"), None).as_str())
                .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "code": "bad_request", "message": "no"})
        );
        let subscribed = ServerFrame::Subscribed {
            room,
            last_seq: 4,
            presence: vec![],
            recovered: None,
            rev: 9,
        }
        .encode();
        assert!(!subscribed.as_str().contains("recovered"), "{subscribed}");
    }

    #[test]
    fn bad_frames_name_the_problem_and_echo_a_reference() {
        let (msg, r) = parse(r#"{"type":"dance","client_id":"c9"}"#).unwrap_err();
        assert!(msg.contains("dance"), "{msg}");
        assert_eq!(r.as_deref(), Some("c9"));
        let (msg, _) = parse("not json").unwrap_err();
        assert!(msg.contains("not valid JSON"), "{msg}");
        let (msg, r) = parse(r#"{"type":"subscribe","room":"nope"}"#).unwrap_err();
        assert!(msg.contains("UUID") || msg.contains("uuid"), "{msg}");
        assert_eq!(r.as_deref(), Some("nope"));
    }
}
