//! `--config-dir`: the same `ChatRoom`, `ChatPolicy` and `ChatWebhook` documents as YAML files (any number per
//! file), watched with `notify` and re-applied every few seconds. What was applied, and every
//! error, is kept for `GET /api/v1/admin/config` and logged.
//!
//! A file that does not parse changes nothing: the last good contents of that file stay in force.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, new_debouncer};
use serde::Serialize;
use tokio::sync::mpsc;

use super::reconcile::{apply_room, apply_webhook, archive_room, remove_webhook};
use super::resources::{API_VERSION, ChatPolicySpec, ChatRoomSpec, WebhookFileSpec};
use crate::state::AppState;

#[derive(Clone, Debug)]
enum Doc {
    Room {
        key: String,
        file: String,
        spec: ChatRoomSpec,
    },
    Policy {
        key: String,
        file: String,
        spec: ChatPolicySpec,
    },
    Webhook {
        key: String,
        file: String,
        spec: WebhookFileSpec,
    },
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct ConfigStatus {
    pub source: String,
    pub loaded_at: String,
    pub resources: Vec<ResourceStatus>,
    pub errors: Vec<FileError>,
}

#[derive(Serialize, Clone, Debug)]
pub struct ResourceStatus {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub file: String,
    pub ready: bool,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unresolved_users: Vec<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct FileError {
    pub file: String,
    pub message: String,
}

/// Parses one file into documents; the error names the document that is wrong.
fn parse_file(path: &Path, text: &str) -> Result<Vec<Doc>, String> {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut docs = Vec::new();
    // YAML (serde-saphyr, whose errors carry the line and column) read into JSON values: the
    // specs then deserialize exactly as the custom resources' JSON does.
    let values: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| format!("not YAML: {e}"))?;
    for (i, value) in values.into_iter().enumerate() {
        let n = i + 1;
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        let api = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if api != API_VERSION {
            return Err(format!(
                "document {n}: apiVersion must be {API_VERSION}, not {api:?}"
            ));
        }
        let meta = value.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("document {n}: metadata.name is missing"))?;
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let key = format!("{namespace}/{name}");
        let spec = value
            .get("spec")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or("");
        let doc = match kind {
            "ChatRoom" => Doc::Room {
                key,
                file: file.clone(),
                spec: serde_json::from_value(spec)
                    .map_err(|e| format!("document {n} (ChatRoom {name}): spec: {e}"))?,
            },
            "ChatPolicy" => Doc::Policy {
                key,
                file: file.clone(),
                spec: serde_json::from_value(spec)
                    .map_err(|e| format!("document {n} (ChatPolicy {name}): spec: {e}"))?,
            },
            "ChatWebhook" => Doc::Webhook {
                key,
                file: file.clone(),
                spec: serde_json::from_value(spec)
                    .map_err(|e| format!("document {n} (ChatWebhook {name}): spec: {e}"))?,
            },
            other => {
                return Err(format!(
                    "document {n}: kind must be ChatRoom, ChatPolicy or ChatWebhook, not {other:?}"
                ));
            }
        };
        docs.push(doc);
    }
    Ok(docs)
}

/// What the folder held when it was last read, for the files that parsed.
#[derive(Default)]
struct DirState {
    last_good: HashMap<PathBuf, Vec<Doc>>,
    /// Rooms applied before: resource key → room name, to archive those whose resource went.
    applied: BTreeMap<String, String>,
    /// Webhooks applied before, to remove those whose document went.
    webhooks: std::collections::BTreeSet<String>,
}

async fn reconcile_all(state: &AppState, dir: &Path, ds: &mut DirState) -> ConfigStatus {
    let mut status = ConfigStatus {
        source: format!("config-dir {}", dir.display()),
        loaded_at: crate::model::rfc3339(crate::now_ms()),
        ..Default::default()
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect(),
        Err(e) => {
            status.errors.push(FileError {
                file: dir.display().to_string(),
                message: e.to_string(),
            });
            Vec::new()
        }
    };
    files.sort();
    ds.last_good.retain(|p, _| files.contains(p));
    let mut docs = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_file(path, &t))
        {
            Ok(d) => {
                ds.last_good.insert(path.clone(), d.clone());
                docs.extend(d);
            }
            Err(message) => {
                tracing::warn!(file = %name, %message, "config file not applied; its last good contents stay");
                status.errors.push(FileError {
                    file: name,
                    message,
                });
                docs.extend(ds.last_good.get(path).cloned().unwrap_or_default());
            }
        }
    }

    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut hooks_seen = std::collections::BTreeSet::new();
    let mut policies = Vec::new();
    for doc in docs {
        match doc {
            Doc::Room { key, file, spec } => {
                let (namespace, name) = key
                    .split_once('/')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .unwrap_or_default();
                if seen.contains_key(&key) {
                    status.errors.push(FileError {
                        file,
                        message: format!("ChatRoom {key} is declared twice"),
                    });
                    continue;
                }
                let result = apply_room(state, &key, &spec).await;
                let mut rs = ResourceStatus {
                    kind: "ChatRoom".into(),
                    namespace,
                    name,
                    file,
                    ready: false,
                    reason: String::new(),
                    message: String::new(),
                    room_id: None,
                    unresolved_users: Vec::new(),
                };
                match result {
                    Ok(applied) => {
                        seen.insert(key, spec.name.clone());
                        rs.ready = true;
                        rs.reason = "Reconciled".into();
                        rs.message = if applied.unresolved.is_empty() {
                            "the room matches the resource".into()
                        } else {
                            format!(
                                "waiting for users to register: {}",
                                applied.unresolved.join(", ")
                            )
                        };
                        rs.room_id = Some(applied.room_id.to_string());
                        rs.unresolved_users = applied.unresolved;
                    }
                    Err(e) => {
                        tracing::warn!(resource = %key, error = %e, "ChatRoom not applied");
                        // A room it managed before stays as it was (not archived).
                        if let Some(prev) = ds.applied.get(&key) {
                            seen.insert(key.clone(), prev.clone());
                        }
                        rs.reason = e.reason().into();
                        rs.message = e.to_string();
                    }
                }
                status.resources.push(rs);
            }
            Doc::Policy { key, file, spec } => policies.push((key, file, spec)),
            Doc::Webhook { key, file, spec } => {
                let (namespace, name) = key
                    .split_once('/')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .unwrap_or_default();
                if !hooks_seen.insert(key.clone()) {
                    status.errors.push(FileError {
                        file,
                        message: format!("ChatWebhook {key} is declared twice"),
                    });
                    continue;
                }
                let result =
                    apply_webhook(state, &key, &spec.url, &spec.events, &spec.secret).await;
                let (ready, reason, message) = match &result {
                    Ok(id) => (
                        true,
                        "Reconciled",
                        format!("webhook {id} delivers to {}", spec.url),
                    ),
                    Err(e) => {
                        tracing::warn!(resource = %key, error = %e, "ChatWebhook not applied");
                        (false, e.reason(), e.to_string())
                    }
                };
                status.resources.push(ResourceStatus {
                    kind: "ChatWebhook".into(),
                    namespace,
                    name,
                    file,
                    ready,
                    reason: reason.into(),
                    message,
                    room_id: None,
                    unresolved_users: Vec::new(),
                });
            }
        }
    }
    for key in std::mem::take(&mut ds.webhooks) {
        if !hooks_seen.contains(&key)
            && let Err(e) = remove_webhook(state, &key).await
        {
            tracing::warn!(resource = %key, error = %e, "could not remove the webhook of a removed document");
            hooks_seen.insert(key);
        }
    }
    ds.webhooks = hooks_seen;
    for (key, name) in std::mem::take(&mut ds.applied) {
        if !seen.contains_key(&key)
            && let Err(e) = archive_room(state, &key, &name).await
        {
            tracing::warn!(resource = %key, error = %e, "could not archive the room of a removed resource");
            seen.insert(key, name);
        }
    }
    ds.applied = seen;

    let policy_result = match policies.as_slice() {
        [] => super::apply_policy(&state.policies, None).map(|_| None),
        [(key, file, spec)] => super::apply_policy(&state.policies, Some(spec))
            .map(|_| Some((key.clone(), file.clone())))
            .inspect_err(|e| {
                status
                    .resources
                    .push(policy_status(key, file, false, "InvalidSpec", e));
            }),
        many => {
            let keys: Vec<&str> = many.iter().map(|(k, _, _)| k.as_str()).collect();
            let message = format!("one ChatPolicy per installation; found {}", keys.join(", "));
            status.errors.push(FileError {
                file: many[1].1.clone(),
                message: message.clone(),
            });
            Err(message)
        }
    };
    match policy_result {
        Ok(Some((key, file))) => status.resources.push(policy_status(
            &key,
            &file,
            true,
            "Applied",
            "the policy is in force",
        )),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "ChatPolicy not applied; the last good policy stays"),
    }
    status
}

fn policy_status(
    key: &str,
    file: &str,
    ready: bool,
    reason: &str,
    message: &str,
) -> ResourceStatus {
    let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
    ResourceStatus {
        kind: "ChatPolicy".into(),
        namespace: namespace.into(),
        name: name.into(),
        file: file.into(),
        ready,
        reason: reason.into(),
        message: message.into(),
        room_id: None,
        unresolved_users: Vec::new(),
    }
}

/// Applies the folder now, then whenever it changes and every `resync`, until the process ends.
pub async fn run(state: AppState, dir: PathBuf, resync: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    // Editors and `kubectl cp` write in several steps: changes within 150 ms are one reload.
    let mut watcher = match new_debouncer(
        Duration::from_millis(150),
        move |_res: DebounceEventResult| {
            let _ = tx.send(());
        },
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config dir; re-reading it every resync");
            None
        }
    };
    if let Some(w) = watcher.as_mut()
        && let Err(e) = w.watcher().watch(&dir, RecursiveMode::NonRecursive)
    {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config dir");
    }
    let mut ds = DirState::default();
    loop {
        let status = reconcile_all(&state, &dir, &mut ds).await;
        *state.config_status.write().expect("config status lock") =
            Some(serde_json::to_value(&status).expect("status serializes"));
        tokio::select! {
            got = rx.recv() => {
                if got.is_none() {
                    break;
                }
            }
            _ = tokio::time::sleep(resync) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_hold_any_number_of_documents_and_errors_name_the_document() {
        let text = "apiVersion: confab.dev/v1alpha1\nkind: ChatRoom\nmetadata: {name: a, namespace: team}\nspec: {name: general, kind: public}\n---\napiVersion: confab.dev/v1alpha1\nkind: ChatPolicy\nmetadata: {name: p}\nspec: {maxMessageBytes: 10}\n---\n";
        let docs = parse_file(Path::new("x.yaml"), text).unwrap();
        assert_eq!(docs.len(), 2);
        assert!(matches!(&docs[0], Doc::Room { key, .. } if key == "team/a"));
        assert!(matches!(&docs[1], Doc::Policy { key, .. } if key == "default/p"));
        let err = parse_file(Path::new("x.yaml"), "apiVersion: confab.dev/v1alpha1\nkind: ChatRoom\nmetadata: {name: a}\nspec: {name: general, kind: secretive}\n").unwrap_err();
        assert!(
            err.contains("document 1") && err.contains("secretive"),
            "{err}"
        );
        let err = parse_file(
            Path::new("x.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
        )
        .unwrap_err();
        assert!(err.contains("apiVersion"), "{err}");
        assert!(parse_file(Path::new("x.yaml"), "key: [unclosed").is_err());
    }
}
