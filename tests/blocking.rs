//! Blocking (protocol v1.1), over real sockets in the embedded shape.

mod common;

use std::time::Duration;

use common::{Server, User};
use reqwest::StatusCode;
use serde_json::json;

/// The room as `u`'s room listing shows it.
async fn listing(u: &User, room: &str) -> serde_json::Value {
    let (_, rooms) = u.api.get("/api/v1/rooms").await;
    rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == json!(room))
        .cloned()
        .unwrap()
}

async fn block(who: &User, whom: &User) {
    let (st, body) = who
        .api
        .put(&format!("/api/v1/users/me/blocks/{}", whom.id))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
}

#[tokio::test]
async fn blocks_are_listed_and_refused_for_oneself_or_nobody() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (st, body) = alice
        .api
        .put(&format!("/api/v1/users/me/blocks/{}", alice.id))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user_id")
    );
    let (st, _) = alice
        .api
        .put("/api/v1/users/me/blocks/0193a1a0-0000-7000-8000-000000000000")
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    block(&alice, &bob).await;
    block(&alice, &bob).await; // idempotent
    let (st, list) = alice.api.get("/api/v1/users/me/blocks").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["users"][0]["username"], "bob");
    assert_eq!(list["users"].as_array().unwrap().len(), 1);
    let (_, theirs) = bob.api.get("/api/v1/users/me/blocks").await;
    assert_eq!(theirs["users"], json!([]));
    let (st, _) = alice
        .api
        .delete(&format!("/api/v1/users/me/blocks/{}", bob.id))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, list) = alice.api.get("/api/v1/users/me/blocks").await;
    assert_eq!(list["users"], json!([]));
}

#[tokio::test]
async fn a_blocked_user_cannot_message_or_invite_the_blocker() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (st, dm) = bob
        .api
        .post("/api/v1/dms", json!({"user_id": alice.id}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{dm}");
    let dm = dm["id"].as_str().unwrap().to_string();
    let mut bobs = bob.subscribed(&dm).await;
    bob.post_message(&dm, "hi").await;
    bobs.expect("message").await;

    block(&alice, &bob).await;
    let (st, body) = bob
        .api
        .post(
            &format!("/api/v1/rooms/{dm}/messages"),
            json!({"body": "hello?"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    // The socket that cached its rules before the block is refused too.
    bobs.say(&dm, "anyone?", "c1").await;
    let e = bobs.expect("error").await;
    assert_eq!((&e["code"], &e["ref"]), (&json!("forbidden"), &json!("c1")));
    let (st, _) = bob
        .api
        .post("/api/v1/dms", json!({"user_id": alice.id}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let room = bob.create_room("bobs", "private").await;
    let (st, _) = bob
        .api
        .post(
            &format!("/api/v1/rooms/{room}/members"),
            json!({"user_id": alice.id}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // The blocker may still write; the history kept everything before.
    alice.post_message(&dm, "I blocked you").await;
    let (_, page) = alice.api.get(&format!("/api/v1/rooms/{dm}/messages")).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    // Unblocking lifts it.
    alice
        .api
        .delete(&format!("/api/v1/users/me/blocks/{}", bob.id))
        .await;
    bob.post_message(&dm, "thanks").await;
}

#[tokio::test]
async fn a_blocked_users_mentions_and_typing_do_not_reach_the_blocker() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    carol.join(&room).await;
    let elsewhere = alice.create_room("elsewhere", "public").await;
    block(&alice, &bob).await;
    let mut alices = alice.subscribed(&room).await;
    let mut carols = carol.subscribed(&room).await;
    let mut alice_away = alice.subscribed(&elsewhere).await;

    // Bob's typing reaches Carol, not Alice.
    let mut bobs = bob.subscribed(&room).await;
    bobs.send(json!({"type": "typing", "room": room, "active": true}))
        .await;
    assert_eq!(
        carols.expect_skipping("typing").await["user"],
        bob.id.as_str()
    );
    // Carol's typing still reaches Alice.
    carols
        .send(json!({"type": "typing", "room": room, "active": true}))
        .await;
    let t = alices.expect_skipping("typing").await;
    assert_eq!(
        t["user"],
        carol.id.as_str(),
        "Bob's indicator never arrived first"
    );

    // Bob's mention of Alice counts for nothing; his messages are still delivered.
    let m = bob.post_message(&room, "@alice @carol hey").await;
    assert_eq!(m["mentions"], json!([carol.id]));
    assert_eq!(alices.expect_skipping("message").await["seq"], 1);
    bob.post_message(&room, "@room everyone").await;
    alice_away
        .expect_none("notification", Duration::from_millis(400))
        .await;
    let alices = listing(&alice, &room).await;
    assert_eq!(
        (&alices["mentions"], &alices["unread"]),
        (&json!(0), &json!(2))
    );
    assert_eq!(listing(&carol, &room).await["mentions"], 2);
}
