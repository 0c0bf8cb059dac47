//! The `ChatRoom` and `ChatPolicy` resources (`confab.dev/v1alpha1`). The CRDs shipped in
//! `k8s/crds/` and the chart are generated from these types by `confab crd`; never edit them by
//! hand. The same documents, as YAML files, configure a single process through `--config-dir`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::store::RoomKind;

pub const GROUP: &str = "confab.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "confab.dev/v1alpha1";

// The kinds a resource may declare: a direct room belongs to its two people and is never
// declared.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeclaredKind {
    Public,
    Private,
}

impl From<DeclaredKind> for RoomKind {
    fn from(kind: DeclaredKind) -> RoomKind {
        match kind {
            DeclaredKind::Public => RoomKind::Public,
            DeclaredKind::Private => RoomKind::Private,
        }
    }
}

/// A chat room kept in the state its resource declares.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "confab.dev",
    version = "v1alpha1",
    kind = "ChatRoom",
    namespaced,
    status = "ChatRoomStatus",
    shortname = "chatroom",
    printcolumn = r#"{"name":"Room","type":"string","jsonPath":".spec.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChatRoomSpec {
    /// The room's name: 1-64 of a-z, 0-9, '_', '-'. Unique in the installation.
    #[schemars(pattern(r"^[a-z0-9_-]{1,64}$"))]
    pub name: String,
    pub kind: DeclaredKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub topic: Option<String>,
    /// Seconds a member must wait between messages; 0 or absent turns slow mode off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub slow_mode_seconds: Option<i64>,
    /// Only owners and moderators may post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Messages older than this many days are deleted (they keep their seq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36500))]
    pub retention_days: Option<i64>,
    /// Usernames; users that do not exist yet are added when they register.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(r"^[a-z0-9_.-]{3,32}$")))]
    pub owners: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(r"^[a-z0-9_.-]{3,32}$")))]
    pub moderators: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(r"^[a-z0-9_.-]{3,32}$")))]
    pub members: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatRoomStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Declared usernames that have no account yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unresolved_users: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    #[default]
    Open,
    Closed,
}

/// Installation-wide rules, applied by every pod within seconds, without a restart.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "confab.dev",
    version = "v1alpha1",
    kind = "ChatPolicy",
    namespaced,
    status = "ChatPolicyStatus",
    shortname = "chatpolicy"
)]
#[serde(rename_all = "camelCase")]
pub struct ChatPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_message_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_attachment_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub messages_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 100)))]
    pub blocked_words: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36500))]
    pub default_retention_days: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A webhook declared as a resource: the same as `POST /api/v1/admin/webhooks`, with its
/// signing secret read from a Kubernetes Secret.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "confab.dev",
    version = "v1alpha1",
    kind = "ChatWebhook",
    namespaced,
    status = "ChatWebhookStatus",
    shortname = "chatwebhook",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChatWebhookSpec {
    /// Where events are POSTed (http:// or https://).
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// Event types to deliver.
    #[schemars(length(min = 1))]
    pub events: Vec<WebhookEvent>,
    /// The Secret key holding the signing secret (`whsec_…`).
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The event types a webhook may subscribe to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WebhookEvent {
    #[serde(rename = "message.created")]
    MessageCreated,
    #[serde(rename = "message.updated")]
    MessageUpdated,
    #[serde(rename = "member.joined")]
    MemberJoined,
    #[serde(rename = "member.left")]
    MemberLeft,
    #[serde(rename = "room.created")]
    RoomCreated,
    #[serde(rename = "room.updated")]
    RoomUpdated,
    #[serde(rename = "notification")]
    Notification,
}

impl WebhookEvent {
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatWebhookStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A webhook in a `--config-dir` file: the secret is written in the file itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookFileSpec {
    pub url: String,
    pub events: Vec<WebhookEvent>,
    pub secret: String,
}

/// A status condition, the Kubernetes way.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
}

/// The CRDs as one YAML stream (what `confab crd` prints).
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [ChatRoom::crd(), ChatPolicy::crd(), ChatWebhook::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("CRDs serialize"));
    }
    out
}

impl ChatPolicySpec {
    /// The policy this resource puts in force over the configuration's defaults `base`; an
    /// invalid spec is an error that names the field.
    pub fn policy(&self, base: &Policy) -> Result<Policy, String> {
        let spec = self;
        let positive = |v: Option<u64>, field: &str| match v {
            Some(0) => Err(format!("spec.{field} must be at least 1")),
            _ => Ok(()),
        };
        positive(spec.max_message_bytes, "maxMessageBytes")?;
        positive(spec.max_attachment_bytes, "maxAttachmentBytes")?;
        positive(spec.messages_per_second.map(u64::from), "messagesPerSecond")?;
        positive(spec.burst.map(u64::from), "burst")?;
        if spec.max_message_bytes.is_some_and(|m| m > 1_048_576) {
            return Err("spec.maxMessageBytes must be at most 1048576".into());
        }
        if spec.default_retention_days.is_some_and(|d| d < 1) {
            return Err("spec.defaultRetentionDays must be at least 1".into());
        }
        if spec.blocked_words.iter().any(|w| w.trim().is_empty()) {
            return Err("spec.blockedWords must not contain empty words".into());
        }
        Ok(Policy {
            registration_open: spec.registration.unwrap_or_default() == Registration::Open,
            max_message_bytes: spec
                .max_message_bytes
                .map_or(base.max_message_bytes, |m| m as usize),
            max_attachment_bytes: spec
                .max_attachment_bytes
                .unwrap_or(base.max_attachment_bytes),
            messages_per_second: spec.messages_per_second.unwrap_or(base.messages_per_second),
            burst: spec.burst.unwrap_or(base.burst),
            blocked_words: spec
                .blocked_words
                .iter()
                .map(|w| w.trim().to_lowercase())
                .collect(),
            default_retention_days: spec.default_retention_days,
            generation: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Policy {
        Policy {
            max_message_bytes: 100,
            ..Policy::default()
        }
    }

    #[test]
    fn a_spec_overrides_only_what_it_names() {
        let spec = ChatPolicySpec {
            max_message_bytes: Some(10),
            registration: Some(Registration::Closed),
            ..Default::default()
        };
        let p = spec.policy(&base()).unwrap();
        assert_eq!(
            (p.max_message_bytes, p.registration_open, p.burst),
            (10, false, 20)
        );
        let bad = ChatPolicySpec {
            burst: Some(0),
            ..Default::default()
        };
        assert!(bad.policy(&base()).unwrap_err().contains("burst"));
    }

    #[test]
    fn blocked_words_are_kept_trimmed_and_lowercase() {
        let spec = ChatPolicySpec {
            blocked_words: vec![" Darn ".into(), "Bad Phrase".into()],
            ..Default::default()
        };
        let p = spec.policy(&base()).unwrap();
        assert_eq!(p.blocked_words, ["darn", "bad phrase"]);
        assert!(p.check_body("oh DARN it").is_err());
    }
}
