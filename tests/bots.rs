//! Bots and API keys (protocol v1.1): admins create bots, a bot works with its key on REST
//! and the WebSocket like any user, and revoking a key or removing the bot closes its sockets.

mod common;

use std::time::Duration;

use common::ws::Closed;
use common::{Server, User, Ws};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn server() -> Server {
    let (mut c, dir) = common::embedded();
    c.admins = vec!["root".into()];
    Server::start_with(c, Some(dir)).await
}

/// Creates a bot as `admin`; returns its user and first key.
async fn create_bot(admin: &User, body: Value) -> (Value, String, String) {
    let (st, created) = admin.api.post("/api/v1/admin/bots", body).await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    (
        created["user"].clone(),
        created["api_key"].as_str().unwrap().to_string(),
        created["key_id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn an_admin_creates_a_bot_that_chats_with_its_key() {
    let s = server().await;
    let root = s.user("root").await;
    let alice = s.user("alice").await;

    let (bot, key, key_id) = create_bot(
        &root,
        json!({"username": "deploy-bot", "display_name": "Deploys"}),
    )
    .await;
    assert_eq!(
        (
            &bot["username"],
            &bot["bot"],
            &bot["external"],
            &bot["is_admin"]
        ),
        (
            &json!("deploy-bot"),
            &json!(true),
            &json!(false),
            &json!(false)
        )
    );
    assert!(key.starts_with("cfk_"), "recognisable by its prefix");
    // 256 random bits after the prefix (base64url).
    assert!(key.len() >= 4 + 43, "{key}");
    assert!(!key_id.is_empty() && !key.contains(&key_id));

    // Only admins manage bots; names follow the username rules and are unique.
    let (st, _) = alice
        .api
        .post("/api/v1/admin/bots", json!({"username": "sneaky"}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, body) = root
        .api
        .post("/api/v1/admin/bots", json!({"username": "Not Valid"}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("username")
    );
    let (st, _) = root
        .api
        .post("/api/v1/admin/bots", json!({"username": "alice"}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, list) = root.api.get("/api/v1/admin/bots").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["bots"].as_array().unwrap().len(), 1);
    assert_eq!(list["bots"][0]["id"], bot["id"]);

    // The key works on REST: the bot is a user who joins and posts like anyone.
    let api = s.api().with_token(&key);
    let (st, me) = api.get("/api/v1/users/me").await;
    assert_eq!((st, &me["id"]), (StatusCode::OK, &bot["id"]));
    let room = alice.create_room("general", "public").await;
    let mut watch = alice.subscribed(&room).await;
    let (st, _) = api
        .post(&format!("/api/v1/rooms/{room}/join"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, m) = api
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": "build 42 deployed"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let seen = watch.expect("message").await;
    assert_eq!(
        (&seen["user"], &seen["body"]),
        (&bot["id"], &json!("build 42 deployed"))
    );

    // ... and on the WebSocket, in the handshake and in an `auth` frame.
    let mut ws = Ws::connect(s.addr, Some(&key)).await.unwrap();
    assert_eq!(ws.expect("hello").await["user"]["id"], bot["id"]);
    let mut ws2 = Ws::connect(s.addr, None).await.unwrap();
    ws2.send(json!({"type": "auth", "token": key})).await;
    assert_eq!(ws2.expect("hello").await["user"]["id"], bot["id"]);
    ws.subscribe(&room, None).await;
    ws.send(json!({"type": "message", "room": room, "body": "over the socket", "client_id": "c1"}))
        .await;
    assert_eq!(ws.expect("ack").await["seq"], 2);

    // A bot has no password to log in with; a made-up key is refused.
    let (st, _) = s
        .api()
        .post(
            "/api/v1/auth/login",
            json!({"username": "deploy-bot", "password": ""}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, body) = s
        .api()
        .with_token("cfk_made-up")
        .get("/api/v1/users/me")
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(
        !body.to_string().contains("made-up"),
        "the key is not echoed"
    );
}

#[tokio::test]
async fn revoking_a_key_closes_its_sockets_and_leaves_the_other_keys() {
    let s = server().await;
    let root = s.user("root").await;
    let (bot, first, first_id) = create_bot(&root, json!({"username": "ci-bot"})).await;
    let bot_id = bot["id"].as_str().unwrap();
    let (st, second) = root
        .api
        .post(&format!("/api/v1/admin/bots/{bot_id}/keys"), json!({}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{second}");
    let second_key = second["api_key"].as_str().unwrap().to_string();
    assert_ne!(second_key, first);

    let mut on_first = Ws::connect(s.addr, Some(&first)).await.unwrap();
    on_first.expect("hello").await;
    let mut on_second = Ws::connect(s.addr, Some(&second_key)).await.unwrap();
    on_second.expect("hello").await;

    let (st, _) = root
        .api
        .delete(&format!("/api/v1/admin/bots/{bot_id}/keys/{first_id}"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(
        on_first.expect_close(Duration::from_secs(1)).await,
        Closed::Code(4001),
        "the socket opened with the revoked key closes within a second"
    );
    let (st, _) = s.api().with_token(&first).get("/api/v1/users/me").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // The other key and its socket carry on.
    on_second.send(json!({"type": "ping"})).await;
    assert_eq!(on_second.expect("pong").await["type"], "pong");
    let (st, _) = s
        .api()
        .with_token(&second_key)
        .get("/api/v1/users/me")
        .await;
    assert_eq!(st, StatusCode::OK);

    // Unknown keys and ids that are not bots are 404.
    let (st, _) = root
        .api
        .delete(&format!("/api/v1/admin/bots/{bot_id}/keys/{first_id}"))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = root
        .api
        .post(&format!("/api/v1/admin/bots/{}/keys", root.id), json!({}))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Removing the bot ends it: its sockets close, its keys stop, it leaves the list.
    let (st, _) = root
        .api
        .delete(&format!("/api/v1/admin/bots/{bot_id}"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(
        on_second.expect_close(Duration::from_secs(1)).await,
        Closed::Code(4001)
    );
    let (st, _) = s
        .api()
        .with_token(&second_key)
        .get("/api/v1/users/me")
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (_, list) = root.api.get("/api/v1/admin/bots").await;
    assert_eq!(list["bots"], json!([]));
}

#[tokio::test]
async fn an_admin_bot_may_use_the_admin_api_and_add_itself_to_any_room() {
    let s = server().await;
    let root = s.user("root").await;
    let alice = s.user("alice").await;
    let secret = alice.create_room("secret", "private").await;
    let (admin_bot, admin_key, _) =
        create_bot(&root, json!({"username": "ops-bot", "admin": true})).await;
    assert_eq!(admin_bot["is_admin"], true);
    let (_, plain_key, _) = create_bot(&root, json!({"username": "plain-bot"})).await;

    let ops = s.api().with_token(&admin_key);
    let (st, _) = ops.get("/api/v1/admin/stats").await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = ops
        .post(
            &format!("/api/v1/rooms/{secret}/members"),
            json!({"user_id": admin_bot["id"]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let (st, m) = ops
        .post(
            &format!("/api/v1/rooms/{secret}/messages"),
            json!({"body": "maintenance at noon"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    // Over its socket too, the bot's own admin right lets it delete someone else's message.
    let (st, theirs) = alice
        .api
        .post(
            &format!("/api/v1/rooms/{secret}/messages"),
            json!({"body": "oops"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{theirs}");
    let mut ws = Ws::connect(s.addr, Some(&admin_key)).await.unwrap();
    ws.expect("hello").await;
    ws.subscribe(&secret, None).await;
    ws.send(json!({"type": "delete", "room": secret, "seq": theirs["seq"]}))
        .await;
    assert_eq!(
        ws.expect_skipping("message_deleted").await["seq"],
        theirs["seq"]
    );
    // A bot without the admin right is an ordinary user: the private room does not exist for it.
    let plain = s.api().with_token(&plain_key);
    let (st, _) = plain.get("/api/v1/admin/stats").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = plain
        .post(
            &format!("/api/v1/rooms/{secret}/members"),
            json!({"user_id": admin_bot["id"]}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}
