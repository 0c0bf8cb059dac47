//! A person's data (protocol v1.1): export, account deletion, admin deletion and room export.

mod common;

use std::time::Duration;

use common::ws::Closed;
use common::{Server, User};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The lines of an NDJSON answer, checking its content type.
async fn ndjson(u: &User, path: &str) -> Vec<Value> {
    let resp = u
        .api
        .client
        .get(format!("{}{}", u.api.base, path))
        .bearer_auth(&u.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let text = resp.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect()
}

#[tokio::test]
async fn an_export_has_the_user_their_rooms_and_every_message_they_wrote_in_time_order() {
    let (config, dir) = common::embedded();
    let mut config = common::unlimited(config);
    config.http_rate = 100_000;
    config.http_burst = 100_000;
    let s = Server::start_with(config, Some(dir)).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let general = alice.create_room("general", "public").await;
    let other = bob.create_room("other", "public").await;
    alice.join(&other).await;
    // More than one page of the export's reads (500 rows).
    for i in 0..520 {
        let room = if i % 2 == 0 { &general } else { &other };
        alice.post_message(room, &format!("m{i}")).await;
    }
    bob.post_message(&other, "not alice's").await;
    let lines = ndjson(&alice, "/api/v1/users/me/export").await;
    assert_eq!(lines[0]["type"], "user");
    assert_eq!(lines[0]["username"], "alice");
    let rooms: Vec<&Value> = lines.iter().filter(|l| l["type"] == "room").collect();
    assert_eq!(rooms.len(), 2);
    let bodies: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "message")
        .map(|l| l["body"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..520).map(|i| format!("m{i}")).collect();
    assert_eq!(
        bodies, expected,
        "every message once, in time order, only hers"
    );
    assert!(lines.iter().position(|l| l["type"] == "message").unwrap() > 2);
}

#[tokio::test]
async fn deleting_an_account_closes_its_sockets_and_can_erase_its_messages() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    bob.post_message(&room, "bob was here").await;
    bob.post_message(&room, "and here").await;
    let mut watcher = alice.subscribed(&room).await;
    let mut bobs = bob.connect().await;

    // A wrong password deletes nothing.
    let (st, body) = bob
        .api
        .call(
            reqwest::Method::DELETE,
            "/api/v1/users/me",
            Some(json!({"password": "wrong", "erase_messages": true})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    // Nor does a missing one, or no body at all.
    let (st, _) = bob
        .api
        .call(
            reqwest::Method::DELETE,
            "/api/v1/users/me",
            Some(json!({"erase_messages": true})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = bob.api.delete("/api/v1/users/me").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = bob.api.get("/api/v1/users/me").await;
    assert_eq!(st, StatusCode::OK);

    let (st, body) = bob
        .api
        .call(
            reqwest::Method::DELETE,
            "/api/v1/users/me",
            Some(json!({"password": "correct horse", "erase_messages": true})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    let (_, closed) = bobs.frames_until_close(Duration::from_secs(5)).await;
    assert_eq!(closed, Closed::Code(4001));
    for _ in 0..2 {
        let d = watcher.expect("message_deleted").await;
        assert!(d["rev"].as_i64().unwrap() > 2);
    }
    let (_, page) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/messages"))
        .await;
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "the seqs stay");
    assert!(msgs.iter().all(|m| m["deleted"] == true && m["body"] == ""));
    // The account is gone everywhere.
    let (st, _) = alice.api.get(&format!("/api/v1/users/{}", bob.id)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = bob.api.get("/api/v1/users/me").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = s
        .api()
        .post(
            "/api/v1/auth/login",
            json!({"username": "bob", "password": "correct horse"}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = s
        .api()
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": bob.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (_, members) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/members"))
        .await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn admins_delete_accounts_and_export_rooms() {
    let (mut config, dir) = common::embedded();
    config.admins = vec!["root".into()];
    let s = Server::start_with(config, Some(dir)).await;
    let root = s.user("root").await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    alice.post_message(&room, "keep me").await;
    let (st, _) = alice
        .api
        .delete(&format!("/api/v1/admin/users/{}", root.id))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "admins only");
    let (st, _) = alice
        .api
        .get(&format!("/api/v1/admin/rooms/{room}/export"))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    let lines = ndjson(&root, &format!("/api/v1/admin/rooms/{room}/export")).await;
    let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["room", "member", "message"]);
    assert_eq!(lines[1]["username"], "alice");
    assert_eq!(lines[2]["body"], "keep me");

    // Without a body the messages stay.
    let (st, body) = root
        .api
        .delete(&format!("/api/v1/admin/users/{}", alice.id))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    let (st, _) = root
        .api
        .delete(&format!("/api/v1/admin/users/{}", alice.id))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "already gone");
    let (_, page) = root
        .api
        .get(&format!("/api/v1/rooms/{room}/messages"))
        .await;
    assert_eq!(page["messages"][0]["body"], "keep me");
    let (st, _) = alice.api.get("/api/v1/users/me").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}
