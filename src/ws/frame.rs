//! Client → server frames, parsed once with serde. Adding a frame type is adding a variant.

use serde::Deserialize;

use crate::ids::RoomId;

#[derive(Deserialize, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Auth {
        token: String,
    },
    Subscribe {
        room: RoomId,
        since: Option<i64>,
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
    Ping,
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
            format!("invalid frame: {e}")
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
                since: Some(3)
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
            })
        );
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
