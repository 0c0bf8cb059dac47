//! The WebSocket protocol over real sockets, in the embedded shape.

mod common;

use std::time::Duration;

use common::ws::{Closed, WAIT};
use common::{Server, Ws};
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn token_in_header_query_or_auth_frame() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;

    let mut by_header = Ws::connect(s.addr, Some(&alice.token)).await.unwrap();
    let hello = by_header.expect("hello").await;
    assert_eq!(hello["user"]["username"], "alice");
    assert!(hello["connection_id"].is_string());
    assert_eq!(hello["heartbeat_ms"], 25_000);

    let mut by_query = Ws::connect_url(&format!("ws://{}/ws?token={}", s.addr, alice.token))
        .await
        .unwrap();
    by_query.expect("hello").await;

    let mut by_frame = Ws::connect(s.addr, None).await.unwrap();
    by_frame.send(json!({"type": "ping"})).await;
    let e = by_frame.expect("error").await;
    assert_eq!(e["code"], "unauthorized");
    by_frame
        .send(json!({"type": "auth", "token": "nonsense"}))
        .await;
    assert_eq!(by_frame.expect("error").await["code"], "unauthorized");
    by_frame
        .send(json!({"type": "auth", "token": alice.token}))
        .await;
    assert_eq!(
        by_frame.expect("hello").await["user"]["id"],
        alice.id.as_str()
    );
}

#[tokio::test]
async fn a_bad_token_is_refused_before_the_upgrade() {
    let s = Server::embedded().await;
    let err = Ws::connect(s.addr, Some("bad.token.here"))
        .await
        .err()
        .expect("refused");
    match err {
        confab_client::Error::Handshake(status) => assert_eq!(status, 401),
        other => panic!("expected HTTP 401, got {other:?}"),
    }
    let err = Ws::connect_url(&format!("ws://{}/ws?token=bad", s.addr))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, confab_client::Error::Handshake(401)));
}

#[tokio::test]
async fn no_auth_frame_in_time_closes_4001() {
    let (mut config, dir) = common::embedded();
    config.ws_auth_timeout_ms = 300;
    let s = Server::start_with(config, Some(dir)).await;
    let mut ws = Ws::connect(s.addr, None).await.unwrap();
    assert_eq!(ws.expect_close(WAIT).await, Closed::Code(4001));
}

#[tokio::test]
async fn an_expired_token_closes_4001_unless_refreshed() {
    let (mut config, dir) = common::embedded();
    // `exp` has whole-second precision: with a 3 s lifetime, a token issued 1.1 s later
    // expires strictly later, and the renewal arrives before the first token expires.
    config.access_token_ttl = 3;
    let s = Server::start_with(config, Some(dir)).await;
    let alice = s.user("alice").await;
    let mut stale = alice.connect().await;
    let mut fresh = alice.connect().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A token issued now lives past the first one's expiry.
    let renewed = s.login("alice").await;
    fresh
        .send(json!({"type": "auth", "token": renewed.token}))
        .await;
    assert_eq!(
        stale.expect_close(Duration::from_secs(4)).await,
        Closed::Code(4001)
    );
    // The refreshed socket is still open.
    fresh.send(json!({"type": "ping"})).await;
    fresh.expect("pong").await;
}

#[tokio::test]
async fn ack_comes_first_then_the_message_reaches_every_subscriber() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    let mut a = alice.subscribed(&room).await;
    let mut b = bob.subscribed(&room).await;

    a.say(&room, "hello bob", "c-1").await;
    let ack = a.expect("ack").await;
    assert_eq!(
        (
            ack["client_id"].as_str(),
            ack["seq"].as_i64(),
            ack["room"].as_str()
        ),
        (Some("c-1"), Some(1), Some(room.as_str()))
    );
    assert!(ack["id"].is_string() && ack["created_at"].is_string());
    let mine = a.expect("message").await;
    assert_eq!(
        (mine["body"].as_str(), mine["seq"].as_i64()),
        (Some("hello bob"), Some(1))
    );
    let got = b.expect("message").await;
    assert_eq!(
        (
            got["body"].as_str(),
            got["user"].as_str(),
            got["username"].as_str()
        ),
        (Some("hello bob"), Some(alice.id.as_str()), Some("alice"))
    );
    assert_eq!(got["id"], ack["id"]);

    // The same client_id again: the same ack, no second message.
    a.say(&room, "hello again?", "c-1").await;
    let again = a.expect("ack").await;
    assert_eq!(
        (again["id"].clone(), again["seq"].as_i64()),
        (ack["id"].clone(), Some(1))
    );
    b.expect_none("message", Duration::from_millis(300)).await;

    // A REST send reaches sockets too.
    bob.post_message(&room, "from a bot").await;
    assert_eq!(a.expect("message").await["seq"], 2);
    let (_, h) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/messages"))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 2);
    // Every socket write of a message is timed: 2 messages x 2 subscribers.
    let timed = || async {
        common::metric(&s.metrics().await, "confab_delivery_latency_seconds_count") == Some(4.0)
    };
    assert!(common::eventually(Duration::from_secs(2), timed).await);
    // With a bucket at 20 ms, so a 20 ms delivery objective can be read off the histogram.
    let buckets = s.metrics().await;
    assert!(
        common::metric(
            &buckets,
            "confab_delivery_latency_seconds_bucket{le=\"0.02\"}"
        )
        .is_some(),
        "{buckets}"
    );
}

#[tokio::test]
async fn pipelined_sends_keep_their_order() {
    let s = common::flood_server().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    let mut a = alice.subscribed(&room).await;
    let mut b = bob.subscribed(&room).await;
    for i in 0..200 {
        a.say(&room, &format!("m{i}"), &format!("c{i}")).await;
    }
    for i in 0..200 {
        let m = b.expect("message").await;
        assert_eq!(
            (m["seq"].as_i64(), m["body"].as_str()),
            (Some(i + 1), Some(format!("m{i}").as_str()))
        );
    }
    let mut acks = 0;
    while acks < 200 {
        let f = a.next(WAIT).await.expect("frames");
        if f["type"] == "ack" {
            acks += 1;
            assert_eq!(f["seq"], acks);
        }
    }
}

/// On PostgreSQL, a socket that pipelines sends into two rooms gets its acks in the order it
/// sent, and each room's messages keep one gapless order (a writer that let a later batch be
/// answered first, as an unordered pipeline of commits does, fails this).
#[tokio::test]
async fn pipelined_sends_keep_their_order_on_postgres() {
    let pg = common::Postgres::start();
    let redis = common::Redis::start();
    let s = Server::start(common::unlimited(common::cluster(&pg, &redis))).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let rooms = [
        alice.create_room("one", "public").await,
        alice.create_room("two", "public").await,
    ];
    for r in &rooms {
        bob.join(r).await;
    }
    let mut a = alice.connect().await;
    let mut b = bob.connect().await;
    for r in &rooms {
        b.subscribe(r, None).await;
    }
    for i in 0..400 {
        a.say(&rooms[i % 2], &format!("m{i}"), &format!("c{i}"))
            .await;
    }
    let mut acks = 0;
    while acks < 400 {
        let f = a.next(WAIT).await.expect("frames");
        if f["type"] == "ack" {
            assert_eq!(
                f["client_id"],
                format!("c{acks}"),
                "acks come in send order"
            );
            assert_eq!(f["room"], rooms[acks % 2].as_str());
            assert_eq!(
                f["seq"],
                (acks / 2 + 1) as i64,
                "one gapless order per room"
            );
            acks += 1;
        }
    }
    let mut next = [1i64, 1];
    for _ in 0..400 {
        let m = b.expect("message").await;
        let k = rooms
            .iter()
            .position(|r| m["room"] == r.as_str())
            .expect("a known room");
        assert_eq!(m["seq"], next[k], "room {k} delivered in order");
        next[k] += 1;
    }
}

#[tokio::test]
async fn resume_with_since_replays_in_order_without_gaps_or_duplicates() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    for i in 1..=5 {
        alice.post_message(&room, &format!("m{i}")).await;
    }
    let mut b = bob.connect().await;
    let sub = b.subscribe(&room, Some(2)).await;
    assert_eq!(
        (sub["last_seq"].as_i64(), sub["recovered"].as_bool()),
        (Some(5), Some(true))
    );
    for seq in 3..=5 {
        assert_eq!(b.expect("message").await["seq"], seq);
    }
    alice.post_message(&room, "live").await;
    let live = b.expect("message").await;
    assert_eq!(
        (live["seq"].as_i64(), live["body"].as_str()),
        (Some(6), Some("live"))
    );
    b.expect_none("message", Duration::from_millis(300)).await;

    // Subscribing again on the same socket replays without disturbing the live stream.
    let again = b.subscribe(&room, Some(5)).await;
    assert_eq!(again["last_seq"], 6);
    assert_eq!(b.expect("message").await["seq"], 6);
}

/// A resuming client sends a `subscribe` per room at once; the server takes them together
/// (one read of each kind for the lot), and each still gets its own answer in the order sent,
/// each `subscribed` followed by its room's replay, with other frames and errors in between
/// where they were sent.
#[tokio::test]
async fn subscribes_sent_at_once_are_answered_in_order_each_with_its_replay() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mut rooms = Vec::new();
    for i in 0..4 {
        let room = alice.create_room(&format!("r{i}"), "public").await;
        bob.join(&room).await;
        for k in 0..=i {
            alice.post_message(&room, &format!("r{i} m{k}")).await;
        }
        rooms.push(room);
    }
    let secret = alice.create_room("secret", "private").await;
    let mut b = bob.connect().await;
    let frames = [
        json!({"type": "subscribe", "room": rooms[0], "since": 0}),
        json!({"type": "subscribe", "room": rooms[1], "since": 1}),
        json!({"type": "subscribe", "room": secret, "since": 0}),
        json!({"type": "ping"}),
        json!({"type": "subscribe", "room": rooms[2], "since": 0}),
        json!({"type": "subscribe", "room": rooms[3]}),
        json!({"type": "subscribe", "room": rooms[2], "since": 2}),
    ];
    b.send_at_once(frames).await;

    let mut seen = Vec::new();
    while seen.len() < 13 {
        let f = b.next(WAIT).await.expect("every answer");
        let kind = f["type"].as_str().unwrap().to_string();
        if kind == "presence" {
            continue;
        }
        let room = f["room"].as_str().or(f["ref"].as_str()).unwrap_or("");
        let name = match rooms.iter().position(|r| r == room) {
            Some(i) => format!("r{i}"),
            None if room == secret => "secret".into(),
            None => String::new(),
        };
        let what = match kind.as_str() {
            "subscribed" => format!(
                "{name} subscribed {} {}",
                f["last_seq"],
                f["recovered"]
                    .as_bool()
                    .map_or("-".into(), |r| r.to_string())
            ),
            "message" => format!("{name} message {}", f["seq"]),
            "error" => format!("{name} error {}", f["code"].as_str().unwrap()),
            other => other.to_string(),
        };
        seen.push(what);
    }
    assert_eq!(
        seen,
        [
            "r0 subscribed 1 true",
            "r0 message 1",
            "r1 subscribed 2 true",
            "r1 message 2",
            "secret error not_found",
            "pong",
            "r2 subscribed 3 true",
            "r2 message 1",
            "r2 message 2",
            "r2 message 3",
            "r3 subscribed 4 -",
            "r2 subscribed 3 true",
            "r2 message 3",
        ][..],
        "{seen:#?}"
    );
    // Every room is live on the socket.
    alice.post_message(&rooms[3], "live").await;
    let live = b.expect("message").await;
    assert_eq!(
        (live["room"].as_str(), live["seq"].as_i64()),
        (Some(rooms[3].as_str()), Some(5))
    );
}

/// The point of taking a burst together: its rooms are read in a batch or two, not one read
/// per `subscribe` (counted by the store's own query metric).
#[tokio::test]
async fn subscribes_sent_at_once_read_their_rooms_together() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let rooms = alice.create_public_rooms(12).await;
    let reads = || async {
        common::metric(
            &s.metrics().await,
            "confab_store_query_duration_seconds_count{op=\"room_gates\"}",
        )
        .unwrap_or(0.0)
    };
    let mut a = alice.connect().await;
    let before = reads().await;
    a.send_at_once(
        rooms
            .iter()
            .map(|room| json!({"type": "subscribe", "room": room})),
    )
    .await;
    for room in &rooms {
        assert_eq!(a.expect("subscribed").await["room"], room.as_str());
    }
    let batches = reads().await - before;
    assert!(
        (1.0..=4.0).contains(&batches),
        "12 subscribes took {batches} room reads"
    );
}

/// A burst of resumes whose rooms missed more than one read holds (1,000 messages) is read
/// and written in parts, and still answers every room in order, each with all it missed.
#[tokio::test]
async fn a_burst_of_resumes_that_missed_much_replays_every_room_in_order() {
    let s = common::flood_server().await;
    let alice = s.user("alice").await;
    let rooms = alice.create_public_rooms(3).await;
    // Not subscribed: the sender reads only its acks.
    let mut a = alice.connect().await;
    for i in 0..600 {
        for room in &rooms {
            a.say(room, "x", &format!("{room}-{i}")).await;
        }
    }
    let mut acked = 0;
    while acked < 1800 {
        if a.next(WAIT).await.expect("acks")["type"] == "ack" {
            acked += 1;
        }
    }
    let mut late = alice.connect().await;
    late.send_at_once(
        rooms
            .iter()
            .map(|room| json!({"type": "subscribe", "room": room, "since": 0})),
    )
    .await;
    for room in &rooms {
        let sub = late.expect("subscribed").await;
        assert_eq!(
            (
                sub["room"].as_str(),
                sub["last_seq"].as_i64(),
                sub["recovered"].as_bool()
            ),
            (Some(room.as_str()), Some(600), Some(true))
        );
        for seq in 1..=600 {
            let m = late.expect("message").await;
            assert_eq!(
                (m["room"].as_str(), m["seq"].as_i64()),
                (Some(room.as_str()), Some(seq))
            );
        }
    }
}

/// Subscribes sent at once each count against the frame budget: those beyond it are refused
/// with `rate_limited`, naming their room, after the answers of those within it.
#[tokio::test]
async fn subscribes_beyond_the_frame_budget_are_refused_each_by_room() {
    let (mut config, dir) = common::embedded();
    config.ws_frames_per_second = 1;
    config.ws_frames_burst = 3;
    let s = Server::start_with(config, Some(dir)).await;
    let alice = s.user("alice").await;
    let rooms = alice.create_public_rooms(5).await;
    let mut a = alice.connect().await;
    a.send_at_once(
        rooms
            .iter()
            .map(|room| json!({"type": "subscribe", "room": room})),
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let f = a.next(WAIT).await.expect("every answer");
        match f["type"].as_str().unwrap() {
            "subscribed" => seen.push((
                f["room"].as_str().unwrap().to_string(),
                "subscribed".to_string(),
            )),
            "error" => seen.push((
                f["ref"].as_str().unwrap().to_string(),
                f["code"].as_str().unwrap().to_string(),
            )),
            _ => {}
        }
    }
    let expected: Vec<(String, String)> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                r.clone(),
                if i < 3 { "subscribed" } else { "rate_limited" }.to_string(),
            )
        })
        .collect();
    assert_eq!(seen, expected);
}

/// A cursor the room never reached (a restore from backup, another installation) is not a
/// reason to go quiet: the reply gives the room's real last seq with `recovered: false`, and
/// live messages flow as usual.
#[tokio::test]
async fn a_cursor_beyond_the_room_is_answered_with_a_resync_and_live_delivery() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    alice.post_message(&room, "one").await;
    alice.post_message(&room, "two").await;
    let mut b = bob.connect().await;
    let sub = b.subscribe(&room, Some(1_000_000_000_000_000_000)).await;
    assert_eq!(
        (sub["last_seq"].as_i64(), sub["recovered"].as_bool()),
        (Some(2), Some(false))
    );
    b.expect_none("message", Duration::from_millis(200)).await;
    alice.post_message(&room, "three").await;
    let live = b.expect("message").await;
    assert_eq!(
        (live["seq"].as_i64(), live["body"].as_str()),
        (Some(3), Some("three"))
    );
}

#[tokio::test]
async fn a_resume_beyond_1000_is_not_replayed() {
    let s = common::flood_server().await;
    let alice = s.user("alice").await;
    let room = alice.create_room("busy", "public").await;
    let mut a = alice.subscribed(&room).await;
    for i in 0..1002 {
        a.say(&room, "x", &format!("c{i}")).await;
    }
    let mut acked = 0;
    while acked < 1002 {
        if a.next(WAIT).await.expect("acks")["type"] == "ack" {
            acked += 1;
        }
    }
    let mut late = alice.connect().await;
    let sub = late.subscribe(&room, Some(1)).await;
    assert_eq!(
        (sub["last_seq"].as_i64(), sub["recovered"].as_bool()),
        (Some(1002), Some(false))
    );
    late.expect_none("message", Duration::from_millis(300))
        .await;
    let near = alice.connect().await.subscribe(&room, Some(2)).await;
    assert_eq!(near["recovered"], true);
}

#[tokio::test]
async fn error_frames_keep_the_socket_open() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    let private = alice.create_room("secret", "private").await;
    let mut b = bob.connect().await;

    b.send_text("this is not json").await;
    assert_eq!(b.expect("error").await["code"], "bad_request");
    b.send(json!({"type": "dance", "client_id": "c7"})).await;
    let e = b.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("bad_request"), Some("c7"))
    );
    b.send(json!({"type": "subscribe", "room": "not-a-uuid"}))
        .await;
    assert_eq!(b.expect("error").await["code"], "bad_request");
    b.inner()
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(b.expect("error").await["code"], "bad_request");

    // Not a member of a public room: forbidden to send; a private room does not exist for him.
    b.say(&room, "hi", "c8").await;
    let e = b.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("forbidden"), Some("c8"))
    );
    b.send(json!({"type": "subscribe", "room": private})).await;
    let e = b.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("not_found"), Some(private.as_str()))
    );
    b.say(&private, "hi", "c9").await;
    assert_eq!(b.expect("error").await["code"], "not_found");

    bob.join(&room).await;
    b.say(&room, &"x".repeat(16_385), "big").await;
    let e = b.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("too_large"), Some("big"))
    );

    // After all that, the socket still works.
    b.send(json!({"type": "ping"})).await;
    b.expect("pong").await;
    b.say(&room, "finally", "c10").await;
    assert_eq!(b.expect("ack").await["seq"], 1);
}

#[tokio::test]
async fn a_frame_over_64_kib_closes_1009() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let mut a = alice.connect().await;
    a.send_text(&format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(70_000)
    ))
    .await;
    assert_eq!(a.expect_close(WAIT).await, Closed::Code(1009));
}

#[tokio::test]
async fn typing_reaches_others_and_expires_by_itself() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    let mut a = alice.subscribed(&room).await;
    let mut b = bob.subscribed(&room).await;
    a.send(json!({"type": "typing", "room": room, "active": true}))
        .await;
    let t = b.expect_skipping("typing").await;
    assert_eq!(
        (
            t["user"].as_str(),
            t["active"].as_bool(),
            t["room"].as_str()
        ),
        (Some(alice.id.as_str()), Some(true), Some(room.as_str()))
    );
    // Not echoed to the typist.
    a.send(json!({"type": "ping"})).await;
    let mut frames = Vec::new();
    loop {
        let f = a.next(WAIT).await.unwrap();
        if f["type"] == "pong" {
            break;
        }
        frames.push(f);
    }
    assert!(frames.iter().all(|f| f["type"] != "typing"), "{frames:?}");
    // Six seconds without a refresh: the server turns it off.
    let started = std::time::Instant::now();
    let off = loop {
        let f = b.next(Duration::from_secs(8)).await.expect("typing off");
        if f["type"] == "typing" {
            break f;
        }
    };
    assert_eq!(off["active"], false);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "expired too early: {waited:?}"
    );
}

#[tokio::test]
async fn receipts_move_markers_and_are_coalesced() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    for i in 0..5 {
        alice.post_message(&room, &format!("m{i}")).await;
    }
    let mut a = alice.subscribed(&room).await;
    let mut b = bob.subscribed(&room).await;
    b.send(json!({"type": "delivered", "room": room, "seq": 5}))
        .await;
    let r = a.expect_skipping("receipt").await;
    assert_eq!(
        (r["user"].as_str(), r["kind"].as_str(), r["seq"].as_i64()),
        (Some(bob.id.as_str()), Some("delivered"), Some(5))
    );
    // Three reads in quick succession: one receipt now, the last one within about a second.
    for seq in [1, 2, 3] {
        b.send(json!({"type": "read", "room": room, "seq": seq}))
            .await;
    }
    let first = a.expect_skipping("receipt").await;
    assert_eq!(
        (first["kind"].as_str(), first["seq"].as_i64()),
        (Some("read"), Some(1))
    );
    let last = a.expect_skipping("receipt").await;
    assert_eq!(
        (last["kind"].as_str(), last["seq"].as_i64()),
        (Some("read"), Some(3))
    );
    a.expect_none("receipt", Duration::from_millis(1300)).await;
    let (_, list) = bob.api.get("/api/v1/rooms").await;
    let r = &list["rooms"][0];
    assert_eq!(
        (r["last_read_seq"].as_i64(), r["unread"].as_i64()),
        (Some(3), Some(2))
    );
}

#[tokio::test]
async fn presence_follows_subscribed_sockets() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    let mut a = alice.subscribed(&room).await;
    let mut b = bob.connect().await;
    let sub = b.subscribe(&room, None).await;
    let online: Vec<&str> = sub["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        online.contains(&alice.id.as_str()) && online.contains(&bob.id.as_str()),
        "{sub}"
    );
    let p = a.presence_of(&bob.id).await;
    assert_eq!(p["status"], "online");
    let (_, members) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/members"))
        .await;
    assert!(
        members["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["online"] == true)
    );
    // A second socket of Bob's changes nothing; closing both makes him offline.
    let b2 = bob.subscribed(&room).await;
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    while let Some(f) = a
        .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert!(
            !(f["type"] == "presence" && f["user"] == bob.id.as_str()),
            "one of two sockets closing is not offline: {f}"
        );
    }
    drop(b2);
    let p = a.presence_of(&bob.id).await;
    assert_eq!(p["status"], "offline");
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let mut a = alice.subscribed(&room).await;
    a.send(json!({"type": "unsubscribe", "room": room})).await;
    assert_eq!(a.expect("unsubscribed").await["room"], room.as_str());
    alice.post_message(&room, "unheard").await;
    a.expect_none("message", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn kicked_users_stop_receiving_at_once() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "private").await;
    alice
        .api
        .post(
            &format!("/api/v1/rooms/{room}/members"),
            json!({"user_id": bob.id}),
        )
        .await;
    let mut b = bob.subscribed(&room).await;
    let mut b_idle = bob.connect().await; // not subscribed: told all the same
    alice
        .api
        .delete(&format!("/api/v1/rooms/{room}/members/{}", bob.id))
        .await;
    assert_eq!(b.expect("kicked").await["room"], room.as_str());
    assert_eq!(b_idle.expect("kicked").await["room"], room.as_str());
    alice.post_message(&room, "after the kick").await;
    b.expect_none("message", Duration::from_millis(300)).await;
    b.say(&room, "let me back", "c1").await;
    assert_eq!(b.expect("error").await["code"], "not_found");
}

#[tokio::test]
async fn a_reader_that_never_reads_is_closed_1008() {
    let (mut config, dir) = common::embedded();
    config.outbound_queue = 16;
    let s = Server::start_with(common::unlimited(config), Some(dir)).await;
    let alice = s.user("alice").await;
    let room = alice.create_room("flood", "public").await;
    // A client with a tiny receive buffer that stops reading after subscribing.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(s.addr).await.unwrap();
    let req = format!("ws://{}/ws?token={}", s.addr, alice.token);
    let (mut slow, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    slow.send(Message::Text(
        json!({"type": "subscribe", "room": room})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The writer waits for its acks in small rounds, so its own queue stays short.
    let mut writer = alice.connect().await;
    let big = "y".repeat(16_000);
    for round in 0..75 {
        for i in 0..8 {
            writer.say(&room, &big, &format!("c{round}-{i}")).await;
        }
        for _ in 0..8 {
            writer.expect("ack").await;
        }
    }
    let text = s.metrics().await;
    assert!(
        text.contains("confab_slow_consumers_total 1"),
        "{}",
        text.lines()
            .filter(|l| l.contains("slow"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The slow socket ends with 1008 once its backlog is read.
    let mut closed = None;
    for _ in 0..2000 {
        match tokio::time::timeout(WAIT, futures::StreamExt::next(&mut slow)).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                closed = Some(u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    assert_eq!(closed, Some(1008));
}

#[tokio::test]
async fn dead_peers_are_dropped_after_two_missed_pings() {
    let (mut config, dir) = common::embedded();
    config.heartbeat_ms = 150;
    let s = Server::start_with(config, Some(dir)).await;
    let alice = s.user("alice").await;
    let _silent = alice.connect().await; // never reads, so never answers pings
    assert!(
        common::eventually(Duration::from_secs(3), || async {
            s.metrics().await.contains("confab_ws_connections 0")
        })
        .await,
        "the silent peer was not dropped"
    );
    // A live client answers pings (tungstenite does so while reading) and stays.
    let mut live = alice.connect().await;
    live.expect_none("message", Duration::from_millis(700))
        .await; // reading answers pings
    live.send(json!({"type": "ping"})).await;
    live.expect("pong").await;
}

/// A client's (or a proxy's) protocol-level ping on an idle socket is answered: the loop
/// skips the ping without handling it, and the pong tungstenite queued goes out on its next read.
#[tokio::test]
async fn a_clients_websocket_ping_is_answered_on_an_idle_socket() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let mut ws = alice.connect().await;
    let raw = ws.inner();
    raw.send(Message::Ping(b"are-you-there"[..].into()))
        .await
        .expect("send ping");
    let pong = tokio::time::timeout(WAIT, async {
        while let Some(frame) = raw.next().await {
            if let Message::Pong(payload) = frame.expect("frame") {
                return Some(payload);
            }
        }
        None
    })
    .await
    .expect("a pong in time");
    assert_eq!(pong.as_deref(), Some(&b"are-you-there"[..]));
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_readiness_fails_first() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let mut a = alice.subscribed(&room).await;
    let addr = s.addr;
    let mut b = alice.subscribed(&room).await;
    let done = tokio::spawn(s.shutdown());
    // The close carries a reconnect hint, drawn per socket within a 2 s window.
    for ws in [&mut a, &mut b] {
        let (code, reason) = ws.expect_close_reason(WAIT).await;
        assert_eq!(code, Closed::Code(1001));
        let hint: u64 = reason
            .split("retry_after_ms=")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no reconnect hint in {reason:?}"));
        assert!(hint < 2000, "hint {hint} ms is inside the window");
    }
    done.await.unwrap().expect("run returns Ok");
    assert!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn room_changes_reach_subscribers() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    let mut b = bob.subscribed(&room).await;
    alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}"),
            json!({"topic": "launch day"}),
        )
        .await;
    let u = b.expect("room_updated").await;
    assert_eq!(
        (
            u["id"].as_str(),
            u["topic"].as_str(),
            u["archived"].as_bool()
        ),
        (Some(room.as_str()), Some("launch day"), Some(false))
    );
    alice.api.delete(&format!("/api/v1/rooms/{room}")).await;
    assert_eq!(b.expect("room_updated").await["archived"], true);
    b.say(&room, "too late", "c1").await;
    let e = b.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("forbidden"), Some("c1"))
    );
}

#[tokio::test]
async fn new_memberships_reach_the_members_sockets_as_room_joined() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mut bob_ws = bob.connect().await;
    // Invited into a private room.
    let secret = alice.create_room("secret", "private").await;
    let (st, _) = alice
        .api
        .post(
            &format!("/api/v1/rooms/{secret}/members"),
            json!({"user_id": bob.id}),
        )
        .await;
    assert_eq!(st, reqwest::StatusCode::CREATED);
    let joined = bob_ws.expect_skipping("room_joined").await;
    assert_eq!(joined["id"], secret.as_str());
    assert_eq!(joined["name"], "secret");
    assert_eq!(joined["role"], "member");
    // A DM opened by someone else.
    let (st, dm) = alice
        .api
        .post("/api/v1/dms", json!({"user_id": bob.id}))
        .await;
    assert_eq!(st, reqwest::StatusCode::CREATED);
    let joined = bob_ws.expect_skipping("room_joined").await;
    assert_eq!(joined["id"], dm["id"]);
    assert_eq!(joined["kind"], "direct");
    // Joining a public room from one socket (or tab) tells the user's other sockets.
    let public = alice.create_room("lobby", "public").await;
    bob.join(&public).await;
    let joined = bob_ws.expect_skipping("room_joined").await;
    assert_eq!(joined["id"], public.as_str());
    // Opening the same DM again is no news.
    let (st, _) = alice
        .api
        .post("/api/v1/dms", json!({"user_id": bob.id}))
        .await;
    assert_eq!(st, reqwest::StatusCode::OK);
    bob_ws.send(json!({"type": "ping"})).await;
    bob_ws.expect("pong").await;
}

/// Sends `n` messages without waiting between them, waits for every ack, and returns how many
/// transactions the writer used (from its batch-size histogram).
async fn commits_for_a_burst(s: &Server, n: usize) -> u64 {
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let mut a = alice.connect().await;
    a.send_at_once((0..n).map(
        |i| json!({"type": "message", "room": room, "body": "x", "client_id": format!("c{i}")}),
    ))
    .await;
    for _ in 0..n {
        a.expect_skipping("ack").await;
    }
    let metrics = s.metrics().await;
    let value = |name: &str| -> u64 {
        common::metric(&metrics, name).unwrap_or_else(|| panic!("{name} in {metrics}")) as u64
    };
    assert_eq!(value("confab_commit_batch_size_sum"), n as u64);
    value("confab_commit_batch_size_count")
}

#[tokio::test]
async fn group_commit_shares_transactions_unless_one_insert_per_message_is_asked() {
    let (config, dir) = common::embedded();
    let grouped = Server::start_with(common::unlimited(config), Some(dir)).await;
    let commits = commits_for_a_burst(&grouped, 200).await;
    assert!(commits < 200, "200 queued messages took {commits} commits");

    let (mut config, dir) = common::embedded();
    config.one_insert_per_message = true;
    let naive = Server::start_with(common::unlimited(config), Some(dir)).await;
    assert_eq!(commits_for_a_burst(&naive, 200).await, 200);
}

#[tokio::test]
async fn a_client_that_closes_gets_the_servers_close_frame_back() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let mut a = alice.connect().await;
    a.inner()
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    // The handshake completes: the server answers with a close frame instead of dropping TCP.
    assert_eq!(a.expect_close(WAIT).await, Closed::Code(1000));
}

/// A reconnect storm in small: many users' sockets sign in at once, so their accounts are read
/// in shared batches; each socket is still exactly the user its token names, and the token of
/// an account deleted in the meantime is refused in the same crowd.
#[tokio::test]
async fn sockets_signing_in_at_once_are_each_the_user_their_token_names() {
    let (mut config, dir) = common::embedded();
    (config.auth_rate_per_minute, config.auth_burst) = (10_000, 10_000);
    let s = Server::start_with(config, Some(dir)).await;
    let mut users = Vec::new();
    for k in 0..24 {
        users.push(s.user(&format!("crowd{k}")).await);
    }
    let gone = s.user("gone").await;
    let (st, body) = gone
        .api
        .call(
            reqwest::Method::DELETE,
            "/api/v1/users/me",
            Some(json!({"password": "correct horse"})),
        )
        .await;
    assert_eq!(st, reqwest::StatusCode::NO_CONTENT, "{body}");

    let crowd = users.iter().flat_map(|u| [u, u]).map(|u| async move {
        let mut ws = Ws::connect(s.addr, Some(&u.token)).await.expect("connect");
        let hello = ws.expect("hello").await;
        (
            u.id.clone(),
            hello["user"]["id"].as_str().unwrap().to_string(),
            ws,
        )
    });
    let refused = async {
        match Ws::connect(s.addr, Some(&gone.token)).await {
            Err(e) => e.to_string(),
            Ok(mut ws) => format!("{:?}", ws.frames_until_close(WAIT).await),
        }
    };
    let (signed_in, refused) = tokio::join!(futures::future::join_all(crowd), refused);
    assert_eq!(signed_in.len(), 48);
    for (expected, got, _) in &signed_in {
        assert_eq!(got, expected, "a socket is the user its token names");
    }
    assert!(
        refused.contains("401") || refused.contains("4001"),
        "a deleted account's token is refused: {refused}"
    );
}

/// Admission control: while a pod's store is behind with the reads of sign-ins and subscribes
/// (here, another session holds the rooms table), a new socket is refused at once with 503
/// `unavailable` and `Retry-After` rather than left waiting behind the others; the sockets
/// already open get their answers once the store catches up, and new sockets are taken again.
#[tokio::test]
async fn new_sockets_are_refused_with_retry_after_while_the_store_is_behind() {
    use sqlx::Connection as _;
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let pg = common::Postgres::start();
    let redis = common::Redis::start();
    let mut config = common::unlimited(common::cluster(&pg, &redis));
    config.ws_admission_backlog = 8;
    let s = Server::start(config).await;
    let alice = s.user("alice").await;
    let rooms = alice.create_public_rooms(10).await;
    let mut a = alice.connect().await;
    let open = || async {
        let mut req = format!("ws://{}/ws", s.addr).into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", alice.token).parse().unwrap(),
        );
        tokio_tungstenite::connect_async(req).await
    };

    let mut lock = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE rooms IN ACCESS EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    a.send_at_once(
        rooms
            .iter()
            .map(|room| json!({"type": "subscribe", "room": room})),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let refused = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no socket refused while ten subscribes wait"
        );
        match open().await {
            Err(WsError::Http(resp)) => break resp,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(refused.status(), 503);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value =
        serde_json::from_slice(refused.body().as_deref().unwrap_or_default()).unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    // No subscribe was answered meanwhile; none is lost.
    a.expect_none("subscribed", Duration::from_millis(200))
        .await;

    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    for room in &rooms {
        assert_eq!(a.expect("subscribed").await["room"], room.as_str());
    }
    assert!(open().await.is_ok(), "taken again once caught up");
    let metrics = s.metrics().await;
    assert!(
        common::metric(
            &metrics,
            "confab_rate_limited_total{scope=\"ws_admission\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "the refusals are counted"
    );
}

/// A request to the WebSocket endpoint that is not a WebSocket upgrade gets a 400 that says what
/// it lacks, in the API's error shape.
#[tokio::test]
async fn a_request_that_is_not_a_websocket_upgrade_is_told_what_it_lacks() {
    let s = Server::embedded().await;
    let http = reqwest::Client::new();
    let plain = http.get(s.url("/ws")).send().await.unwrap();
    assert_eq!(plain.status(), 400);
    let body: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Upgrade: websocket"),
        "{body}"
    );
    let old = http
        .get(s.url("/ws"))
        .header("Connection", "keep-alive, Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "8")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 400);
    let body: serde_json::Value = old.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Sec-WebSocket-Version: 13"),
        "{body}"
    );
}

/// A client may send frames right behind its upgrade request, in the same packet, without
/// waiting for the answer: the server reads them as the socket's first frames. The answer
/// carries the accept key RFC 6455 derives from the request's key.
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_read() {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut bytes = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        alice.token, s.addr
    )
    .into_bytes();
    let mut ping = Frame::message(r#"{"type":"ping"}"#, OpCode::Data(Data::Text), true);
    ping.header_mut().mask = Some([7, 1, 9, 3]);
    ping.format(&mut bytes).unwrap();
    tcp.write_all(&bytes).await.unwrap();

    // The answer's head, then whatever came with it.
    let mut head = Vec::new();
    let rest = loop {
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed before answering");
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break head.split_off(end + 4);
        }
    };
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The example key and accept value of RFC 6455, section 1.3.
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_partially_read(tcp, rest, Role::Client, None)
            .await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frames in time")
            .expect("open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            seen.push(v["type"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["hello", "pong"]);
}
