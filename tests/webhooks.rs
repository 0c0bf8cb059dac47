//! Webhooks (protocol v1.1): a receiver started by the test (a real HTTP server) records what
//! confab posts; events are signed, retried with the same `webhook-id`, survive a restart, and
//! two pods never deliver one event twice.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as HttpStatus};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Postgres, Redis, Server, User, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A webhook receiver: records every request; answers 500 to the first `fail_first` requests
/// of each webhook-id, then 200.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<Mutex<usize>>,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            url: format!("http://{}/hook", listener.local_addr().unwrap()),
            got: Arc::default(),
            fail_first: Arc::new(Mutex::new(fail_first)),
            seen: Arc::default(),
        };
        let app = Router::new()
            .route(
                "/hook",
                post(
                    |State(r): State<Receiver>, headers: HeaderMap, body: String| async move {
                        let h = |n: &str| {
                            headers
                                .get(n)
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default()
                        };
                        let id = h("webhook-id");
                        r.got.lock().unwrap().push(Received {
                            id: id.clone(),
                            timestamp: h("webhook-timestamp"),
                            signature: h("webhook-signature"),
                            body,
                        });
                        let mut seen = r.seen.lock().unwrap();
                        let n = seen.entry(id).or_default();
                        *n += 1;
                        if *n <= *r.fail_first.lock().unwrap() {
                            HttpStatus::INTERNAL_SERVER_ERROR
                        } else {
                            HttpStatus::NO_CONTENT
                        }
                    },
                ),
            )
            .with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived, and a moment more for any extra; asserts they are `n`
    /// distinct events (no webhook-id twice) and returns them.
    async fn exactly_once(&self, n: usize) -> Vec<Received> {
        assert!(
            eventually(Duration::from_secs(15), || async { self.got().len() >= n }).await,
            "got {} of {n}",
            self.got().len()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        let got = self.got();
        let mut ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!((got.len(), ids.len()), (n, n), "each event once");
        got
    }

    /// Waits until a request of event `kind` whose data satisfies `f` arrived.
    async fn wait_for(&self, kind: &str, f: impl Fn(&Value) -> bool) -> Received {
        let mut found = None;
        let ok = eventually(Duration::from_secs(10), || {
            let hit = self
                .got()
                .into_iter()
                .find(|r| r.json()["type"] == kind && f(&r.json()["data"]));
            let done = hit.is_some();
            found = hit;
            async move { done }
        })
        .await;
        assert!(ok, "no {kind} event arrived; got {:?}", self.got());
        found.unwrap()
    }
}

/// The signature a Standard Webhooks verifier expects, computed here independently.
fn expected_signature(secret: &str, r: &Received) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let signed = format!("{}.{}.{}", r.id, r.timestamp, r.body);
    let tag = aws_lc_rs::hmac::sign(&key, signed.as_bytes());
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

fn config() -> (confab::config::Config, tempfile::TempDir) {
    let (mut c, dir) = common::embedded();
    c.admins = vec!["root".into()];
    c.webhook_allow_private = true;
    (c, dir)
}

/// A pod of a cluster on `pg` and `redis`, with `root` an admin and private receivers allowed.
fn cluster_config(pg: &Postgres, redis: &Redis) -> confab::config::Config {
    let mut c = common::unlimited(common::cluster(pg, redis));
    c.admins = vec!["root".into()];
    c.webhook_allow_private = true;
    c
}

async fn register(root: &User, url: &str, events: &[&str]) -> Value {
    let (st, hook) = root
        .api
        .post(
            "/api/v1/admin/webhooks",
            json!({"url": url, "events": events}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{hook}");
    hook
}

#[tokio::test]
async fn every_event_type_arrives_signed() {
    let (c, dir) = config();
    let s = Server::start_with(c, Some(dir)).await;
    let root = s.user("root").await;
    let alice = s.user("alice").await;
    let receiver = Receiver::start(0).await;
    let hook = register(
        &root,
        &receiver.url,
        &[
            "message.created",
            "message.updated",
            "member.joined",
            "member.left",
            "room.created",
            "room.updated",
        ],
    )
    .await;
    let secret = hook["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let (_, list) = root.api.get("/api/v1/admin/webhooks").await;
    assert_eq!(list["webhooks"][0]["id"], hook["id"]);
    assert!(
        list["webhooks"][0].get("secret").is_none(),
        "secrets are shown once"
    );

    let room = root.create_room("general", "public").await;
    let created = receiver
        .wait_for("room.created", |d| d["id"] == room.as_str())
        .await;
    assert_eq!(created.json()["data"]["name"], "general");
    alice.join(&room).await;
    receiver
        .wait_for("member.joined", |d| {
            d["room"] == room.as_str() && d["user"] == alice.id.as_str()
        })
        .await;
    let m = alice.post_message(&room, "hello hooks").await;
    let sent = receiver
        .wait_for("message.created", |d| d["body"] == "hello hooks")
        .await;
    assert_eq!(sent.json()["data"]["seq"], m["seq"]);
    assert_eq!(sent.json()["data"]["room"], room.as_str());
    assert!(sent.json()["timestamp"].as_str().unwrap().ends_with('Z'));
    let (st, _) = alice
        .api
        .put(&format!("/api/v1/rooms/{room}/messages/1/reactions/:tada:"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    receiver
        .wait_for("message.updated", |d| {
            d["reactions"][0]["emoji"] == ":tada:"
        })
        .await;
    let (st, _) = root
        .api
        .patch(&format!("/api/v1/rooms/{room}"), json!({"topic": "hooks"}))
        .await;
    assert_eq!(st, StatusCode::OK);
    receiver
        .wait_for("room.updated", |d| d["topic"] == "hooks")
        .await;
    let (st, _) = alice
        .api
        .post(&format!("/api/v1/rooms/{room}/leave"), json!({}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    receiver
        .wait_for("member.left", |d| d["user"] == alice.id.as_str())
        .await;

    // Every request carries the Standard Webhooks headers and a valid signature.
    for r in receiver.got() {
        assert!(r.id.starts_with("evt_"), "{r:?}");
        let ts: u64 = r.timestamp.parse().unwrap();
        assert!(ts.abs_diff(confab::now_secs()) < 60);
        assert_eq!(r.signature, expected_signature(&secret, &r), "{r:?}");
    }
    // And the deliveries are listed, newest first.
    let id = hook["id"].as_str().unwrap();
    let path = format!("/api/v1/admin/webhooks/{id}/deliveries?limit=3");
    // Attempts are recorded in batches just after they end.
    assert!(
        eventually(Duration::from_secs(5), || async {
            root.api.get(&path).await.1["deliveries"]
                .as_array()
                .is_some_and(|a| a.len() == 3)
        })
        .await
    );
    let (st, d) = root.api.get(&path).await;
    assert_eq!(st, StatusCode::OK);
    let d = d["deliveries"].as_array().unwrap();
    assert_eq!(d.len(), 3);
    assert_eq!(
        (&d[0]["status"], &d[0]["attempt"]),
        (&json!(204), &json!(1))
    );
    assert!(d[0]["event_id"].as_str().unwrap().starts_with("evt_"));
    // A message.created-only webhook gets nothing else.
    let only = Receiver::start(0).await;
    register(&root, &only.url, &["message.created"]).await;
    alice.join(&room).await;
    alice.post_message(&room, "second").await;
    only.wait_for("message.created", |d| d["body"] == "second")
        .await;
    assert!(
        only.got()
            .iter()
            .all(|r| r.json()["type"] == "message.created")
    );
}

#[tokio::test]
async fn failed_attempts_are_retried_with_the_same_id_and_listed() {
    let (c, dir) = config();
    let s = Server::start_with(c, Some(dir)).await;
    let root = s.user("root").await;
    let receiver = Receiver::start(1).await;
    let hook = register(&root, &receiver.url, &["message.created"]).await;
    let room = root.create_room("general", "public").await;
    root.post_message(&room, "try again").await;
    // First attempt 500, the retry (5-10 s later) 204, under the same webhook-id.
    assert!(
        eventually(Duration::from_secs(20), || async {
            receiver.got().len() >= 2
        })
        .await,
        "no retry: {:?}",
        receiver.got()
    );
    let got = receiver.got();
    assert_eq!(got[0].id, got[1].id);
    assert_eq!(got[0].body, got[1].body, "the same event, byte for byte");
    let id = hook["id"].as_str().unwrap();
    let path = format!("/api/v1/admin/webhooks/{id}/deliveries");
    // Attempts are recorded in batches just after they end: wait for the second one.
    let listed = || async {
        let (_, d) = root.api.get(&path).await;
        d["deliveries"].as_array().cloned().unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            listed().await.len() >= 2
        })
        .await
    );
    let d = listed().await;
    assert_eq!(d.len(), 2);
    assert_eq!(
        (&d[0]["attempt"], &d[0]["status"]),
        (&json!(2), &json!(204))
    );
    assert_eq!(
        (&d[1]["attempt"], &d[1]["status"]),
        (&json!(1), &json!(500))
    );
    let metrics = s.metrics().await;
    assert_eq!(
        common::metric(
            &metrics,
            "confab_webhook_deliveries_total{outcome=\"retry\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn events_due_when_the_server_stops_are_delivered_after_it_restarts() {
    let (c, dir) = config();
    let data = dir.path().to_path_buf();
    let s = Server::start(c.clone()).await;
    let root = s.user("root").await;
    // Nothing listens at the URL yet: every attempt fails and the events stay due.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/hook");
    register(&root, &url, &["message.created"]).await;
    let room = root.create_room("general", "public").await;
    for i in 0..5 {
        root.post_message(&room, &format!("m{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.shutdown().await.unwrap();

    // The receiver comes up where the URL points, and the server starts again.
    let receiver = {
        let listener = TcpListener::bind(addr).await.unwrap();
        let r = Receiver {
            url,
            got: Arc::default(),
            fail_first: Arc::new(Mutex::new(0)),
            seen: Arc::default(),
        };
        let app = Router::new()
            .route(
                "/hook",
                post(
                    |State(r): State<Receiver>, headers: HeaderMap, body: String| async move {
                        let id = headers["webhook-id"].to_str().unwrap().to_string();
                        r.got.lock().unwrap().push(Received {
                            id,
                            timestamp: String::new(),
                            signature: String::new(),
                            body,
                        });
                        HttpStatus::OK
                    },
                ),
            )
            .with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    };
    let mut again = c;
    again.data_dir = data;
    let _s = Server::start_with(again, Some(dir)).await;
    assert!(
        eventually(Duration::from_secs(25), || async {
            receiver.got().len() >= 5
        })
        .await,
        "got {:?}",
        receiver.got()
    );
    let mut bodies: Vec<String> = receiver
        .got()
        .iter()
        .map(|r| r.json()["data"]["body"].as_str().unwrap().to_string())
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
}

#[tokio::test]
async fn bad_webhooks_are_refused_naming_the_problem() {
    let (mut c, dir) = config();
    c.webhook_allow_private = false;
    let s = Server::start_with(c, Some(dir)).await;
    let root = s.user("root").await;
    let alice = s.user("alice").await;
    for (body, words) in [
        (
            json!({"url": "http://127.0.0.1:9/hook", "events": ["message.created"]}),
            "private",
        ),
        (
            json!({"url": "http://localhost/hook", "events": ["message.created"]}),
            "private",
        ),
        (
            json!({"url": "http://169.254.169.254/latest", "events": ["message.created"]}),
            "link-local",
        ),
        (
            json!({"url": "http://[::1]/hook", "events": ["message.created"]}),
            "loopback",
        ),
        (
            json!({"url": "http://10.0.0.8/hook", "events": ["message.created"]}),
            "private",
        ),
        (
            json!({"url": "ftp://example.com/hook", "events": ["message.created"]}),
            "http",
        ),
        (
            json!({"url": "https://no-such-host.invalid/hook", "events": ["message.created"]}),
            "cannot be resolved",
        ),
        (
            json!({"url": "not a url", "events": ["message.created"]}),
            "url",
        ),
        (
            json!({"url": "https://93.184.216.34/hook", "events": ["message.sent"]}),
            "unknown event type",
        ),
        (
            json!({"url": "https://93.184.216.34/hook", "events": []}),
            "at least one",
        ),
        (
            json!({"url": "https://93.184.216.34/hook", "events": ["message.created"], "secret": "hunter2"}),
            "whsec_",
        ),
    ] {
        let (st, answer) = root.api.post("/api/v1/admin/webhooks", body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(words),
            "{body}: '{message}' should say '{words}'"
        );
    }
    let (st, _) = alice
        .api
        .post(
            "/api/v1/admin/webhooks",
            json!({"url": "https://example.com/hook", "events": ["message.created"]}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = root
        .api
        .delete(&format!("/api/v1/admin/webhooks/{}", uuid_nil()))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = root.api.get("/api/v1/admin/webhooks/x/deliveries").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

fn uuid_nil() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}

#[tokio::test]
async fn two_pods_deliver_each_event_once() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let config = || cluster_config(&pg, &redis);
    let a = Server::start(config()).await;
    let b = Server::start(config()).await;
    let root = a.user("root").await;
    let receiver = Receiver::start(0).await;
    register(&root, &receiver.url, &["message.created"]).await;
    let room = root.create_room("general", "public").await;
    b.user("bob").await;
    let bob = b.login("bob").await;
    bob.join(&room).await;
    // Messages committed on both pods; both pods' workers claim from one outbox.
    for i in 0..40 {
        let who = if i % 2 == 0 { &root } else { &bob };
        who.post_message(&room, &format!("m{i}")).await;
    }
    receiver.exactly_once(40).await;
}

#[tokio::test]
async fn people_with_no_socket_anywhere_get_notification_events() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let config = || cluster_config(&pg, &redis);
    let a = Server::start(config()).await;
    let b = Server::start(config()).await;
    let root = a.user("root").await;
    let receiver = Receiver::start(0).await;
    register(&root, &receiver.url, &["notification"]).await;
    let bob = a.user("bob").await;
    let carol = a.user("carol").await;
    let dave = a.user("dave").await;
    let room = bob.create_room("general", "public").await;
    carol.join(&room).await;
    dave.join(&room).await;
    // Carol has a socket open on pod b (not subscribed to the room); Dave has none.
    let carol_b = b.login("carol").await;
    let mut carols = carol_b.connect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    bob.post_message(&room, "@carol @dave standup in five")
        .await;
    let event = receiver
        .wait_for("notification", |d| d["user"] == dave.id.as_str())
        .await;
    let data = &event.json()["data"];
    assert_eq!(
        (&data["reason"], &data["room"], &data["message"]["body"]),
        (
            &json!("mention"),
            &json!(room),
            &json!("@carol @dave standup in five")
        )
    );
    // Carol was told on her socket instead.
    assert_eq!(carols.expect("notification").await["reason"], "mention");
    // A direct message to Dave, who is still offline.
    let (_, dm) = bob
        .api
        .post("/api/v1/dms", json!({"user_id": dave.id}))
        .await;
    let dm = dm["id"].as_str().unwrap().to_string();
    bob.post_message(&dm, "are you there?").await;
    receiver
        .wait_for("notification", |d| {
            d["reason"] == "dm" && d["room"] == dm.as_str()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let for_carol = receiver
        .got()
        .iter()
        .filter(|r| r.json()["data"]["user"] == carol.id.as_str())
        .count();
    assert_eq!(
        for_carol, 0,
        "someone with a socket on another pod is not offline"
    );
    let for_bob = receiver
        .got()
        .iter()
        .filter(|r| r.json()["data"]["user"] == bob.id.as_str())
        .count();
    assert_eq!(for_bob, 0, "nobody is notified of their own message");
}

#[tokio::test]
async fn a_hanging_receiver_costs_one_bounded_attempt_and_holds_up_nobody_else() {
    let (c, dir) = config();
    let s = Server::start_with(c, Some(dir)).await;
    let root = s.user("root").await;
    // A receiver that accepts connections and never answers.
    let hanging = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}/hook", hanging.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = hanging.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let slow = register(&root, &hanging_url, &["message.created"]).await;
    let fine = Receiver::start(0).await;
    register(&root, &fine.url, &["message.created"]).await;
    let room = root.create_room("general", "public").await;
    for i in 0..20 {
        root.post_message(&room, &format!("m{i}")).await;
    }
    // The healthy receiver gets everything at once, whatever the other one does.
    assert!(
        eventually(Duration::from_secs(5), || async { fine.got().len() >= 20 }).await,
        "got {}",
        fine.got().len()
    );
    // The hanging one holds at most 8 requests at a time, and each attempt ends at 10 s.
    assert!(
        held.lock().unwrap().len() <= 8,
        "{} connections",
        held.lock().unwrap().len()
    );
    let id = slow["id"].as_str().unwrap();
    let mut timed_out = false;
    for _ in 0..60 {
        let (_, d) = root
            .api
            .get(&format!("/api/v1/admin/webhooks/{id}/deliveries"))
            .await;
        if d["deliveries"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["error"] == "timed out" && x["status"].is_null())
        }) {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(timed_out, "the attempt ends as timed out");
}

/// The attempts of webhook `id` as `GET …/deliveries` lists them, once `n` are recorded.
async fn attempts(root: &User, id: &str, n: usize) -> Vec<Value> {
    let path = format!("/api/v1/admin/webhooks/{id}/deliveries");
    let mut list = Vec::new();
    for _ in 0..120 {
        let (_, d) = root.api.get(&path).await;
        list = d["deliveries"].as_array().cloned().unwrap_or_default();
        if list.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(list.len() >= n, "{n} attempts expected: {list:?}");
    list
}

/// A receiver that redirects elsewhere is not followed, and one that answers with an endless
/// body is read only so far: each costs one attempt, bounded in time and memory.
#[tokio::test]
async fn redirects_are_not_followed_and_endless_answers_are_cut_short() {
    let (c, dir) = config();
    let s = Server::start_with(c, Some(dir)).await;
    let root = s.user("root").await;
    let elsewhere = Receiver::start(0).await;
    let target = elsewhere.url.clone();
    let odd = Router::new()
        .route(
            "/redirect",
            post(move || {
                let target = target.clone();
                async move { (HttpStatus::TEMPORARY_REDIRECT, [("location", target)]) }
            }),
        )
        .route(
            "/endless",
            post(|| async {
                // 64 KiB chunks for ever (a gigabyte is only a matter of time).
                let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
                let body =
                    futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
                (HttpStatus::OK, axum::body::Body::from_stream(body))
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, odd).await.unwrap() });
    let redirect = register(&root, &format!("{base}/redirect"), &["message.created"]).await;
    let endless = register(&root, &format!("{base}/endless"), &["message.created"]).await;
    let room = root.create_room("general", "public").await;
    let started = std::time::Instant::now();
    root.post_message(&room, "hello").await;

    let r = attempts(&root, redirect["id"].as_str().unwrap(), 1).await;
    assert_eq!(r[0]["status"], 307);
    assert_eq!(r[0]["error"], "redirects are not followed");
    let e = attempts(&root, endless["id"].as_str().unwrap(), 1).await;
    assert_eq!(e[0]["status"], 200, "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "an endless answer ends the attempt at once: {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(elsewhere.got().is_empty(), "the redirect was followed");
    let metrics = s.metrics().await;
    assert_eq!(
        common::metric(
            &metrics,
            "confab_webhook_deliveries_total{outcome=\"delivered\"}"
        ),
        Some(1.0),
        "the endless 200 counts as delivered"
    );
    assert_eq!(
        common::metric(
            &metrics,
            "confab_webhook_deliveries_total{outcome=\"retry\"}"
        ),
        Some(1.0),
        "the redirect is retried later"
    );
}

/// A receiver that does not answer in time gets the same event again later, under the same
/// `webhook-id`, and the attempt list says why the first one failed.
#[tokio::test]
async fn an_attempt_that_timed_out_is_retried_with_the_same_id() {
    let (c, dir) = config();
    let s = Server::start_with(c, Some(dir)).await;
    let root = s.user("root").await;
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = calls.clone();
    let slow_once = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let id = headers["webhook-id"].to_str().unwrap().to_string();
                let first = {
                    let mut calls = seen.lock().unwrap();
                    calls.push(id.clone());
                    calls.iter().filter(|c| **c == id).count() == 1
                };
                if first {
                    // Longer than an attempt may take (10 s).
                    tokio::time::sleep(Duration::from_secs(15)).await;
                }
                HttpStatus::NO_CONTENT
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, slow_once).await.unwrap() });
    let hook = register(&root, &url, &["message.created"]).await;
    let room = root.create_room("general", "public").await;
    root.post_message(&room, "slowly").await;
    // Attempt 1 times out at 10 s; the retry comes 5-10 s after it.
    let d = attempts(&root, hook["id"].as_str().unwrap(), 2).await;
    assert_eq!(
        (&d[1]["attempt"], &d[1]["error"]),
        (&json!(1), &json!("timed out"))
    );
    assert!(d[1]["status"].is_null());
    assert_eq!(
        (&d[0]["attempt"], &d[0]["status"]),
        (&json!(2), &json!(204))
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0], calls[1], "the retry carries the same webhook-id");
}

/// A pod killed (SIGKILL) while it holds events mid-delivery: the surviving pod delivers them
/// once their claims lapse, under the same `webhook-id`s.
#[tokio::test]
async fn events_held_by_a_pod_killed_mid_delivery_are_delivered_by_the_survivor() {
    let mut fleet = common::fleet::Fleet::start_with(
        2,
        &[
            ("CONFAB_WEBHOOK_LEASE_SECS", "30"),
            ("CONFAB_WEBHOOK_ALLOW_PRIVATE", "true"),
            ("CONFAB_ADMINS", "root"),
        ],
    )
    .await;
    // Only pod 0 runs while the events are claimed.
    fleet.sigterm(1);
    assert!(fleet.wait_exit(1, Duration::from_secs(20)).await);

    // The receiver hangs until told to answer; it records the ids it answered 204.
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = {
        let (hang, seen, answered) = (hang.clone(), seen.clone(), answered.clone());
        Router::new().route(
            "/hook",
            post(move |headers: HeaderMap| {
                let (hang, seen, answered) = (hang.clone(), seen.clone(), answered.clone());
                async move {
                    let id = headers["webhook-id"].to_str().unwrap().to_string();
                    seen.lock().unwrap().push(id.clone());
                    if hang.load(std::sync::atomic::Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return HttpStatus::SERVICE_UNAVAILABLE;
                    }
                    answered.lock().unwrap().push(id);
                    HttpStatus::NO_CONTENT
                }
            }),
        )
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let root = fleet.user("root").await;
    register(&root, &url, &["message.created"]).await;
    let room = root.create_room("general", "public").await;
    for i in 0..5 {
        root.post_message(&room, &format!("m{i}")).await;
    }
    // Pod 0 has claimed all five and is attempting them.
    assert!(
        eventually(Duration::from_secs(10), || async {
            seen.lock().unwrap().len() >= 5
        })
        .await,
        "pod 0 attempts: {:?}",
        seen.lock().unwrap()
    );
    let claimed: std::collections::BTreeSet<String> =
        seen.lock().unwrap().iter().cloned().collect();
    fleet.kill9(0).await;
    hang.store(false, std::sync::atomic::Ordering::SeqCst);
    fleet.start_pod(1).await;
    // Pod 1 takes them over once pod 0's 30 s claims lapse.
    assert!(
        eventually(Duration::from_secs(60), || async {
            answered.lock().unwrap().len() >= 5
        })
        .await,
        "the survivor delivered: {:?}",
        answered.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answered = answered.lock().unwrap().clone();
    let delivered: std::collections::BTreeSet<String> = answered.iter().cloned().collect();
    assert_eq!(
        delivered, claimed,
        "the same events, under the same webhook-ids"
    );
    assert_eq!(answered.len(), 5, "each delivered once: {answered:?}");
}

/// With nothing to deliver, the worker asks the store for due events about five times a
/// second, not in a loop that keeps a core and the database busy.
#[tokio::test]
async fn an_idle_delivery_worker_polls_gently() {
    let (c, dir) = config();
    let s = Server::start_with(c, Some(dir)).await;
    let claims = |text: &str| {
        common::metric(
            text,
            "confab_store_query_duration_seconds_count{op=\"claim_webhook_events\"}",
        )
        .unwrap_or(0.0)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = claims(&s.metrics().await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = claims(&s.metrics().await) - before;
    assert!(
        (2.0..=15.0).contains(&during),
        "{during} claims in 2 s of idling"
    );
}

/// Delivered events and their attempts are pruned once older than
/// `--webhook-retention-hours`; newer ones stay listed.
#[tokio::test]
async fn delivered_events_are_pruned_after_the_retention_period() {
    let (mut c, dir) = config();
    c.webhook_retention_hours = 1;
    let data = dir.path().to_path_buf();
    let s = Server::start(c.clone()).await;
    let root = s.user("root").await;
    let receiver = Receiver::start(0).await;
    let hook = register(&root, &receiver.url, &["message.created"]).await;
    let id = hook["id"].as_str().unwrap().to_string();
    let room = root.create_room("general", "public").await;
    root.post_message(&room, "old news").await;
    assert_eq!(attempts(&root, &id, 1).await.len(), 1);
    s.shutdown().await.unwrap();

    // Two hours pass for what was delivered.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("confab.db").display()))
        .await
        .unwrap();
    for q in [
        "UPDATE webhook_events SET created_at = created_at - 7200000, next_attempt_at = next_attempt_at - 7200000",
        "UPDATE webhook_deliveries SET at = at - 7200000",
    ] {
        sqlx::query(q).execute(&db).await.unwrap();
    }
    db.close().await;

    let mut again = c;
    again.data_dir = data;
    let s = Server::start_with(again, Some(dir)).await;
    let root = s.login("root").await;
    let path = format!("/api/v1/admin/webhooks/{id}/deliveries");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (_, d) = root.api.get(&path).await;
            d["deliveries"].as_array().is_some_and(|a| a.is_empty())
        })
        .await,
        "the old attempt is pruned"
    );
    root.post_message(&room, "fresh").await;
    let d = attempts(&root, &id, 1).await;
    assert_eq!(d.len(), 1, "the new attempt stays: {d:?}");
    assert_eq!(receiver.got().len(), 2, "nothing delivered twice");
}

/// Messages committed together in several rooms (one batch, so one range per room in the
/// outbox) each become one `message.created` event, with every seq of every room, once;
/// on both databases.
#[tokio::test]
async fn messages_sent_at_once_in_many_rooms_each_arrive_once() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (embedded, _dir) = config();
    for c in [common::unlimited(embedded), cluster_config(&pg, &redis)] {
        let s = Server::start(c).await;
        let root = s.user("root").await;
        let receiver = Receiver::start(0).await;
        register(&root, &receiver.url, &["message.created"]).await;
        let mut rooms = Vec::new();
        for r in 0..4 {
            rooms.push(root.create_room(&format!("room-{r}"), "public").await);
        }
        let sends = (0..60).map(|i| {
            let (root, room) = (&root, rooms[i % 4].clone());
            async move { root.post_message(&room, &format!("m{i}")).await }
        });
        futures::future::join_all(sends).await;
        let got = receiver.exactly_once(60).await;
        for room in &rooms {
            let mut seqs: Vec<i64> = got
                .iter()
                .map(|r| r.json())
                .filter(|v| v["type"] == "message.created" && v["data"]["room"] == *room)
                .map(|v| v["data"]["seq"].as_i64().unwrap())
                .collect();
            seqs.sort();
            let first = seqs[0];
            assert_eq!(seqs, (first..first + 15).collect::<Vec<_>>(), "room {room}");
        }
    }
}

/// Events a receiver keeps refusing are counted in the queue depth and the oldest due age
/// (what the backlog alert watches), on both databases.
#[tokio::test]
async fn undelivered_events_show_in_the_backlog_gauges() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (embedded, _dir) = config();
    for c in [common::unlimited(embedded), cluster_config(&pg, &redis)] {
        let s = Server::start(c).await;
        let root = s.user("root").await;
        let receiver = Receiver::start(usize::MAX).await;
        register(&root, &receiver.url, &["message.created"]).await;
        let room = root.create_room("general", "public").await;
        for i in 0..5 {
            root.post_message(&room, &format!("m{i}")).await;
        }
        let gauges = || async {
            let text = s.metrics().await;
            (
                common::metric(&text, "confab_webhook_queue_depth").unwrap_or(0.0),
                common::metric(&text, "confab_webhook_oldest_due_age_seconds").unwrap_or(0.0),
            )
        };
        assert!(
            eventually(Duration::from_secs(15), || async {
                let (depth, age) = gauges().await;
                depth == 5.0 && age > 0.0
            })
            .await,
            "gauges: {:?}",
            gauges().await
        );
    }
}
