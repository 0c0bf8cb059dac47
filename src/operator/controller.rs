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
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::reconcile::{ReconcileError, apply_room, archive_room};
use super::resources::{
    API_VERSION, ChatPolicy, ChatPolicyStatus, ChatRoom, ChatRoomStatus, Condition,
};
use crate::http::AppState;

pub const FINALIZER: &str = "confab.dev/archive-room";
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
        let reporter = Reporter {
            controller: "confab".into(),
            instance: Some(state.hub.pod().to_string()),
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            state,
            client,
            failures: Mutex::default(),
        })
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
            ctx.failures.lock().expect("failures lock").remove(&key);
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
        _ => Ok(action),
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

/// Every pod: keeps the `ChatPolicy` in force. With more than one, none is applied and the
/// last good one stays.
pub async fn watch_policies(
    state: AppState,
    client: Client,
    leader: tokio::sync::watch::Receiver<bool>,
) {
    let api: Api<ChatPolicy> = Api::all(client.clone());
    let mut known: BTreeMap<String, ChatPolicy> = BTreeMap::new();
    let mut stream = watcher(api, watcher::Config::default()).boxed();
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
                tracing::warn!(error = %e, "ChatPolicy watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        }
        let outcome = match known.values().collect::<Vec<_>>().as_slice() {
            [] => state.policies.apply(None),
            [p] => state.policies.apply(Some(&p.spec)),
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
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(lease_namespace)
        .with_identity(state.hub.pod().to_string())
        .with_duration(15)
        .with_grace(5)
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
        tracing::info!("leading: reconciling ChatRoom resources");
        let mut lost = leader.clone();
        let mut stop_inner = stop.clone();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped_flag = stopped.clone();
        Controller::new(Api::<ChatRoom>::all(client.clone()), watcher::Config::default())
            .graceful_shutdown_on(async move {
                tokio::select! {
                    _ = lost.wait_for(|l| !*l) => {}
                    _ = stop_inner.wait_for(|s| *s) => stopped_flag.store(true, std::sync::atomic::Ordering::SeqCst),
                }
            })
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|_| async {})
            .await;
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
