//! The Kubernetes side of operator-style configuration. A kube-rs `Controller` reconciles
//! `ChatRoom` resources through the same [`apply_room`] as `--config-dir`, on one pod at a time
//! (a `coordination.k8s.io` Lease, released on shutdown for a clean hand-over); every pod
//! watches `ChatPolicy` and applies it.
//!
//! Status is written with Server-Side Apply (`roomId`, `observedGeneration`, a `Ready`
//! condition) only when it changes; a finalizer archives the room when its resource is deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::reconcile::{ReconcileError, apply_room, apply_webhook, archive_room, remove_webhook};
use super::resources::{
    API_VERSION, ChatPolicy, ChatPolicyStatus, ChatRoom, ChatRoomStatus, ChatWebhook,
    ChatWebhookStatus, Condition,
};
use crate::state::AppState;

pub const FINALIZER: &str = "confab.dev/archive-room";
/// Removes the webhook when its `ChatWebhook` is deleted.
pub const WEBHOOK_FINALIZER: &str = "confab.dev/remove-webhook";
pub const FIELD_MANAGER: &str = "confab";
pub const LEASE_NAME: &str = "confab-room-controller";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Reconcile(#[from] ReconcileError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

pub struct Context {
    pub state: AppState,
    pub client: Client,
    pub recorder: Recorder,
    /// Consecutive failures per resource, for exponential back-off.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(state: AppState, client: Client) -> Arc<Context> {
        Arc::new(Context::build(state, client, HashMap::new()))
    }

    fn build(state: AppState, client: Client, failures: HashMap<String, u32>) -> Context {
        let reporter = Reporter {
            controller: "confab".into(),
            instance: Some(state.hub.pod().to_string()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            state,
            client,
            failures: Mutex::new(failures),
        }
    }

    /// The same context talking through another client; the back-off memory carries over.
    #[cfg(test)]
    pub(super) fn with_client(&self, client: Client) -> Context {
        let failures = self.failures.lock().expect("failures lock").clone();
        Context::build(self.state.clone(), client, failures)
    }
}

fn key_of(room: &ChatRoom) -> String {
    format!(
        "{}/{}",
        room.namespace().unwrap_or_else(|| "default".into()),
        room.name_any()
    )
}

fn now_rfc3339() -> String {
    crate::model::rfc3339(crate::now_ms()).replace(".000Z", "Z")
}

/// The Ready condition, keeping the old transition time when the status did not change.
fn ready(previous: Option<&Condition>, ok: bool, reason: &str, message: String) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now_rfc3339(),
    };
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time,
    }
}

pub async fn reconcile(room: Arc<ChatRoom>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = room.namespace().unwrap_or_else(|| "default".into());
    let api: Api<ChatRoom> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, room, |event| async {
        match event {
            Finalizer::Apply(room) => apply(&api, &room, &ctx).await,
            Finalizer::Cleanup(room) => cleanup(&room, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply(api: &Api<ChatRoom>, room: &ChatRoom, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(room);
    let result = apply_room(&ctx.state, &key, &room.spec).await;
    let previous = room.status.clone().unwrap_or_default();
    let prev_ready = previous.conditions.iter().find(|c| c.type_ == "Ready");
    let (status, action, event) = match &result {
        Ok(applied) => {
            let message = if applied.unresolved.is_empty() {
                "the room matches the resource".to_string()
            } else {
                format!(
                    "waiting for users to register: {}",
                    applied.unresolved.join(", ")
                )
            };
            let status = ChatRoomStatus {
                room_id: Some(applied.room_id.to_string()),
                observed_generation: room.metadata.generation,
                conditions: vec![ready(prev_ready, true, "Reconciled", message.clone())],
                unresolved_users: applied.unresolved.clone(),
            };
            // Unknown users are picked up when they register: look again soon.
            let every = if applied.unresolved.is_empty() {
                300
            } else {
                30
            };
            (
                status,
                Action::requeue(Duration::from_secs(every)),
                (EventType::Normal, "Reconciled", message),
            )
        }
        Err(e) => {
            let status = ChatRoomStatus {
                room_id: previous.room_id.clone(),
                observed_generation: room.metadata.generation,
                conditions: vec![ready(prev_ready, false, e.reason(), e.to_string())],
                unresolved_users: Vec::new(),
            };
            (
                status,
                Action::requeue(Duration::from_secs(300)),
                (EventType::Warning, e.reason(), e.to_string()),
            )
        }
    };
    // An unchanged generation and outcome writes nothing.
    if status != previous {
        let patch = json!({"apiVersion": API_VERSION, "kind": "ChatRoom", "status": status});
        api.patch_status(
            &room.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        let (type_, reason, note) = event;
        publish(ctx, room, type_, reason, note).await;
    }
    match result {
        Err(ReconcileError::Store(e)) => Err(Error::Reconcile(ReconcileError::Store(e))),
        // Only a reconcile that got all the way (status written) ends the back-off: a status
        // write that keeps failing must keep backing off.
        _ => {
            ctx.failures.lock().expect("failures lock").remove(&key);
            Ok(action)
        }
    }
}

async fn cleanup(room: &ChatRoom, ctx: &Context) -> Result<Action, Error> {
    archive_room(&ctx.state, &key_of(room), &room.spec.name).await?;
    publish(
        ctx,
        room,
        EventType::Normal,
        "Archived",
        format!("room {} archived", room.spec.name),
    )
    .await;
    Ok(Action::await_change())
}

async fn publish(ctx: &Context, room: &ChatRoom, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &room.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish a Kubernetes event");
    }
}

/// Back-off after a failure: 5 s, 10 s, 20 s, … up to 5 minutes, per resource.
pub fn error_policy(room: Arc<ChatRoom>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(&room);
    let mut failures = ctx.failures.lock().expect("failures lock");
    let n = failures.entry(key.clone()).or_default();
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(5u64.saturating_mul(1 << (*n - 1).min(6)))
        .min(Duration::from_secs(300));
    tracing::warn!(resource = %key, error = %error, retry_in = ?delay, "ChatRoom reconcile failed");
    Action::requeue(delay)
}

fn webhook_key(hook: &ChatWebhook) -> String {
    format!(
        "{}/{}",
        hook.namespace().unwrap_or_else(|| "default".into()),
        hook.name_any()
    )
}

/// The signing secret a `ChatWebhook` names, from the Secret in its own namespace.
async fn webhook_secret(ctx: &Context, hook: &ChatWebhook) -> Result<String, ReconcileError> {
    use k8s_openapi::api::core::v1::Secret;
    let ns = hook.namespace().unwrap_or_else(|| "default".into());
    let r = &hook.spec.secret_ref;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = api
        .get_opt(&r.name)
        .await
        .map_err(|e| ReconcileError::Invalid(format!("cannot read Secret {ns}/{}: {e}", r.name)))?;
    let secret = secret.ok_or_else(|| {
        ReconcileError::Invalid(format!(
            "spec.secretRef: Secret {ns}/{} does not exist",
            r.name
        ))
    })?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|v| v.trim().to_string())
        })
        .ok_or_else(|| {
            ReconcileError::Invalid(format!(
                "spec.secretRef: Secret {ns}/{} has no key {:?}",
                r.name, r.key
            ))
        })?;
    Ok(value)
}

pub async fn reconcile_webhook(hook: Arc<ChatWebhook>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = hook.namespace().unwrap_or_else(|| "default".into());
    let api: Api<ChatWebhook> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, WEBHOOK_FINALIZER, hook, |event| async {
        match event {
            Finalizer::Apply(hook) => apply_webhook_resource(&api, &hook, &ctx).await,
            Finalizer::Cleanup(hook) => {
                remove_webhook(&ctx.state, &webhook_key(&hook)).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply_webhook_resource(
    api: &Api<ChatWebhook>,
    hook: &ChatWebhook,
    ctx: &Context,
) -> Result<Action, Error> {
    let key = webhook_key(hook);
    let result = match webhook_secret(ctx, hook).await {
        Ok(secret) => {
            apply_webhook(&ctx.state, &key, &hook.spec.url, &hook.spec.events, &secret).await
        }
        Err(e) => Err(e),
    };
    let previous = hook.status.clone().unwrap_or_default();
    let prev_ready = previous.conditions.iter().find(|c| c.type_ == "Ready");
    let status = match &result {
        Ok(id) => ChatWebhookStatus {
            webhook_id: Some(id.to_string()),
            observed_generation: hook.metadata.generation,
            conditions: vec![ready(
                prev_ready,
                true,
                "Reconciled",
                format!("delivering to {}", hook.spec.url),
            )],
        },
        Err(e) => ChatWebhookStatus {
            webhook_id: previous.webhook_id.clone(),
            observed_generation: hook.metadata.generation,
            conditions: vec![ready(prev_ready, false, e.reason(), e.to_string())],
        },
    };
    if status != previous {
        let patch = json!({"apiVersion": API_VERSION, "kind": "ChatWebhook", "status": status});
        api.patch_status(
            &hook.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    match result {
        Err(ReconcileError::Store(e)) => Err(Error::Reconcile(ReconcileError::Store(e))),
        // A Secret created or rotated later is picked up within a minute.
        _ => {
            ctx.failures.lock().expect("failures lock").remove(&key);
            Ok(Action::requeue(Duration::from_secs(60)))
        }
    }
}

/// Back-off after a failure, as for rooms.
pub fn webhook_error_policy(hook: Arc<ChatWebhook>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = webhook_key(&hook);
    let mut failures = ctx.failures.lock().expect("failures lock");
    let n = failures.entry(key.clone()).or_default();
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(5u64.saturating_mul(1 << (*n - 1).min(6)))
        .min(Duration::from_secs(300));
    tracing::warn!(resource = %key, error = %error, retry_in = ?delay, "ChatWebhook reconcile failed");
    Action::requeue(delay)
}

/// Every pod: keeps the `ChatPolicy` in force. With more than one, none is applied and the
/// last good one stays.
pub async fn watch_policies(
    state: AppState,
    client: Client,
    leader: tokio::sync::watch::Receiver<bool>,
) {
    let api: Api<ChatPolicy> = Api::all(client.clone());
    let mut known: BTreeMap<String, ChatPolicy> = BTreeMap::new();
    // kube's default backoff (exponential with jitter, reset after success) between retries.
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                known.insert(
                    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                    p,
                );
            }
            Ok(watcher::Event::Delete(p)) => {
                known.remove(&format!(
                    "{}/{}",
                    p.namespace().unwrap_or_default(),
                    p.name_any()
                ));
            }
            Ok(watcher::Event::Init) => {
                known.clear();
                continue;
            }
            Ok(watcher::Event::InitDone) => {}
            Err(e) => {
                tracing::warn!(error = %e, "ChatPolicy watch failed; retrying with backoff");
                continue;
            }
        }
        let outcome = match known.values().collect::<Vec<_>>().as_slice() {
            [] => super::apply_policy(&state.policies, None),
            [p] => super::apply_policy(&state.policies, Some(&p.spec)),
            _ => Err("one ChatPolicy per installation; none applied".into()),
        };
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, "ChatPolicy not applied; the last good policy stays");
        }
        // The leader reports the outcome on the resources.
        if *leader.borrow() {
            for p in known.values() {
                let status = ChatPolicyStatus {
                    observed_generation: p.metadata.generation,
                    conditions: vec![match &outcome {
                        Ok(()) => ready(None, true, "Applied", "the policy is in force".into()),
                        Err(e) => ready(None, false, "InvalidSpec", e.clone()),
                    }],
                };
                let api: Api<ChatPolicy> =
                    Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
                let patch =
                    json!({"apiVersion": API_VERSION, "kind": "ChatPolicy", "status": status});
                if let Err(e) = api
                    .patch_status(
                        &p.name_any(),
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&patch),
                    )
                    .await
                {
                    tracing::warn!(error = %e, "could not write ChatPolicy status");
                }
            }
        }
    }
}

/// Runs the room controller while this pod holds the Lease, and the policy watcher always,
/// until `stop` fires; then releases the Lease so another pod takes over at once.
pub async fn run(
    state: AppState,
    client: Client,
    lease_namespace: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use kube_lease_manager::LeaseManagerBuilder;
    let duration = state.config.lease_duration_secs.max(2);
    let grace = (duration / 5).clamp(1, 2).min(duration - 1);
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(lease_namespace)
        .with_identity(state.hub.pod().to_string())
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await?;
    let (mut leader, lease_task) = manager.watch().await;
    let policies = tokio::spawn(watch_policies(
        state.clone(),
        client.clone(),
        leader.clone(),
    ));
    let ctx = Context::new(state, client.clone());
    loop {
        // Wait to lead.
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            changed = leader.wait_for(|l| *l) => if changed.is_err() { break },
        }
        tracing::info!("leading: reconciling ChatRoom and ChatWebhook resources");
        ctx.state
            .leader
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut lost = leader.clone();
        let mut stop_inner = stop.clone();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped_flag = stopped.clone();
        let (mut lost_hooks, mut stop_hooks) = (leader.clone(), stop.clone());
        let rooms = Controller::new(Api::<ChatRoom>::all(client.clone()), watcher::Config::default())
            .graceful_shutdown_on(async move {
                tokio::select! {
                    _ = lost.wait_for(|l| !*l) => {}
                    _ = stop_inner.wait_for(|s| *s) => stopped_flag.store(true, std::sync::atomic::Ordering::SeqCst),
                }
            })
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|_| async {});
        let hooks = Controller::new(
            Api::<ChatWebhook>::all(client.clone()),
            watcher::Config::default(),
        )
        .graceful_shutdown_on(async move {
            tokio::select! {
                _ = lost_hooks.wait_for(|l| !*l) => {}
                _ = stop_hooks.wait_for(|s| *s) => {}
            }
        })
        .run(reconcile_webhook, webhook_error_policy, ctx.clone())
        .for_each(|_| async {});
        futures::join!(rooms, hooks);
        ctx.state
            .leader
            .store(false, std::sync::atomic::Ordering::SeqCst);
        if stopped.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        tracing::info!("lost the lease: no longer reconciling ChatRoom resources");
    }
    policies.abort();
    drop(leader); // closing the channel makes the manager release the Lease
    if let Ok(Ok(manager)) = lease_task.await {
        let _ = manager.release().await;
    }
    Ok(())
}

/// Reconcile tests: a real store behind the reconcile code, a mock API server playing a
/// [`Scenario`](super::fixtures::Scenario) (the fixtures are in `fixtures.rs`).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fixtures::{Fixture, Scenario, resource, spec, statuses};
    use crate::store::RoomKind;
    use http::Method;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[tokio::test]
    async fn a_new_resource_gets_its_finalizer_first() {
        let mut f = Fixture::new().await;
        let (result, seen) = f
            .reconcile(resource(spec(), 1, false), Scenario::Healthy)
            .await;
        assert!(result.is_ok());
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            (&seen[0].method, seen[0].path.as_str()),
            (
                &Method::PATCH,
                "/apis/confab.dev/v1alpha1/namespaces/chat/chatrooms/general"
            )
        );
        assert!(seen[0].body.to_string().contains(FINALIZER));
        assert!(
            f.room("general").await.is_none(),
            "nothing created before the finalizer"
        );
    }

    #[tokio::test]
    async fn create_reports_ready_with_room_id_and_generation() {
        let mut f = Fixture::new().await;
        let (result, seen) = f
            .reconcile(resource(spec(), 3, true), Scenario::Healthy)
            .await;
        assert!(result.is_ok(), "{result:?}");
        let room = f.room("general").await.expect("room created");
        assert_eq!(
            (room.managed_by.as_deref(), room.topic.as_str(), room.kind),
            (Some("chat/general"), "hello", RoomKind::Public)
        );
        let statuses = statuses(&seen);
        assert_eq!(statuses.len(), 1, "{seen:?}");
        let status = statuses[0];
        assert_eq!(status["roomId"], room.id.to_string());
        assert_eq!(status["observedGeneration"], 3);
        let ready = &status["conditions"][0];
        assert_eq!(
            (ready["type"].as_str(), ready["status"].as_str()),
            (Some("Ready"), Some("True"))
        );
        assert_eq!(status["unresolvedUsers"], json!(["carol"]));
        assert!(
            seen.iter()
                .any(|s| s.is_event() && s.body.to_string().contains("Reconciled")),
            "an Event is published"
        );
    }

    #[tokio::test]
    async fn an_update_changes_the_room_and_an_unchanged_generation_writes_nothing() {
        let mut f = Fixture::new().await;
        let (_, seen) = f
            .reconcile(resource(spec(), 1, true), Scenario::Healthy)
            .await;
        let first = statuses(&seen)[0].clone();
        // The same generation, its status already written: no API call at all.
        let mut settled = resource(spec(), 1, true);
        settled.status = Some(serde_json::from_value(first).unwrap());
        let (result, seen) = f.reconcile(settled.clone(), Scenario::Healthy).await;
        assert!(result.is_ok());
        assert!(seen.is_empty(), "{seen:?}");
        // A new generation with another topic: the room follows, the status records it.
        let mut changed = settled;
        changed.spec.topic = Some("launch".into());
        changed.metadata.generation = Some(2);
        let (_, seen) = f.reconcile(changed, Scenario::Healthy).await;
        assert_eq!(statuses(&seen)[0]["observedGeneration"], 2);
        assert_eq!(f.room("general").await.unwrap().topic, "launch");
    }

    #[tokio::test]
    async fn deletion_archives_the_room_and_releases_the_finalizer() {
        let mut f = Fixture::new().await;
        let _ = f
            .reconcile(resource(spec(), 1, true), Scenario::Healthy)
            .await;
        let mut deleting = resource(spec(), 1, true);
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let (result, seen) = f.reconcile(deleting, Scenario::Healthy).await;
        assert!(result.is_ok(), "{result:?}");
        assert!(f.room("general").await.unwrap().archived);
        let removal = seen
            .iter()
            .find(|s| s.method == Method::PATCH && s.path.ends_with("/chatrooms/general"))
            .expect("finalizer removed");
        assert!(
            removal.body.to_string().contains("remove"),
            "{:?}",
            removal.body
        );
    }

    #[tokio::test]
    async fn an_invalid_spec_is_ready_false_with_a_reason() {
        let mut f = Fixture::new().await;
        let mut bad = spec();
        bad.members = vec!["Not A User".into()];
        let (result, seen) = f.reconcile(resource(bad, 1, true), Scenario::Healthy).await;
        assert!(
            result.is_ok(),
            "an invalid spec is reported, not retried in a loop"
        );
        let ready = &statuses(&seen)[0]["conditions"][0];
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("InvalidSpec"))
        );
        assert!(ready["message"].as_str().unwrap().contains("Not A User"));
        assert!(
            seen.iter()
                .any(|s| s.is_event() && s.body.to_string().contains("Warning"))
        );
    }

    #[tokio::test]
    async fn a_rest_created_room_of_the_same_name_is_a_conflict() {
        let mut f = Fixture::new().await;
        f.rest_room("general", RoomKind::Private, "alice").await;
        let (_, seen) = f
            .reconcile(resource(spec(), 1, true), Scenario::Healthy)
            .await;
        let ready = &statuses(&seen)[0]["conditions"][0];
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("NameConflict"))
        );
        let room = f.room("general").await.unwrap();
        assert_eq!(
            (room.kind, room.managed_by.is_none()),
            (RoomKind::Private, true),
            "the REST room is untouched"
        );
    }

    #[tokio::test]
    async fn api_errors_fail_the_reconcile_and_back_off_exponentially() {
        let mut f = Fixture::new().await;
        let object = resource(spec(), 1, true);
        let (result, _) = f
            .reconcile(object.clone(), Scenario::StatusWritesFail)
            .await;
        let err = result.expect_err("a failed status write fails the reconcile");
        let policy = |ctx: &Arc<Context>| error_policy(Arc::new(object.clone()), &err, ctx.clone());
        for secs in [5, 10, 20, 40] {
            assert_eq!(policy(&f.ctx), Action::requeue(Duration::from_secs(secs)));
        }
        // The back-off is remembered from one reconcile to the next until one succeeds.
        let (result, _) = f
            .reconcile(object.clone(), Scenario::StatusWritesFail)
            .await;
        assert!(result.is_err());
        assert_eq!(policy(&f.ctx), Action::requeue(Duration::from_secs(80)));
        // Success resets it.
        let (result, _) = f.reconcile(object.clone(), Scenario::Healthy).await;
        assert!(result.is_ok());
        assert_eq!(policy(&f.ctx), Action::requeue(Duration::from_secs(5)));
    }
}

/// Leader election through `run`: two pods share one mock Lease; only the holder reconciles
/// `ChatRoom`s, and a pod that stops hands the Lease over.
#[cfg(test)]
mod election {
    use super::*;
    use crate::operator::fixtures::{LeaseScenario, settle};

    #[tokio::test]
    async fn only_the_lease_holder_reconciles_and_a_stopping_pod_hands_over() {
        let scenario = LeaseScenario::default();
        let a = scenario.pod().await;
        let b = scenario.pod().await;
        assert!(settle(|| a.leads() || b.leads()).await, "somebody leads");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(a.leads() != b.leads(), "exactly one leads");
        let (first, second) = if a.leads() { (a, b) } else { (b, a) };
        assert!(
            settle(|| first.has_listed_rooms()).await,
            "the leader lists ChatRooms"
        );
        assert!(
            !second.has_listed_rooms(),
            "the follower does not reconcile"
        );

        // The leader stops (SIGTERM): it releases the Lease and the other pod takes over.
        first.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), first.task)
            .await
            .expect("stops promptly")
            .unwrap()
            .unwrap();
        assert!(!first.state.leader.load(std::sync::atomic::Ordering::SeqCst));
        let lease = scenario.leases.lock().unwrap().lease.clone().unwrap();
        assert!(
            lease["spec"]["holderIdentity"].is_null(),
            "the Lease was released: {lease}"
        );
        assert!(
            settle(|| second.leads()).await,
            "the other pod takes the released Lease"
        );
        assert!(settle(|| second.has_listed_rooms()).await);
    }
}

/// `ChatWebhook` reconciles against the mock API server: the Secret read, the webhook
/// registered, status written, and the finalizer removing the webhook.
#[cfg(test)]
mod webhook_resources {
    use crate::operator::fixtures::{Fixture, statuses, webhook_resource};
    use http::Method;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[tokio::test]
    async fn a_webhook_resource_registers_its_webhook_with_the_secret_of_its_secret() {
        let mut f = Fixture::new().await;
        let (result, seen) = f
            .reconcile_webhook(webhook_resource(2, true), Some(SECRET))
            .await;
        assert!(result.is_ok(), "{result:?}");
        let hooks = f.state.store.webhooks().await.unwrap();
        assert_eq!(hooks.len(), 1);
        let h = &hooks[0];
        assert_eq!(
            (h.url.as_str(), h.secret.as_str(), h.managed_by.as_deref()),
            (
                "https://93.184.216.34/hooks",
                SECRET,
                Some("ChatWebhook chat/hooks")
            )
        );
        assert_eq!(h.event_list(), ["message.created", "notification"]);
        let status = statuses(&seen)[0];
        assert_eq!(status["webhookId"], h.id.to_string());
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(status["conditions"][0]["status"], "True");
        // The same resource again changes nothing and writes no status.
        let mut again = webhook_resource(2, true);
        again.status = serde_json::from_value(status.clone()).unwrap();
        let (result, seen) = f.reconcile_webhook(again, Some(SECRET)).await;
        assert!(result.is_ok());
        assert!(statuses(&seen).is_empty(), "{seen:?}");
        assert_eq!(f.state.store.webhooks().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_missing_or_bad_secret_is_ready_false_and_registers_nothing() {
        let mut f = Fixture::new().await;
        let (result, seen) = f.reconcile_webhook(webhook_resource(1, true), None).await;
        assert!(result.is_ok(), "{result:?}");
        let status = statuses(&seen)[0];
        assert_eq!(status["conditions"][0]["status"], "False");
        assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
        assert!(
            status["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("hook-secret"),
            "{status}"
        );
        let (_, seen) = f
            .reconcile_webhook(webhook_resource(1, true), Some("not-a-secret"))
            .await;
        assert!(
            statuses(&seen)[0]["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("whsec_")
        );
        assert!(f.state.store.webhooks().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn deleting_a_webhook_resource_removes_its_webhook() {
        let mut f = Fixture::new().await;
        f.reconcile_webhook(webhook_resource(1, true), Some(SECRET))
            .await
            .0
            .unwrap();
        assert_eq!(f.state.store.webhooks().await.unwrap().len(), 1);
        let mut gone = webhook_resource(1, true);
        gone.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let (result, seen) = f.reconcile_webhook(gone, Some(SECRET)).await;
        assert!(result.is_ok(), "{result:?}");
        assert!(f.state.store.webhooks().await.unwrap().is_empty());
        assert!(
            seen.iter().any(|s| s.method == Method::PATCH
                && s.body.as_array().is_some_and(|ops| {
                    ops.iter()
                        .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0")
                })),
            "the finalizer is released: {seen:?}"
        );
    }
}
