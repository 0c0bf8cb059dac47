//! Edits, deletes, search, moderation and administration, over real sockets.

mod common;

use std::time::Duration;

use common::ws::{Closed, WAIT};
use common::{Server, embedded};
use reqwest::StatusCode;
use serde_json::json;

async fn with_admin() -> Server {
    let (mut config, dir) = embedded();
    config.admins = vec!["root".into()];
    Server::start_with(config, Some(dir)).await
}

#[tokio::test]
async fn edits_and_deletes_reach_subscribers_and_keep_seq() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    let mut a = alice.subscribed(&room).await;
    let mut b = bob.subscribed(&room).await;
    a.say(&room, "helo", "c1").await;
    a.expect("ack").await;
    b.expect("message").await;

    // Over the socket: only the author may edit.
    b.send(json!({"type": "edit", "room": room, "seq": 1, "body": "mine now"}))
        .await;
    assert_eq!(b.expect("error").await["code"], "forbidden");
    a.send(json!({"type": "edit", "room": room, "seq": 1, "body": "hello"}))
        .await;
    let edited = b.expect("message_edited").await;
    assert_eq!(
        (edited["seq"].as_i64(), edited["body"].as_str()),
        (Some(1), Some("hello"))
    );
    assert!(edited["edited_at"].is_string());

    // Over REST: the author deletes; subscribers learn; the seq stays with an empty body.
    alice.post_message(&room, "second").await;
    b.expect("message").await;
    let (st, _) = bob
        .api
        .delete(&format!("/api/v1/rooms/{room}/messages/2"))
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "a member cannot delete another's message"
    );
    let (st, _) = alice
        .api
        .delete(&format!("/api/v1/rooms/{room}/messages/2"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let d = b.expect("message_deleted").await;
    assert_eq!(
        (d["room"].as_str(), d["seq"].as_i64()),
        (Some(room.as_str()), Some(2))
    );
    assert!(d["id"].is_string());
    let (_, h) = bob.api.get(&format!("/api/v1/rooms/{room}/messages")).await;
    let m = &h["messages"][1];
    assert_eq!(
        (
            m["seq"].as_i64(),
            m["body"].as_str(),
            m["deleted"].as_bool()
        ),
        (Some(2), Some(""), Some(true))
    );
    let (st, _) = alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}/messages/2"),
            json!({"body": "undead"}),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "a deleted message cannot be edited"
    );
    let (st, m) = alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}/messages/1"),
            json!({"body": "hello!"}),
        )
        .await;
    assert_eq!((st, m["body"].as_str()), (StatusCode::OK, Some("hello!")));
    let (st, _) = alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}/messages/99"),
            json!({"body": "x"}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // The owner (a moderator) may delete anyone's message.
    bob.post_message(&room, "spam").await;
    let (st, _) = alice
        .api
        .delete(&format!("/api/v1/rooms/{room}/messages/3"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn search_finds_words_in_readable_rooms_only_and_follows_edits() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let public = alice.create_room("general", "public").await;
    let secret = alice.create_room("secret", "private").await;
    alice.post_message(&public, "the launch is on friday").await;
    alice.post_message(&public, "lunch at noon").await;
    alice.post_message(&secret, "the launch code is 1234").await;
    let bodies = |v: &serde_json::Value| -> Vec<String> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_string())
            .collect()
    };
    let (st, r) = alice
        .api
        .get(&format!("/api/v1/rooms/{public}/search?q=launch"))
        .await;
    assert_eq!(
        (st, bodies(&r)),
        (StatusCode::OK, vec!["the launch is on friday".to_string()])
    );
    let (_, all) = alice.api.get("/api/v1/search?q=launch").await;
    assert_eq!(bodies(&all).len(), 2, "{all}");
    // Bob is in neither room: the global search shows him nothing, the private room is 404.
    let (_, none) = bob.api.get("/api/v1/search?q=launch").await;
    assert!(bodies(&none).is_empty());
    let (st, _) = bob
        .api
        .get(&format!("/api/v1/rooms/{secret}/search?q=launch"))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Public rooms are readable, so searchable.
    let (_, r) = bob
        .api
        .get(&format!("/api/v1/rooms/{public}/search?q=friday"))
        .await;
    assert_eq!(bodies(&r).len(), 1);
    // Edits and deletes keep the index current; query syntax is plain words.
    alice
        .api
        .patch(
            &format!("/api/v1/rooms/{public}/messages/1"),
            json!({"body": "the party is on friday"}),
        )
        .await;
    let (_, r) = alice
        .api
        .get(&format!("/api/v1/rooms/{public}/search?q=launch"))
        .await;
    assert!(bodies(&r).is_empty());
    alice
        .api
        .delete(&format!("/api/v1/rooms/{public}/messages/2"))
        .await;
    let (_, r) = alice
        .api
        .get(&format!("/api/v1/rooms/{public}/search?q=lunch"))
        .await;
    assert!(bodies(&r).is_empty());
    let (st, _) = alice
        .api
        .get(&format!("/api/v1/rooms/{public}/search?q=\"AND%20OR(*"))
        .await;
    assert_eq!(st, StatusCode::OK, "operators are words, not syntax errors");
    let (st, _) = alice.api.get("/api/v1/search?q=").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn room_mutes_block_sending_until_lifted_or_expired() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    let mut b = bob.subscribed(&room).await;
    b.say(&room, "before", "c0").await;
    b.expect_skipping("ack").await;

    let (st, _) = bob
        .api
        .post(
            &format!("/api/v1/rooms/{room}/members/{}/mute", alice.id),
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "members cannot mute");
    let (st, _) = alice
        .api
        .post(
            &format!("/api/v1/rooms/{room}/members/{}/mute", bob.id),
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // The open socket learns at once (no reconnect), and REST agrees.
    b.say(&room, "muted?", "c1").await;
    let e = b.expect_skipping("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("muted"), Some("c1"))
    );
    let (st, body) = bob
        .api
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": "x"}),
        )
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("muted"))
    );
    // Muted users still read.
    alice.post_message(&room, "you can read this").await;
    assert_eq!(
        b.expect_skipping("message").await["body"],
        "you can read this"
    );
    // Lifted.
    let (st, _) = alice
        .api
        .delete(&format!("/api/v1/rooms/{room}/members/{}/mute", bob.id))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    b.say(&room, "free", "c2").await;
    b.expect_skipping("ack").await;
    // A timed mute ends by itself.
    alice
        .api
        .post(
            &format!("/api/v1/rooms/{room}/members/{}/mute", bob.id),
            json!({"duration_seconds": 1}),
        )
        .await;
    b.say(&room, "now?", "c3").await;
    assert_eq!(b.expect_skipping("error").await["code"], "muted");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    b.say(&room, "now!", "c4").await;
    b.expect_skipping("ack").await;
}

#[tokio::test]
async fn slow_mode_and_read_only_rooms() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    let mut b = bob.subscribed(&room).await;
    let (st, r) = alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}"),
            json!({"slow_mode_seconds": 2}),
        )
        .await;
    assert_eq!(
        (st, r["slow_mode_seconds"].as_i64()),
        (StatusCode::OK, Some(2))
    );
    assert_eq!(
        b.expect_skipping("room_updated").await["slow_mode_seconds"],
        2
    );
    b.say(&room, "one", "c1").await;
    b.expect_skipping("ack").await;
    b.say(&room, "two", "c2").await;
    let e = b.expect_skipping("error").await;
    assert_eq!(e["code"], "slow_mode");
    assert!(e["retry_after_ms"].as_u64().unwrap() > 0);
    // The owner is not slowed.
    alice.post_message(&room, "a").await;
    alice.post_message(&room, "b").await;

    let (st, _) = alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}"),
            json!({"slow_mode_seconds": 0, "read_only": true}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    b.expect_skipping("room_updated").await;
    b.say(&room, "may I?", "c3").await;
    let e = b.expect_skipping("error").await;
    assert_eq!(e["code"], "forbidden");
    alice.post_message(&room, "announcement").await;
    let (st, _) = alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}"),
            json!({"slow_mode_seconds": -1}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_ban_closes_every_socket_with_4003_and_locks_the_user_out() {
    let s = with_admin().await;
    let root = s.user("root").await;
    let bob = s.user("bob").await;
    let room = root.create_room("general", "public").await;
    bob.join(&room).await;
    let mut b1 = bob.subscribed(&room).await;
    let mut b2 = bob.connect().await;
    let started = std::time::Instant::now();
    let (st, _) = root
        .api
        .post(
            &format!("/api/v1/admin/users/{}/ban", bob.id),
            json!({"reason": "spam", "duration_seconds": 3600}),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(b1.expect_close(WAIT).await, Closed::Code(4003));
    assert_eq!(b2.expect_close(WAIT).await, Closed::Code(4003));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed within a second"
    );
    // No login, no refresh, no use of a token still in hand, no new socket.
    let (st, body) = s
        .api()
        .post(
            "/api/v1/auth/login",
            json!({"username": "bob", "password": "correct horse"}),
        )
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (st, _) = s
        .api()
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": bob.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = bob.api.get("/api/v1/users/me").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(common::Ws::connect(s.addr, Some(&bob.token)).await.is_err());
    // The admin list shows it; unbanning restores login.
    let (_, users) = root.api.get("/api/v1/admin/users?q=bo").await;
    let u = &users["users"][0];
    assert_eq!(
        (
            u["username"].as_str(),
            u["banned"].as_bool(),
            u["ban_reason"].as_str()
        ),
        (Some("bob"), Some(true), Some("spam"))
    );
    let (st, _) = root
        .api
        .delete(&format!("/api/v1/admin/users/{}/ban", bob.id))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    s.login("bob").await;
}

#[tokio::test]
async fn a_global_mute_reaches_open_sockets() {
    let s = with_admin().await;
    let root = s.user("root").await;
    let bob = s.user("bob").await;
    let room = root.create_room("general", "public").await;
    bob.join(&room).await;
    let mut b = bob.subscribed(&room).await;
    let (st, _) = root
        .api
        .post(&format!("/api/v1/admin/users/{}/mute", bob.id), json!({}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    b.say(&room, "hello?", "c1").await;
    assert_eq!(b.expect("error").await["code"], "muted");
    let (_, users) = root.api.get("/api/v1/admin/users").await;
    let entry = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "bob")
        .unwrap()
        .clone();
    assert_eq!(entry["muted"], true);
    root.api
        .delete(&format!("/api/v1/admin/users/{}/mute", bob.id))
        .await;
    b.say(&room, "hello!", "c2").await;
    b.expect("ack").await;
}

#[tokio::test]
async fn admin_endpoints_list_rooms_and_stats() {
    let s = with_admin().await;
    let root = s.user("root").await;
    let alice = s.user("alice").await;
    alice.create_room("hidden", "private").await;
    let _socket = alice.connect().await;
    let (st, rooms) = root.api.get("/api/v1/admin/rooms").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        rooms["rooms"][0]["name"], "hidden",
        "admins see private rooms too"
    );
    alice
        .post_message(rooms["rooms"][0]["id"].as_str().unwrap(), "x")
        .await;
    let (st, stats) = root.api.get("/api/v1/admin/stats").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (
            stats["users"].as_i64(),
            stats["rooms"].as_i64(),
            stats["messages"].as_i64()
        ),
        (Some(2), Some(1), Some(1))
    );
    let pods = stats["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["connections"], 1);
    assert!(pods[0]["uptime_seconds"].is_u64() && pods[0]["id"].is_string());
    for path in [
        "/api/v1/admin/users",
        "/api/v1/admin/rooms",
        "/api/v1/admin/stats",
    ] {
        let (st, _) = alice.api.get(path).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test]
async fn the_message_rate_limit_answers_then_closes_4008() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let mut a = alice.subscribed(&room).await;
    for i in 0..21 {
        a.say(&room, "x", &format!("c{i}")).await;
    }
    let e = a.expect_skipping("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("rate_limited"), Some("c20"))
    );
    assert!(e["retry_after_ms"].as_u64().unwrap() > 0);
    // Ignoring the hint for long enough closes the socket.
    for i in 0..40 {
        a.say(&room, "x", &format!("d{i}")).await;
    }
    let (_, closed) = a.frames_until_close(WAIT).await;
    assert_eq!(closed, Closed::Code(4008));
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("confab_rate_limited_total{scope=\"ws\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("confab_ws_connections_closed_total{reason=\"policy\"} 1"));
}

#[tokio::test]
async fn http_rate_limits_answer_429_with_retry_after() {
    let (mut config, dir) = embedded();
    config.auth_rate_per_minute = 1;
    config.auth_burst = 3;
    let s = Server::start_with(config, Some(dir)).await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = client
            .post(s.url("/api/v1/auth/login"))
            .json(&json!({"username": "nobody", "password": "whatever1"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().get("retry-after").is_some());
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(statuses[..3], [StatusCode::UNAUTHORIZED; 3]);
    assert_eq!(statuses[3..], [StatusCode::TOO_MANY_REQUESTS; 2]);
    // Other endpoints have their own, wider allowance.
    let (st, _) = s.api().get("/healthz").await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn owners_make_moderators_who_can_moderate() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    carol.join(&room).await;
    carol.post_message(&room, "spam").await;
    let path = format!("/api/v1/rooms/{room}/members/{}", bob.id);
    let (st, _) = carol.api.patch(&path, json!({"role": "moderator"})).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "members cannot promote");
    let (st, _) = alice.api.patch(&path, json!({"role": "owner"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = alice.api.patch(&path, json!({"role": "moderator"})).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, members) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/members"))
        .await;
    let b = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"]["id"] == bob.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(b["role"], "moderator");
    // The moderator deletes Carol's message and mutes her; he cannot touch the owner.
    let (st, _) = bob
        .api
        .delete(&format!("/api/v1/rooms/{room}/messages/1"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = bob
        .api
        .post(
            &format!("/api/v1/rooms/{room}/members/{}/mute", carol.id),
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = bob
        .api
        .delete(&format!("/api/v1/rooms/{room}/members/{}", alice.id))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = bob
        .api
        .patch(
            &format!("/api/v1/rooms/{room}/members/{}", alice.id),
            json!({"role": "member"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Demoted, he cannot any more.
    alice.api.patch(&path, json!({"role": "member"})).await;
    let (st, _) = bob
        .api
        .delete(&format!("/api/v1/rooms/{room}/members/{}", carol.id))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_refused_message_costs_no_slow_mode_slot() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}"),
            json!({"slow_mode_seconds": 60}),
        )
        .await;
    let mut b = bob.subscribed(&room).await;
    let bogus = uuid::Uuid::now_v7().to_string();
    b.send(json!({"type": "message", "room": room, "body": "look", "client_id": "c1", "attachments": [bogus]}))
        .await;
    assert_eq!(b.expect_skipping("error").await["code"], "bad_request");
    // The same over REST.
    let (st, _) = bob
        .api
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": "look", "attachments": [bogus]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // The first message that is accepted still gets through.
    b.say(&room, "hello", "c2").await;
    assert_eq!(
        b.expect_skipping_any(&["ack", "error"]).await["type"],
        "ack"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_address_gets_its_own_allowance() {
    async fn statuses(trust: bool) -> Vec<StatusCode> {
        let (mut config, dir) = embedded();
        config.http_rate = 1;
        config.http_burst = 2;
        config.trust_forwarded_for = trust;
        let s = Server::start_with(config, Some(dir)).await;
        let client = reqwest::Client::new();
        let mut out = Vec::new();
        // Two requests from each of three clients, all through the same proxy connection.
        for ip in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
            for _ in 0..2 {
                let r = client
                    .get(s.url("/healthz"))
                    .header("x-forwarded-for", ip)
                    .send()
                    .await
                    .unwrap();
                out.push(r.status());
            }
        }
        out
    }
    let trusted = statuses(true).await;
    assert!(trusted.iter().all(|s| *s == StatusCode::OK), "{trusted:?}");
    // Not trusted: the header is ignored and all six share the proxy's allowance of two (which
    // the harness's own readiness check has already dipped into).
    let untrusted = statuses(false).await;
    let refused = untrusted
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(refused >= 4, "{untrusted:?}");
}

/// Reads frames until the ack or the error about `client_id` arrives.
async fn reply_to(ws: &mut common::Ws, client_id: &str) -> serde_json::Value {
    loop {
        let v = ws.next(WAIT).await.expect("the socket stays open");
        let about_it = match v["type"].as_str() {
            Some("ack") => v["client_id"] == client_id,
            Some("error") => v["ref"] == client_id,
            _ => false,
        };
        if about_it {
            return v;
        }
    }
}

/// A client that sends as fast as it is allowed, waits `retry_after_ms` after each refusal and
/// resends, collects far more refusals than the abuse limit and is never closed.
#[tokio::test]
async fn a_client_that_obeys_retry_after_is_never_closed() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let mut a = alice.connect().await;
    let mut refusals = 0;
    for i in 0..60 {
        let client_id = format!("c{i}");
        loop {
            a.say(&room, "steady", &client_id).await;
            let reply = reply_to(&mut a, &client_id).await;
            if reply["type"] == "ack" {
                break;
            }
            assert_eq!(reply["code"], "rate_limited", "{reply}");
            refusals += 1;
            let wait = reply["retry_after_ms"].as_u64().expect("a hint");
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
    assert!(refusals > confab::ws::ABUSE_LIMIT, "{refusals} refusals");
    a.send(json!({"type": "ping"})).await;
    a.expect("pong").await;
}

/// Every frame counts against the connection's frame budget, not only messages: a burst of
/// subscribes beyond it is answered `rate_limited` (with the room as `ref`), and the socket
/// stays usable once the client waits.
#[tokio::test]
async fn frames_other_than_messages_are_rate_limited_too() {
    let (mut config, dir) = embedded();
    config.ws_frames_per_second = 10;
    config.ws_frames_burst = 20;
    let s = Server::start_with(config, Some(dir)).await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let mut a = alice.connect().await;
    for _ in 0..25 {
        a.send(json!({"type": "subscribe", "room": room})).await;
    }
    let (mut subscribed, mut limited, mut wait) = (0, 0, 0);
    while subscribed + limited < 25 {
        let v = a.next(WAIT).await.expect("the socket stays open");
        match v["type"].as_str() {
            Some("subscribed") => subscribed += 1,
            Some("error") => {
                assert_eq!(
                    (v["code"].as_str(), v["ref"].as_str()),
                    (Some("rate_limited"), Some(room.as_str()))
                );
                wait = v["retry_after_ms"].as_u64().unwrap();
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(
        subscribed >= 20 && limited >= 3,
        "{subscribed} subscribed, {limited} limited"
    );
    tokio::time::sleep(Duration::from_millis(wait)).await;
    a.send(json!({"type": "ping"})).await;
    a.expect("pong").await;
}

/// A socket closed for abuse still gets the acks of the messages it had committed before the
/// close frame.
#[tokio::test]
async fn committed_messages_are_acked_before_a_4008_close() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let mut a = alice.connect().await;
    for i in 0..70 {
        a.say(&room, "flood", &format!("c{i}")).await;
    }
    let (frames, closed) = a.frames_until_close(WAIT).await;
    assert_eq!(closed, Closed::Code(4008));
    let acked: std::collections::BTreeSet<String> = frames
        .iter()
        .filter(|v| v["type"] == "ack")
        .map(|v| v["client_id"].as_str().unwrap().to_string())
        .collect();
    let (_, history) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/messages?limit=200"))
        .await;
    let committed: std::collections::BTreeSet<String> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(committed.len(), 20);
    assert_eq!(acked, committed);
}

/// Over the socket, an installation admin (named in `--admins`) may delete anyone's message;
/// a member who is neither the author nor a moderator may not. The socket keeps only the
/// parts of the account these checks need, so this is what shows it kept the right ones.
#[tokio::test]
async fn an_admin_deletes_anothers_message_over_the_socket() {
    let s = with_admin().await;
    let root = s.user("root").await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    root.join(&room).await;
    let mut b = bob.subscribed(&room).await;
    alice.post_message(&room, "by alice").await;
    b.expect("message").await;

    b.send(json!({"type": "delete", "room": room, "seq": 1}))
        .await;
    assert_eq!(b.expect("error").await["code"], "forbidden");

    let mut r = root.subscribed(&room).await;
    r.send(json!({"type": "delete", "room": room, "seq": 1}))
        .await;
    let d = b.expect("message_deleted").await;
    assert_eq!(
        (d["room"].as_str(), d["seq"].as_i64()),
        (Some(room.as_str()), Some(1))
    );
    r.expect("message_deleted").await;
}
