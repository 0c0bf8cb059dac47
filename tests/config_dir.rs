//! Operator-style configuration end to end: `ChatRoom` and `ChatPolicy` files (the examples in
//! `k8s/examples/`) dropped into `--config-dir` of a running confab.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Server, User, embedded, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(8);

struct Setup {
    s: Server,
    dir: tempfile::TempDir,
    root: User,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, data) = embedded();
    config.config_dir = Some(dir.path().to_path_buf());
    config.config_resync_secs = 1;
    config.admins = vec!["root".into()];
    let s = Server::start_with(config, Some(data)).await;
    let root = s.user("root").await;
    Setup { s, dir, root }
}

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("k8s/examples")
            .join(name),
    )
    .unwrap()
}

fn put(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The room named `name` as `u` sees it in its room list, if there.
async fn room_named(u: &User, name: &str) -> Option<Value> {
    let (_, list) = u.api.get("/api/v1/rooms").await;
    list["rooms"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
}

async fn config_status(root: &User) -> Value {
    root.api.get("/api/v1/admin/config").await.1
}

#[tokio::test]
async fn a_chatroom_file_becomes_a_room_and_follows_edits_and_removal() {
    let t = setup().await;
    let alice = t.s.user("alice").await;
    let bob = t.s.user("bob").await;
    let file = put(
        t.dir.path(),
        "general.yaml",
        &example("chatroom-general.yaml"),
    );
    assert!(
        eventually(WITHIN, || async {
            room_named(&alice, "general")
                .await
                .is_some_and(|r| r["role"] == "owner")
        })
        .await
    );
    let room = room_named(&alice, "general").await.unwrap();
    assert_eq!(
        (
            room["kind"].as_str(),
            room["topic"].as_str(),
            room["managed_by"].as_str()
        ),
        (
            Some("public"),
            Some("Company-wide chat"),
            Some("chat/general")
        )
    );
    assert_eq!(
        room_named(&bob, "general").await.unwrap()["role"],
        "moderator"
    );
    let id = room["id"].as_str().unwrap().to_string();

    // REST changes to a managed room are refused, naming the resource.
    let (st, body) = alice
        .api
        .patch(&format!("/api/v1/rooms/{id}"), json!({"topic": "mine"}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chat/general")
    );
    let (st, _) = alice.api.delete(&format!("/api/v1/rooms/{id}")).await;
    assert_eq!(st, StatusCode::CONFLICT);

    // Editing the file changes the room; subscribers hear of it.
    let mut ws = alice.subscribed(&id).await;
    std::fs::write(
        &file,
        example("chatroom-general.yaml").replace("Company-wide chat", "Launch week"),
    )
    .unwrap();
    assert_eq!(
        ws.expect_skipping("room_updated").await["topic"],
        "Launch week"
    );

    // Resyncs of an unchanged resource write nothing.
    let writes = |metrics: String| {
        common::metric(
            &metrics,
            "confab_store_query_duration_seconds_count{op=\"update_room\"}",
        )
    };
    let before = writes(t.s.metrics().await);
    tokio::time::sleep(Duration::from_millis(2500)).await; // two resyncs at 1 s
    assert_eq!(writes(t.s.metrics().await), before);

    // The status says what was applied.
    let status = config_status(&t.root).await;
    let r = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "ChatRoom")
        .unwrap()
        .clone();
    assert_eq!(
        (
            r["ready"].as_bool(),
            r["room_id"].as_str(),
            r["name"].as_str()
        ),
        (Some(true), Some(id.as_str()), Some("general"))
    );

    // Removing the file archives the room; history stays.
    alice.post_message(&id, "before the end").await;
    std::fs::remove_file(&file).unwrap();
    assert!(
        eventually(WITHIN, || async {
            alice.api.get(&format!("/api/v1/rooms/{id}")).await.1["archived"] == true
        })
        .await
    );
    let (_, h) = alice.api.get(&format!("/api/v1/rooms/{id}/messages")).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    // Putting it back brings the room back.
    put(
        t.dir.path(),
        "general.yaml",
        &example("chatroom-general.yaml"),
    );
    assert!(
        eventually(WITHIN, || async {
            alice.api.get(&format!("/api/v1/rooms/{id}")).await.1["archived"] == false
        })
        .await
    );
}

#[tokio::test]
async fn users_declared_before_they_register_join_when_they_do() {
    let t = setup().await;
    let alice = t.s.user("alice").await;
    put(
        t.dir.path(),
        "oncall.yaml",
        &example("chatroom-oncall.yaml"),
    );
    assert!(
        eventually(WITHIN, || async {
            room_named(&alice, "oncall").await.is_some()
        })
        .await
    );
    let status = config_status(&t.root).await;
    let r = &status["resources"][0];
    assert_eq!(r["unresolved_users"], json!(["bob", "carol"]), "{status}");
    assert_eq!(r["ready"], true);
    let carol = t.s.user("carol").await;
    assert!(
        eventually(WITHIN, || async {
            room_named(&carol, "oncall")
                .await
                .is_some_and(|r| r["role"] == "member")
        })
        .await
    );
    // The room is read-only for members, as declared.
    let id = room_named(&carol, "oncall").await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, _) = carol
        .api
        .post(
            &format!("/api/v1/rooms/{id}/messages"),
            json!({"body": "hi"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    alice.post_message(&id, "handover: all quiet").await;
}

#[tokio::test]
async fn a_policy_change_holds_on_open_sockets_without_a_restart() {
    let t = setup().await;
    let alice = t.s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let mut ws = alice.subscribed(&room).await;
    let long = "x".repeat(9_000);
    ws.say(&room, &long, "before").await;
    assert_eq!(ws.expect_skipping("ack").await["client_id"], "before");

    put(t.dir.path(), "policy.yaml", &example("chatpolicy.yaml"));
    let mut refused = false;
    for i in 0..40 {
        ws.say(&room, &long, &format!("after{i}")).await;
        let f = ws.expect_skipping_any(&["ack", "error"]).await;
        if f["type"] == "error" {
            assert_eq!(f["code"], "too_large", "{f}");
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        refused,
        "maxMessageBytes 8192 never took effect on the open socket"
    );
    // Blocked words, and the new message rate (5/s, burst 10) on the same socket.
    ws.say(&room, "oh darn", "blocked").await;
    assert_eq!(ws.expect_skipping("error").await["code"], "forbidden");
    let mut limited = false;
    for i in 0..12 {
        ws.say(&room, "quick", &format!("q{i}")).await;
    }
    for _ in 0..12 {
        let f = ws.expect_skipping_any(&["ack", "error"]).await;
        if f["type"] == "error" && f["code"] == "rate_limited" {
            limited = true;
        }
    }
    assert!(limited, "burst 10 should refuse some of 12 quick messages");
    // Registration closed.
    std::fs::write(
        t.dir.path().join("policy.yaml"),
        example("chatpolicy.yaml").replace("registration: open", "registration: closed"),
    )
    .unwrap();
    assert!(
        eventually(WITHIN, || async {
            t.s.api()
                .post(
                    "/api/v1/auth/register",
                    json!({"username": "late", "password": "password1"}),
                )
                .await
                .0
                == StatusCode::FORBIDDEN
        })
        .await
    );
    let status = config_status(&t.root).await;
    assert_eq!(status["policy_in_force"]["registration"], "closed");
    assert_eq!(status["policy_in_force"]["max_message_bytes"], 8192);
}

#[tokio::test]
async fn a_malformed_file_is_reported_and_changes_nothing() {
    let t = setup().await;
    let alice = t.s.user("alice").await;
    let file = put(
        t.dir.path(),
        "general.yaml",
        &example("chatroom-general.yaml"),
    );
    assert!(
        eventually(WITHIN, || async {
            room_named(&alice, "general").await.is_some()
        })
        .await
    );
    std::fs::write(
        &file,
        "apiVersion: confab.dev/v1alpha1\nkind: ChatRoom\nmetadata: {name: general\n",
    )
    .unwrap();
    assert!(
        eventually(WITHIN, || async {
            config_status(&t.root).await["errors"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["file"] == "general.yaml"))
        })
        .await,
        "the broken file is reported"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let room = room_named(&alice, "general").await.unwrap();
    assert_eq!(
        (room["archived"].as_bool(), room["topic"].as_str()),
        (Some(false), Some("Company-wide chat")),
        "nothing changed"
    );
    // An invalid policy: reported, and the policy in force stays.
    put(
        t.dir.path(),
        "policy.yaml",
        &example("chatpolicy.yaml").replace("burst: 10", "burst: 0"),
    );
    assert!(
        eventually(WITHIN, || async {
            config_status(&t.root).await["resources"]
                .as_array()
                .is_some_and(|r| {
                    r.iter()
                        .any(|r| r["kind"] == "ChatPolicy" && r["ready"] == false)
                })
        })
        .await
    );
    assert_eq!(config_status(&t.root).await["policy_in_force"]["burst"], 20);
}

#[tokio::test]
async fn a_room_created_over_rest_blocks_a_resource_of_the_same_name() {
    let t = setup().await;
    let alice = t.s.user("alice").await;
    let id = alice.create_room("general", "private").await;
    put(
        t.dir.path(),
        "general.yaml",
        &example("chatroom-general.yaml"),
    );
    assert!(
        eventually(WITHIN, || async {
            config_status(&t.root).await["resources"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["reason"] == "NameConflict"))
        })
        .await
    );
    let (_, room) = alice.api.get(&format!("/api/v1/rooms/{id}")).await;
    assert_eq!(
        (room["kind"].as_str(), room["managed_by"].is_null()),
        (Some("private"), true),
        "untouched"
    );
    let (st, _) = t.s.api().get("/api/v1/admin/config").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = alice.api.get("/api/v1/admin/config").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_policys_attachment_limit_holds_on_uploads() {
    let t = setup().await;
    let alice = t.s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let upload = |bytes: usize| {
        let alice = alice.clone();
        let room = room.clone();
        async move {
            alice
                .api
                .client
                .post(format!(
                    "{}/api/v1/rooms/{room}/attachments?filename=f.bin",
                    alice.api.base
                ))
                .bearer_auth(&alice.token)
                .body(vec![1u8; bytes])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(upload(2048).await, StatusCode::CREATED);
    put(
        t.dir.path(),
        "policy.yaml",
        &example("chatpolicy.yaml")
            .replace("maxAttachmentBytes: 5242880", "maxAttachmentBytes: 1024"),
    );
    assert!(
        eventually(WITHIN, || async {
            upload(2048).await == StatusCode::PAYLOAD_TOO_LARGE
        })
        .await
    );
    assert_eq!(upload(1024).await, StatusCode::CREATED);
}

#[tokio::test]
async fn a_user_a_chatroom_names_hears_of_the_room_at_once() {
    let t = setup().await;
    let dave = t.s.user("dave").await;
    let mut ws = dave.connect().await;
    put(
        t.dir.path(),
        "ops.yaml",
        "apiVersion: confab.dev/v1alpha1\nkind: ChatRoom\nmetadata: {name: ops, namespace: chat}\n\
         spec: {name: ops, kind: private, members: [dave]}\n",
    );
    let joined = ws.expect_skipping("room_joined").await;
    assert_eq!(
        (joined["name"].as_str(), joined["role"].as_str()),
        (Some("ops"), Some("member"))
    );
    assert_eq!(joined["managed_by"], "chat/ops");
}

#[tokio::test]
async fn a_chatwebhook_file_registers_a_webhook_and_its_removal_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, data) = embedded();
    config.config_dir = Some(dir.path().to_path_buf());
    config.config_resync_secs = 1;
    config.admins = vec!["root".into()];
    config.webhook_allow_private = true;
    let s = Server::start_with(config, Some(data)).await;
    let root = s.user("root").await;
    // A receiver that records the event types it gets.
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let file = put(
        dir.path(),
        "hooks.yaml",
        &format!(
            "apiVersion: confab.dev/v1alpha1\nkind: ChatWebhook\nmetadata: {{name: push, namespace: chat}}\n\
             spec: {{url: \"{url}\", events: [room.created], secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}}\n"
        ),
    );
    assert!(
        eventually(WITHIN, || async {
            let (_, list) = root.api.get("/api/v1/admin/webhooks").await;
            list["webhooks"][0]["managed_by"] == "ChatWebhook chat/push"
        })
        .await,
        "the file's webhook is registered: {}",
        config_status(&root).await
    );
    let status = config_status(&root).await;
    let hook = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "ChatWebhook")
        .unwrap()
        .clone();
    assert_eq!(
        (&hook["ready"], &hook["name"]),
        (&json!(true), &json!("push"))
    );
    root.create_room("announcements", "public").await;
    assert!(
        eventually(WITHIN, || async { !got.lock().unwrap().is_empty() }).await,
        "the declared webhook delivers"
    );
    assert_eq!(got.lock().unwrap()[0]["data"]["name"], "announcements");

    // A bad document is reported and the webhook in force stays.
    put(
        dir.path(),
        "hooks.yaml",
        "apiVersion: confab.dev/v1alpha1\nkind: ChatWebhook\nmetadata: {name: push, namespace: chat}\n\
         spec: {url: \"https://93.184.216.34/x\", events: [message.sent], secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}\n",
    );
    assert!(
        eventually(WITHIN, || async {
            config_status(&root).await["errors"]
                .to_string()
                .contains("message.sent")
        })
        .await
    );
    let (_, list) = root.api.get("/api/v1/admin/webhooks").await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);

    // Removing the file removes the webhook.
    std::fs::remove_file(file).unwrap();
    assert!(
        eventually(WITHIN, || async {
            let (_, list) = root.api.get("/api/v1/admin/webhooks").await;
            list["webhooks"] == json!([])
        })
        .await,
        "the webhook goes with its file"
    );
}
