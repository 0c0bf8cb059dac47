//! The WebSocket protocol's frames, both ways, defined in the protocol crate (which the Rust
//! client shares): [`ClientFrame`] is parsed once with serde, [`ServerFrame`] is every frame
//! the server sends, encoded once ([`Encode::encode`]) into bytes that every recipient shares.
//! Adding a frame type is adding a variant there; nothing else builds frames. Nothing here
//! does I/O.

use std::borrow::Cow;

use serde::Deserialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use confab_protocol::frames::{
    ClientFrame, NotificationReason, PresenceStatus, ReceiptKind, ServerFrame, close,
};

use crate::error::ApiError;

/// Encoding a server frame once, for every recipient to share.
pub trait Encode {
    fn encode(&self) -> Utf8Bytes;
}

impl Encode for ServerFrame<'_> {
    fn encode(&self) -> Utf8Bytes {
        Utf8Bytes::from(self.to_json())
    }
}

/// The `error` frame for a failure; `reference` echoes the client_id or room concerned.
pub fn error_frame(e: &ApiError, reference: Option<&str>) -> Utf8Bytes {
    ServerFrame::Error {
        code: Cow::Borrowed(e.code()),
        message: e.public_message(),
        reference: reference.map(Cow::Borrowed),
        retry_after_ms: e.retry_after_ms(),
    }
    .encode()
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
    use crate::ids::RoomId;

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
            serde_json::from_str(error_frame(&e, Some("c1")).as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "code": "rate_limited", "message": "slow down",
                "ref": "c1", "retry_after_ms": 250})
        );
        let v: serde_json::Value =
            serde_json::from_str(error_frame(&ApiError::bad_request("no"), None).as_str()).unwrap();
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
