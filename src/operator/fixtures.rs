//! Fixtures for the operator's tests: a mock Kubernetes API server (kube-rs's `tower_test`
//! pattern) that answers as its [`Scenario`] says and records every request, a real store and
//! hub behind the reconcile code, and the resources the tests start from. The tests in
//! `controller.rs` each read as: a fixture, a resource, a scenario, what was seen.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::controller::{
    Context, Error, FINALIZER, WEBHOOK_FINALIZER, reconcile, reconcile_webhook, run,
};
use super::resources::{
    ChatRoom, ChatRoomSpec, ChatWebhook, ChatWebhookSpec, DeclaredKind, SecretKeyRef, WebhookEvent,
};
use crate::ids::RoomId;
use crate::state::AppState;
use crate::store::{NewRoom, RoomKind, RoomRecord, UserRecord};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How the mock API server behaves for one reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Answers like a healthy API server: patches return the object, status writes return it
    /// with the status written, Events are created.
    Healthy,
    /// As `Healthy`, but every status write fails with a 500 (etcd in trouble).
    StatusWritesFail,
}

/// One request the reconcile made.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub body: Value,
}

impl Seen {
    pub fn is_status_write(&self) -> bool {
        self.path.ends_with("/status")
    }

    pub fn is_event(&self) -> bool {
        self.path.contains("/events")
    }
}

fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "code": code, "message": message})
}

/// Serves requests for `object` as `scenario` says until the client is dropped; returns
/// everything it was asked.
fn api_server(
    mut handle: Handle,
    object: ChatRoom,
    scenario: Scenario,
) -> tokio::task::JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let request = Seen { method, path, body };
            let (status, answer) = match scenario {
                _ if request.is_event() => (StatusCode::CREATED, request.body.clone()),
                Scenario::StatusWritesFail if request.is_status_write() => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    failure(500, "InternalError", "etcd is sad"),
                ),
                _ if request.is_status_write() => {
                    let mut o = serde_json::to_value(&object).unwrap();
                    o["status"] = request.body["status"].clone();
                    (StatusCode::OK, o)
                }
                _ => (StatusCode::OK, serde_json::to_value(&object).unwrap()),
            };
            seen.push(request);
            let resp = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(resp);
        }
        seen
    })
}

/// Serves a `ChatWebhook`'s reconcile: GETs of Secrets answer `secret` (404 when None), status
/// writes echo the status, anything else returns the object.
fn webhook_api_server(
    mut handle: Handle,
    object: ChatWebhook,
    secret: Option<Value>,
) -> tokio::task::JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let request = Seen { method, path, body };
            let (status, answer) = if request.path.contains("/secrets/") {
                match &secret {
                    Some(s) => (StatusCode::OK, s.clone()),
                    None => (
                        StatusCode::NOT_FOUND,
                        failure(404, "NotFound", "secrets not found"),
                    ),
                }
            } else if request.is_status_write() {
                let mut o = serde_json::to_value(&object).unwrap();
                o["status"] = request.body["status"].clone();
                (StatusCode::OK, o)
            } else if request.is_event() {
                (StatusCode::CREATED, request.body.clone())
            } else {
                (StatusCode::OK, serde_json::to_value(&object).unwrap())
            };
            seen.push(request);
            let resp = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(resp);
        }
        seen
    })
}

/// A server's state (SQLite in a temporary directory) and a controller context whose client
/// talks to the mock API server.
pub struct Fixture {
    pub ctx: Arc<Context>,
    pub state: AppState,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (state, _writer, _stop) =
            crate::server::build(crate::config::Config::for_tests(dir.path().to_path_buf()))
                .await
                .unwrap();
        let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        Fixture {
            ctx: Context::new(state.clone(), Client::new(service, "default")),
            state,
            _dir: dir,
        }
    }

    /// Runs one reconcile of `object` against an API server playing `scenario`; returns its
    /// result and every request it made. The context (and its back-off memory) carries over
    /// to the next run.
    pub async fn reconcile(
        &mut self,
        object: ChatRoom,
        scenario: Scenario,
    ) -> (Result<Action, Error>, Vec<Seen>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        self.ctx = Arc::new(self.ctx.with_client(Client::new(service, "default")));
        let server = api_server(handle, object.clone(), scenario);
        let result = reconcile(Arc::new(object), self.ctx.clone()).await;
        // The client lives in the context: swap in one with no server so the mock ends.
        let (idle, _) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        self.ctx = Arc::new(self.ctx.with_client(Client::new(idle, "default")));
        let seen = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the mock API server ends")
            .unwrap();
        (result, seen)
    }

    /// Runs one reconcile of a `ChatWebhook`; its Secret holds `secret` under `signing`
    /// (no Secret at all when None).
    pub async fn reconcile_webhook(
        &mut self,
        object: ChatWebhook,
        secret: Option<&str>,
    ) -> (Result<Action, Error>, Vec<Seen>) {
        use base64::Engine;
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        self.ctx = Arc::new(self.ctx.with_client(Client::new(service, "default")));
        let secret = secret.map(|v| {
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "hook-secret", "namespace": "chat"},
                   "data": {"signing": base64::engine::general_purpose::STANDARD.encode(v)}})
        });
        let server = webhook_api_server(handle, object.clone(), secret);
        let result = reconcile_webhook(Arc::new(object), self.ctx.clone()).await;
        let (idle, _) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        self.ctx = Arc::new(self.ctx.with_client(Client::new(idle, "default")));
        let seen = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the mock API server ends")
            .unwrap();
        (result, seen)
    }

    /// The room of that name in the store.
    pub async fn room(&self, name: &str) -> Option<RoomRecord> {
        self.state.store.room_by_name(name).await.unwrap()
    }

    /// A room made through REST's path (not by a resource), owned by a new user `owner`.
    pub async fn rest_room(&self, name: &str, kind: RoomKind, owner: &str) -> RoomRecord {
        let user = UserRecord::new(owner.into(), owner.into(), "not a hash".into());
        self.state.store.create_user(&user).await.unwrap();
        let room = NewRoom {
            id: RoomId::new(),
            name: name.into(),
            kind,
            topic: String::new(),
            created_by: user.id,
            created_at: 0,
        };
        self.state.store.create_room(&room).await.unwrap()
    }
}

/// A public room `general` with topic "hello" and one member who has no account.
pub fn spec() -> ChatRoomSpec {
    ChatRoomSpec {
        name: "general".into(),
        kind: DeclaredKind::Public,
        topic: Some("hello".into()),
        slow_mode_seconds: None,
        read_only: None,
        retention_days: None,
        owners: vec![],
        moderators: vec![],
        members: vec!["carol".into()],
    }
}

/// `chat/general` at `generation`, with or without the finalizer.
pub fn resource(spec: ChatRoomSpec, generation: i64, finalizer: bool) -> ChatRoom {
    let mut r = ChatRoom::new("general", spec);
    r.metadata.namespace = Some("chat".into());
    r.metadata.generation = Some(generation);
    r.metadata.uid = Some("0b1c2d3e".into());
    if finalizer {
        r.metadata.finalizers = Some(vec![FINALIZER.into()]);
    }
    r
}

/// `chat/hooks`: message.created to a public address, its secret in `hook-secret`/`signing`.
pub fn webhook_resource(generation: i64, finalizer: bool) -> ChatWebhook {
    let mut r = ChatWebhook::new(
        "hooks",
        ChatWebhookSpec {
            url: "https://93.184.216.34/hooks".into(),
            events: vec![WebhookEvent::MessageCreated, WebhookEvent::Notification],
            secret_ref: SecretKeyRef {
                name: "hook-secret".into(),
                key: "signing".into(),
            },
        },
    );
    r.metadata.namespace = Some("chat".into());
    r.metadata.generation = Some(generation);
    r.metadata.uid = Some("5e6f7a8b".into());
    if finalizer {
        r.metadata.finalizers = Some(vec![WEBHOOK_FINALIZER.into()]);
    }
    r
}

/// The status each status write in `seen` carried, in order.
pub fn statuses(seen: &[Seen]) -> Vec<&Value> {
    seen.iter()
        .filter(|s| s.is_status_write())
        .map(|s| &s.body["status"])
        .collect()
}

/// The Lease every pod of a [`LeaseScenario`] sees, with the field manager that holds it.
#[derive(Default)]
pub struct LeaseStore {
    pub lease: Option<Value>,
    holder_manager: Option<String>,
}

impl LeaseStore {
    fn merge_spec(lease: &mut Value, patch: &Value) {
        if let Some(spec) = patch["spec"].as_object() {
            for (k, v) in spec {
                if v.is_null() {
                    lease["spec"].as_object_mut().unwrap().remove(k);
                } else {
                    lease["spec"][k] = v.clone();
                }
            }
        }
    }

    /// A Lease request as the API server answers it: create once, read, and Server-Side Apply
    /// that conflicts while another field manager holds the Lease.
    fn answer(
        &mut self,
        method: &Method,
        manager: &str,
        apply: bool,
        body: &Value,
    ) -> (u16, Value) {
        match *method {
            Method::GET => match &self.lease {
                Some(l) => (200, l.clone()),
                None => (404, failure(404, "NotFound", "no lease")),
            },
            Method::POST if self.lease.is_some() => (409, failure(409, "AlreadyExists", "exists")),
            Method::POST => {
                let mut l = body.clone();
                l["metadata"]["resourceVersion"] = json!("1");
                if l.get("spec").is_none() {
                    l["spec"] = json!({});
                }
                self.lease = Some(l.clone());
                (201, l)
            }
            Method::PATCH => {
                let held = self
                    .lease
                    .as_ref()
                    .is_some_and(|l| !l["spec"]["holderIdentity"].is_null());
                if apply && held && self.holder_manager.as_deref() != Some(manager) {
                    return (409, failure(409, "Conflict", "held by another manager"));
                }
                let Some(l) = self.lease.as_mut() else {
                    return (404, failure(404, "NotFound", "no lease"));
                };
                Self::merge_spec(l, body);
                let now_held = !l["spec"]["holderIdentity"].is_null();
                let l = l.clone();
                if apply {
                    self.holder_manager = Some(manager.to_string());
                } else if !now_held {
                    self.holder_manager = None;
                }
                (200, l)
            }
            _ => (405, failure(405, "MethodNotAllowed", "method not allowed")),
        }
    }
}

/// Pods sharing one Lease: each pod's API server answers Lease requests from the shared store,
/// lists no `ChatRoom`s or `ChatPolicy`s and keeps their watches open.
#[derive(Clone, Default)]
pub struct LeaseScenario {
    pub leases: Arc<Mutex<LeaseStore>>,
}

/// One pod of a [`LeaseScenario`], running the operator's `run` loop.
pub struct Pod {
    pub state: AppState,
    /// How many times this pod listed `ChatRoom`s (only a leader does).
    pub room_lists: Arc<AtomicUsize>,
    pub stop: tokio::sync::watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Pod {
    pub fn leads(&self) -> bool {
        self.state.leader.load(Ordering::SeqCst)
    }

    pub fn has_listed_rooms(&self) -> bool {
        self.room_lists.load(Ordering::SeqCst) > 0
    }
}

impl LeaseScenario {
    /// Starts a pod whose controller watches resources and competes for the Lease.
    pub async fn pod(&self) -> Pod {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::for_tests(dir.path().to_path_buf());
        config.watch_resources = true;
        config.lease_duration_secs = 3;
        let (state, _writer, _stop) = crate::server::build(config).await.unwrap();
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let room_lists = Arc::new(AtomicUsize::new(0));
        self.serve(handle, room_lists.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(
            state.clone(),
            Client::new(service, "default"),
            "chat".into(),
            stopped,
        ));
        Pod {
            state,
            room_lists,
            stop,
            task,
            _dir: dir,
        }
    }

    fn serve(&self, mut handle: Handle, room_lists: Arc<AtomicUsize>) {
        let leases = self.leases.clone();
        tokio::spawn(async move {
            let mut open_watches = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().clone();
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or("").to_string();
                let apply = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|t| t.contains("apply-patch"));
                let body: Value =
                    serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap())
                        .unwrap_or(Value::Null);
                let (code, answer) = if path.contains("/leases") {
                    let manager = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("fieldManager="))
                        .unwrap_or("");
                    leases
                        .lock()
                        .unwrap()
                        .answer(&method, manager, apply, &body)
                } else if query.contains("watch=true") {
                    open_watches.push(send); // a watch with nothing to say stays open
                    continue;
                } else {
                    let kind = if path.ends_with("/chatrooms") {
                        room_lists.fetch_add(1, Ordering::SeqCst);
                        "ChatRoomList"
                    } else if path.ends_with("/chatwebhooks") {
                        "ChatWebhookList"
                    } else {
                        "ChatPolicyList"
                    };
                    (
                        200,
                        json!({"apiVersion": "confab.dev/v1alpha1", "kind": kind,
                               "metadata": {"resourceVersion": "1"}, "items": []}),
                    )
                };
                let resp = Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap();
                send.send_response(resp);
            }
        });
    }
}

/// Polls `check` for up to five seconds.
pub async fn settle(check: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
