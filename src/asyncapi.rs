//! The AsyncAPI 3 description of the WebSocket protocol at `/ws`, generated from the protocol
//! crate's frame types, so it cannot drift from what the server parses and sends. Served at
//! `/api/v1/asyncapi.json`, printed by `confab asyncapi`, and kept in `docs/asyncapi.json`
//! (a test checks the copy is current).
//!
//! Each frame is a message of its own (`client.subscribe`, `server.message`, …) whose payload
//! schema is one variant of [`ClientFrame`] or [`ServerFrame`]; the shapes they share (`Message`,
//! `Room`, `User`, the ids) are component schemas. The schemas are JSON Schema draft-07, the
//! base of AsyncAPI's default schema format. In AsyncAPI's terms the application described is
//! the server: it *receives* client frames and *sends* server frames.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::protocol::{ClientFrame, ServerFrame};

const SCHEMAS: &str = "/components/schemas/";

/// The frames of one direction: (the frame's `type`, its payload schema), in declaration order,
/// plus the component schemas they refer to.
fn frames<T: JsonSchema>(settings: SchemaSettings) -> (Vec<(String, Value)>, Map<String, Value>) {
    let mut generator = settings
        .with(|s| s.definitions_path = SCHEMAS.into())
        .into_generator();
    let root = generator.root_schema_for::<T>().to_value();
    let mut definitions = generator.take_definitions(true);
    let variants = root
        .get("oneOf")
        .and_then(Value::as_array)
        .expect("frame enums are tagged: one schema per frame");
    let frames = variants
        .iter()
        .map(|v| {
            let name = v["properties"]["type"]["const"]
                .as_str()
                .or_else(|| v["properties"]["type"]["enum"][0].as_str())
                .expect("each frame names its type")
                .to_string();
            let mut schema = v.clone();
            if let Some(o) = schema.as_object_mut() {
                o.remove("$schema");
            }
            (name, schema)
        })
        .collect();
    // A definition the root schema kept for itself is not a component.
    definitions.remove(std::any::type_name::<T>());
    (frames, definitions)
}

/// The whole AsyncAPI document.
pub fn document() -> Value {
    let (client, mut schemas) = frames::<ClientFrame>(SchemaSettings::draft07().for_deserialize());
    let (server, server_schemas) =
        frames::<ServerFrame<'static>>(SchemaSettings::draft07().for_serialize());
    schemas.extend(server_schemas);

    let mut messages = Map::new();
    let mut channel_messages = Map::new();
    let mut receive = Vec::new();
    let mut send = Vec::new();
    for (side, list, ops) in [
        ("client", &client, &mut receive),
        ("server", &server, &mut send),
    ] {
        for (name, payload) in list {
            let key = format!("{side}.{name}");
            let description = payload
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut message = json!({
                "name": name,
                "title": format!("{} `{name}` frame", if side == "client" { "Client" } else { "Server" }),
                "contentType": "application/json",
                "payload": payload,
            });
            if !description.is_empty() {
                message["summary"] = Value::String(description);
            }
            messages.insert(key.clone(), message);
            channel_messages.insert(
                key.clone(),
                json!({"$ref": format!("#/components/messages/{key}")}),
            );
            ops.push(json!({"$ref": format!("#/channels/chat/messages/{key}")}));
        }
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "confab WebSocket protocol",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Frames of confab's chat WebSocket at /ws: JSON text frames whose `type` names them. \
                Authenticate with `?token=` on the upgrade request or an `auth` frame first; the server \
                answers `hello`. docs/protocol.md is the reference for what each frame means, the order \
                and delivery guarantees, close codes and how to reconnect.",
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "localhost:8080",
                "protocol": "ws",
                "description": "`cargo run --release` (or `wss` behind TLS)",
                "security": [{"$ref": "#/components/securitySchemes/token"}],
            }
        },
        "channels": {
            "chat": {
                "address": "/ws",
                "title": "The chat socket",
                "description": "One socket per client carries every room it subscribes to.",
                "messages": channel_messages,
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "token": {
                                    "type": "string",
                                    "description": "An access token (or bot API key); without it, send an `auth` frame first.",
                                }
                            }
                        },
                        "bindingVersion": "0.1.0",
                    }
                },
            }
        },
        "operations": {
            "receiveClientFrames": {
                "action": "receive",
                "title": "Frames a client sends",
                "channel": {"$ref": "#/channels/chat"},
                "messages": receive,
            },
            "sendServerFrames": {
                "action": "send",
                "title": "Frames the server sends",
                "channel": {"$ref": "#/channels/chat"},
                "messages": send,
            },
        },
        "components": {
            "securitySchemes": {
                "token": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "An access token from POST /api/v1/auth/login (or a bot API key).",
                }
            },
            "messages": messages,
            "schemas": schemas,
        },
    })
}

/// The document as `docs/asyncapi.json` keeps it (pretty, ending in a newline).
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("the document serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_is_a_message_with_its_type_as_a_constant() {
        let doc = document();
        let messages = doc["components"]["messages"].as_object().unwrap();
        for name in [
            "client.auth",
            "client.subscribe",
            "client.message",
            "client.react",
            "client.ping",
            "server.hello",
            "server.subscribed",
            "server.message",
            "server.ack",
            "server.notification",
            "server.error",
            "server.pong",
        ] {
            let payload = &messages[name]["payload"];
            let text = payload.to_string();
            let frame = name.split_once('.').unwrap().1;
            assert!(text.contains(&format!("\"{frame}\"")), "{name}: {text}");
        }
        assert_eq!(
            messages.len(),
            doc["operations"]["receiveClientFrames"]["messages"]
                .as_array()
                .unwrap()
                .len()
                + doc["operations"]["sendServerFrames"]["messages"]
                    .as_array()
                    .unwrap()
                    .len()
        );
        // Every reference resolves inside the document.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/").skip(1) {
            let path = r.split('"').next().unwrap();
            let mut at = &doc;
            for part in path.split('/') {
                at = &at[part];
            }
            assert!(!at.is_null(), "dangling $ref #/{path}");
        }
    }

    #[test]
    fn the_committed_copy_is_current() {
        let committed =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.json"))
                .unwrap_or_default();
        assert!(
            committed == document_text(),
            "docs/asyncapi.json is out of date: run `cargo run -- asyncapi > docs/asyncapi.json`"
        );
    }
}
