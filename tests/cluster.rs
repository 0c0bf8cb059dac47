//! The cluster shape: two confab pods on one PostgreSQL and one Redis. Whatever pod a client is
//! on, it sees the same rooms, the same seq and the same presence.

mod common;

use std::time::Duration;

use common::{Postgres, Redis, Server, User, Ws, cluster, eventually};
use reqwest::StatusCode;
use serde_json::json;

struct Cluster {
    a: Server,
    b: Server,
    redis: Redis,
    _pg: Postgres,
}

async fn two_pods() -> Cluster {
    let pg = Postgres::start();
    let redis = Redis::start();
    let config = || {
        let mut c = common::unlimited(cluster(&pg, &redis));
        c.admins = vec!["root".into()];
        c
    };
    let a = Server::start(config()).await;
    let b = Server::start(config()).await;
    Cluster {
        a,
        b,
        redis,
        _pg: pg,
    }
}

impl Cluster {
    /// Alice registered on pod a; Bob on pod b; a public room `name` of Alice's that Bob joined.
    async fn alice_and_bob_in(&self, name: &str) -> (User, User, String) {
        let alice = self.a.user("alice").await;
        self.b.user("bob").await;
        let bob = self.b.login("bob").await;
        let room = alice.create_room(name, "public").await;
        bob.join(&room).await;
        (alice, bob, room)
    }
}

/// Whether the room's member list, as `asker` reads it, shows `user` online.
async fn online_in_members(asker: &User, room: &str, user: &str) -> bool {
    let (_, members) = asker
        .api
        .get(&format!("/api/v1/rooms/{room}/members"))
        .await;
    let entry = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"]["id"] == user)
        .unwrap_or_else(|| panic!("{user} is not a member: {members}"));
    entry["online"] == true
}

/// Waits until `pod` is ready again (after Redis came back).
async fn ready_again(pod: &Server) {
    assert!(
        eventually(Duration::from_secs(10), || async {
            pod.api().get("/readyz").await.0 == StatusCode::OK
        })
        .await,
        "the pod does not recover after Redis returns"
    );
}

/// Alice on pod a; Bob on pod b, subscribed to a room whose seq 1 pod b has delivered. Then the
/// bus goes away and pod a commits m2 and m3, which pod b has not delivered. Redis stays down.
async fn missed_while_the_bus_is_down(c: &mut Cluster) -> (User, User, String, Ws) {
    let (alice, bob, room) = c.alice_and_bob_in("general").await;
    let mut b = bob.subscribed(&room).await;
    alice.post_message(&room, "m1").await;
    assert_eq!(b.expect("message").await["seq"], 1);
    // The bus goes away; pod a keeps committing (the store is the source of truth).
    c.redis.stop();
    alice.post_message(&room, "m2").await;
    alice.post_message(&room, "m3").await;
    (alice, bob, room, b)
}

#[tokio::test]
async fn a_message_sent_on_one_pod_arrives_on_the_other_with_the_same_seq() {
    let c = two_pods().await;
    let (alice, bob, room) = c.alice_and_bob_in("general").await;
    let mut a = alice.subscribed(&room).await;
    let mut b = bob.subscribed(&room).await;

    a.say(&room, "from pod a", "c1").await;
    let ack = a.expect("ack").await;
    let got = b.expect("message").await;
    assert_eq!(
        (got["seq"].clone(), got["id"].clone(), got["body"].as_str()),
        (ack["seq"].clone(), ack["id"].clone(), Some("from pod a"))
    );
    b.say(&room, "from pod b", "c2").await;
    assert_eq!(b.expect("ack").await["seq"], 2);
    assert_eq!(
        a.expect("message").await["seq"],
        1,
        "the sender sees its own message too"
    );
    let back = a.expect("message").await;
    assert_eq!(
        (back["seq"].as_i64(), back["body"].as_str()),
        (Some(2), Some("from pod b"))
    );
    // A token from pod a works on pod b: one key for the whole cluster.
    let (st, _) =
        c.b.api()
            .with_token(&alice.token)
            .get("/api/v1/users/me")
            .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_writers_on_both_pods_share_one_gapless_order() {
    let c = two_pods().await;
    let (alice, bob, room) = c.alice_and_bob_in("busy").await;
    let mut watch_a = alice.subscribed(&room).await;
    let mut watch_b = bob.subscribed(&room).await;
    let mut wa = alice.connect().await;
    let mut wb = bob.connect().await;
    const N: i64 = 150;
    for i in 0..N {
        wa.say(&room, &format!("a{i}"), &format!("a{i}")).await;
        wb.say(&room, &format!("b{i}"), &format!("b{i}")).await;
    }
    for watcher in [&mut watch_a, &mut watch_b] {
        let mut bodies = Vec::new();
        for expected in 1..=2 * N {
            let m = watcher.expect("message").await;
            assert_eq!(m["seq"], expected, "in order, no gap, no duplicate");
            bodies.push(m["body"].as_str().unwrap().to_string());
        }
        // Each writer's messages keep their own order inside the shared sequence.
        let a_order: Vec<&String> = bodies.iter().filter(|b| b.starts_with('a')).collect();
        let expected: Vec<String> = (0..N).map(|i| format!("a{i}")).collect();
        assert_eq!(a_order, expected.iter().collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn presence_and_typing_cross_pods() {
    let c = two_pods().await;
    let (alice, bob, room) = c.alice_and_bob_in("general").await;
    let mut a = alice.subscribed(&room).await;
    let mut b = bob.connect().await;
    let sub = b.subscribe(&room, None).await;
    assert!(
        sub["presence"]
            .as_array()
            .unwrap()
            .contains(&json!(alice.id)),
        "alice on pod a is online: {sub}"
    );
    assert_eq!(a.presence_of(&bob.id).await["status"], "online");
    let (_, members) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/members"))
        .await;
    assert!(
        members["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["online"] == true),
        "{members}"
    );

    b.send(json!({"type": "typing", "room": room, "active": true}))
        .await;
    let t = a.expect_skipping("typing").await;
    assert_eq!(
        (t["user"].as_str(), t["active"].as_bool()),
        (Some(bob.id.as_str()), Some(true))
    );

    drop(b);
    assert_eq!(a.presence_of(&bob.id).await["status"], "offline");
    assert!(
        !online_in_members(&alice, &room, &bob.id).await,
        "bob is offline"
    );
}

#[tokio::test]
async fn a_kick_on_one_pod_reaches_sockets_on_the_other() {
    let c = two_pods().await;
    let alice = c.a.user("alice").await;
    c.b.user("bob").await;
    let bob = c.b.login("bob").await;
    let room = alice.create_room("general", "private").await;
    alice
        .api
        .post(
            &format!("/api/v1/rooms/{room}/members"),
            json!({"user_id": bob.id}),
        )
        .await;
    let mut b = bob.subscribed(&room).await;
    let (st, _) = alice
        .api
        .delete(&format!("/api/v1/rooms/{room}/members/{}", bob.id))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(b.expect("kicked").await["room"], room.as_str());
    alice.post_message(&room, "after").await;
    b.expect_none("message", Duration::from_millis(400)).await;
}

#[tokio::test]
async fn readiness_reflects_the_bus() {
    let mut c = two_pods().await;
    let (st, body) = c.a.api().get("/readyz").await;
    assert_eq!(
        (st, body["checks"]["bus"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    c.redis.stop();
    let a = &c.a;
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.api().get("/readyz").await.0 == StatusCode::SERVICE_UNAVAILABLE
        })
        .await,
        "readyz stays 200 with Redis down"
    );
    let (_, body) = c.a.api().get("/readyz").await;
    assert_eq!(body["status"], "unavailable");
    assert_ne!(body["checks"]["bus"], "ok");
    // The store is the source of truth: sending still works while the bus is down.
    let alice = c.a.user("alice").await;
    let room = alice.create_room("general", "public").await;
    alice.post_message(&room, "still here").await;
    c.redis.restart();
    ready_again(&c.a).await;
}

#[tokio::test]
async fn messages_committed_while_redis_was_down_are_filled_from_the_store() {
    let mut c = two_pods().await;
    let (alice, _bob, room, mut b) = missed_while_the_bus_is_down(&mut c).await;
    c.redis.restart();
    // Both pods reconnect and resubscribe by themselves.
    ready_again(&c.b).await;
    // m2 and m3 arrive with nothing after them to reveal the gap: pod b compares its rooms with
    // the store by itself.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = b.expect("message").await;
        seen.push(m["seq"].as_i64().unwrap());
    }
    for i in 4..=6 {
        alice.post_message(&room, &format!("m{i}")).await;
    }
    while seen.len() < 5 {
        let m = b.expect("message").await;
        seen.push(m["seq"].as_i64().unwrap());
    }
    assert_eq!(seen, vec![2, 3, 4, 5, 6]);
    b.expect_none("message", Duration::from_millis(300)).await;
    let fills =
        common::metric(&c.b.metrics().await, "confab_gap_fills_total").expect("gap fill counter");
    assert!(
        fills >= 1.0,
        "m2 and m3 should have come from the store: {fills}"
    );
}

#[tokio::test]
async fn a_ban_on_one_pod_closes_sockets_on_the_other_within_a_second() {
    let c = two_pods().await;
    let root = c.a.user("root").await;
    c.b.user("bob").await;
    let bob = c.b.login("bob").await;
    let mut on_b = bob.connect().await;
    let started = std::time::Instant::now();
    let (st, _) = root
        .api
        .post(&format!("/api/v1/admin/users/{}/ban", bob.id), json!({}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(
        on_b.expect_close(Duration::from_secs(2)).await,
        common::ws::Closed::Code(4003)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn mutes_and_room_settings_on_one_pod_hold_on_the_other() {
    let c = two_pods().await;
    let root = c.a.user("root").await;
    c.b.user("bob").await;
    let bob = c.b.login("bob").await;
    let room = root.create_room("general", "public").await;
    bob.join(&room).await;
    let mut b = bob.subscribed(&room).await;
    b.say(&room, "hi", "c1").await;
    b.expect_skipping("ack").await;
    root.api
        .post(&format!("/api/v1/admin/users/{}/mute", bob.id), json!({}))
        .await;
    let b_ref = &mut b;
    // The control event crosses through Redis; the socket on pod b refuses from then on.
    let mut muted = false;
    for i in 0..20 {
        b_ref.say(&room, "x", &format!("m{i}")).await;
        let f = b_ref.expect_skipping_any(&["ack", "error"]).await;
        if f["type"] == "error" {
            assert_eq!(f["code"], "muted");
            muted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(muted, "the global mute never reached pod b");
    root.api
        .delete(&format!("/api/v1/admin/users/{}/mute", bob.id))
        .await;
    root.api
        .patch(&format!("/api/v1/rooms/{room}"), json!({"read_only": true}))
        .await;
    assert_eq!(b.expect_skipping("room_updated").await["read_only"], true);
    b.say(&room, "read only?", "r1").await;
    assert_eq!(b.expect_skipping("error").await["code"], "forbidden");
}

#[tokio::test]
async fn admin_stats_list_every_live_pod() {
    let c = two_pods().await;
    let root = c.a.user("root").await;
    let _socket = root.connect().await;
    let a = &c.a;
    let token = root.token.clone();
    assert!(
        eventually(Duration::from_secs(12), || {
            let token = token.clone();
            async move {
                let (_, stats) = a.api().with_token(&token).get("/api/v1/admin/stats").await;
                stats["pods"].as_array().is_some_and(|p| p.len() == 2)
            }
        })
        .await,
        "both pods should be listed"
    );
}

#[tokio::test]
async fn resuming_on_a_pod_that_lags_behind_repeats_nothing() {
    let mut c = two_pods().await;
    let (alice, bob_on_b, room, mut watcher) = missed_while_the_bus_is_down(&mut c).await;
    let bob_on_a = c.a.login("bob").await;
    // Bob saw m1..m3 on pod a...
    let (_, page) = bob_on_a
        .api
        .get(&format!("/api/v1/rooms/{room}/messages?after=0"))
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    // ...and resumes on the lagging pod b from 3.
    let mut resumed = bob_on_b.connect().await;
    let sub = resumed.subscribe(&room, Some(3)).await;
    assert_ne!(sub["recovered"], false);
    c.redis.restart();
    // Pod b catches up (2 and 3 reach its other subscriber), then a new message arrives:
    // the resumed socket gets 4 and nothing it already had.
    assert_eq!(watcher.expect("message").await["seq"], 2);
    assert_eq!(watcher.expect("message").await["seq"], 3);
    ready_again(&c.b).await;
    alice.post_message(&room, "m4").await;
    assert_eq!(resumed.expect("message").await["seq"], 4);
}

#[tokio::test]
async fn reactions_and_thread_summaries_made_on_one_pod_reach_the_other_with_their_rev() {
    let c = two_pods().await;
    let (alice, bob, room) = c.alice_and_bob_in("general").await;
    let mut b = bob.subscribed(&room).await;
    alice.post_message(&room, "root").await;
    b.expect("message").await;
    let (st, _) = alice
        .api
        .put(&format!(
            "/api/v1/rooms/{room}/messages/1/reactions/%F0%9F%91%8D"
        ))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let r = b.expect("reaction").await;
    assert_eq!((&r["emoji"], &r["rev"]), (&json!("👍"), &json!(2)));
    alice
        .api
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": "reply", "thread": 1}),
        )
        .await;
    assert_eq!(b.expect("message").await["thread"], 1);
    let root = b.expect("message_updated").await;
    assert_eq!(
        (
            &root["seq"],
            &root["rev"],
            &root["thread_summary"]["reply_count"]
        ),
        (&json!(1), &json!(3), &json!(1))
    );
    // Pod b reads the same aggregate from the shared store.
    let (_, page) = bob.api.get(&format!("/api/v1/rooms/{room}/messages")).await;
    assert_eq!(
        page["messages"][0]["reactions"][0]["users"],
        json!([alice.id])
    );
}

#[tokio::test]
async fn a_mention_on_one_pod_notifies_the_users_socket_on_the_other() {
    let c = two_pods().await;
    let (alice, bob, room) = c.alice_and_bob_in("general").await;
    // Bob is connected to pod b but not subscribed to the room.
    let mut away = bob.connect().await;
    let m = alice.post_message(&room, "@bob look").await;
    assert_eq!(m["mentions"], json!([bob.id]));
    let n = away.expect("notification").await;
    assert_eq!(
        (&n["reason"], &n["message"]["seq"]),
        (&json!("mention"), &json!(1))
    );
}

#[tokio::test]
async fn since_rev_resumes_changes_made_while_the_clients_pod_was_restarting() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let config = || common::unlimited(cluster(&pg, &redis));
    let a = Server::start(config()).await;
    let b = Server::start(config()).await;
    let alice = a.user("alice").await;
    b.user("bob").await;
    let bob = b.login("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    alice.post_message(&room, "one").await;
    alice.post_message(&room, "two").await;
    let mut ws = bob.subscribed(&room).await;
    let sub = ws.subscribe(&room, None).await;
    let (seen_seq, seen_rev) = (
        sub["last_seq"].as_i64().unwrap(),
        sub["rev"].as_i64().unwrap(),
    );
    assert_eq!((seen_seq, seen_rev), (2, 2));

    // Bob's pod goes away; meanwhile Alice edits one message and reacts to the other.
    drop(ws);
    b.shutdown().await.unwrap();
    alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}/messages/1"),
            json!({"body": "one!"}),
        )
        .await;
    alice
        .api
        .put(&format!("/api/v1/rooms/{room}/messages/2/reactions/:tada:"))
        .await;

    let b = Server::start(config()).await;
    let bob = b.login("bob").await;
    let mut back = bob.connect().await;
    back.send(json!({"type": "subscribe", "room": room, "since": seen_seq, "since_rev": seen_rev}))
        .await;
    let sub = back.expect("subscribed").await;
    assert_eq!((&sub["recovered"], &sub["rev"]), (&json!(true), &json!(4)));
    let first = back.expect("message_updated").await;
    let second = back.expect("message_updated").await;
    assert_eq!((&first["seq"], &first["body"]), (&json!(1), &json!("one!")));
    assert_eq!(
        (&second["seq"], &second["reactions"][0]["emoji"]),
        (&json!(2), &json!(":tada:"))
    );
}

#[tokio::test]
async fn a_block_made_on_one_pod_hides_typing_on_the_other_at_once() {
    let c = two_pods().await;
    let (alice, bob, room) = c.alice_and_bob_in("general").await;
    let carol = c.a.user("carol").await;
    carol.join(&room).await;
    // Alice watches from pod b and has already seen typing (her socket read her empty list).
    let alice_b = c.b.login("alice").await;
    let mut watch = alice_b.subscribed(&room).await;
    let mut carols = carol.subscribed(&room).await;
    carols
        .send(json!({"type": "typing", "room": room, "active": true}))
        .await;
    assert_eq!(
        watch.expect_skipping("typing").await["user"],
        carol.id.as_str()
    );

    // Alice blocks Bob through pod a; Bob (on pod b) types, then Carol stops typing.
    let (st, _) = alice
        .api
        .put(&format!("/api/v1/users/me/blocks/{}", bob.id))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let mut bobs = bob.subscribed(&room).await;
    bobs.send(json!({"type": "typing", "room": room, "active": true}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    carols
        .send(json!({"type": "typing", "room": room, "active": false}))
        .await;
    let next = watch.expect_skipping("typing").await;
    assert_eq!(
        (&next["user"], &next["active"]),
        (&json!(carol.id), &json!(false)),
        "Bob's indicator never reached Alice"
    );
    // A DM from Bob is refused on either pod.
    let (st, _) = bob
        .api
        .post("/api/v1/dms", json!({"user_id": alice.id}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_reaction_made_while_redis_was_down_reaches_the_other_pods_subscribers_after() {
    let mut c = two_pods().await;
    let (alice, bob, room) = c.alice_and_bob_in("general").await;
    let mut b = bob.subscribed(&room).await;
    alice.post_message(&room, "m1").await;
    assert_eq!(b.expect("message").await["seq"], 1);
    c.redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Pod a commits the reaction; its publish is lost with the bus.
    let (st, _) = alice
        .api
        .put(&format!("/api/v1/rooms/{room}/messages/1/reactions/:tada:"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    c.redis.restart();
    ready_again(&c.b).await;
    let u = b
        .expect_skipping_any(&["message_updated", "reaction"])
        .await;
    assert_eq!(u["rev"], 2, "{u}");
    if u["type"] == "message_updated" {
        assert_eq!(u["reactions"][0]["emoji"], ":tada:");
    }
}

#[tokio::test]
async fn a_key_revoked_or_an_account_deleted_on_one_pod_closes_its_sockets_on_the_other() {
    let c = two_pods().await;
    let root = c.a.user("root").await;
    let (st, created) = root
        .api
        .post("/api/v1/admin/bots", json!({"username": "relay-bot"}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let bot_id = created["user"]["id"].as_str().unwrap().to_string();
    let key = created["api_key"].as_str().unwrap().to_string();
    let key_id = created["key_id"].as_str().unwrap().to_string();
    let (_, second) = root
        .api
        .post(&format!("/api/v1/admin/bots/{bot_id}/keys"), json!({}))
        .await;
    let second = second["api_key"].as_str().unwrap().to_string();

    // The bot's sockets are on pod b; the admin acts on pod a.
    let mut revoked = Ws::connect(c.b.addr, Some(&key)).await.unwrap();
    revoked.expect("hello").await;
    let mut kept = Ws::connect(c.b.addr, Some(&second)).await.unwrap();
    kept.expect("hello").await;
    let (st, _) = root
        .api
        .delete(&format!("/api/v1/admin/bots/{bot_id}/keys/{key_id}"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(
        revoked.expect_close(Duration::from_secs(1)).await,
        common::ws::Closed::Code(4001),
        "revocation reaches the other pod within a second"
    );
    kept.send(json!({"type": "ping"})).await;
    kept.expect("pong").await;

    // A person deletes their account through pod a; their socket on pod b closes.
    c.a.user("dora").await;
    let dora_b = c.b.login("dora").await;
    let mut doras = dora_b.connect().await;
    let (st, _) = dora_b
        .api
        .client
        .delete(c.a.url("/api/v1/users/me"))
        .bearer_auth(&dora_b.token)
        .json(&json!({"password": "correct horse"}))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(
        doras.expect_close(Duration::from_secs(1)).await,
        common::ws::Closed::Code(4001)
    );

    // Removing the bot on pod a closes its remaining socket on pod b.
    let (st, _) = root
        .api
        .delete(&format!("/api/v1/admin/bots/{bot_id}"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(
        kept.expect_close(Duration::from_secs(1)).await,
        common::ws::Closed::Code(4001)
    );
}

/// Redis behind Sentinel: two pods on `redis+sentinel://`, a sender on one, a subscriber on the
/// other, and the master killed while messages flow. The sentinel promotes the replica, both
/// pods follow it, and the subscriber gets every message once, in order.
#[tokio::test]
async fn a_sentinel_failover_under_load_loses_and_repeats_nothing() {
    let pg = Postgres::start();
    let mut sentinel = common::services::RedisSentinel::start();
    let config = || {
        let mut c = common::unlimited(confab::config::Config::for_tests(std::path::PathBuf::from(
            "/nonexistent-unused",
        )));
        c.database_url = Some(pg.url.clone());
        c.redis_url = Some(sentinel.url.clone());
        c.jwt_secret = Some("cluster-test-secret-cluster-test-secret".into());
        c
    };
    let a = Server::start(config()).await;
    let b = Server::start(config()).await;
    let alice = a.user("alice").await;
    b.user("bob").await;
    let bob = b.login("bob").await;
    let room = alice.create_room("failover", "public").await;
    bob.join(&room).await;
    let mut watcher = bob.subscribed(&room).await;
    alice.post_message(&room, "before").await;
    assert_eq!(watcher.expect("message").await["seq"], 1, "the bus works");

    // 300 messages over about 6 s from pod a; the master dies after the first second.
    let sender = {
        let alice = alice.clone();
        let room = room.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                alice.post_message(&room, &format!("m{i}")).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    sentinel.kill_master();
    let mut seen = vec![1];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while seen.len() < 301 && tokio::time::Instant::now() < deadline {
        if let Some(m) = watcher.next(Duration::from_secs(1)).await
            && m["type"] == "message"
        {
            seen.push(m["seq"].as_i64().unwrap());
        }
    }
    sender.await.unwrap();
    assert_eq!(
        seen,
        (1..=301).collect::<Vec<i64>>(),
        "every message once, in order, across the failover"
    );
    assert_eq!(
        sentinel.current_master_port(),
        Some(sentinel.replica_port),
        "the sentinel promoted the replica"
    );
    // Both pods are on the new master: a message now crosses live, and both are ready.
    ready_again(&a).await;
    ready_again(&b).await;
    let started = std::time::Instant::now();
    alice.post_message(&room, "after").await;
    assert_eq!(watcher.expect("message").await["seq"], 302);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "live over the new master, not a later gap fill"
    );
    watcher
        .expect_none("message", Duration::from_millis(300))
        .await;
}

/// Presence and connection records expire 15 s after their last renewal; a socket that stays
/// keeps its user online on the other pod well past that (the renewal is one pipelined round
/// trip every 5 s).
#[tokio::test]
async fn a_socket_that_stays_keeps_its_user_online_past_the_records_expiry() {
    let c = two_pods().await;
    let (alice, bob, room) = c.alice_and_bob_in("general").await;
    let _a = alice.subscribed(&room).await;
    let _b = bob.subscribed(&room).await;
    tokio::time::sleep(Duration::from_secs(18)).await;
    let (_, members) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/members"))
        .await;
    assert!(
        members["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["online"] == true),
        "{members}"
    );
    // Bob's connection record (for notifications) is alive in Redis too.
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &c.redis.port.to_string(), "HLEN"])
        .arg(format!("confab:connected:{}", bob.id))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

/// Many subscribes reach pod b at once (a reconnect storm in small): their presence is read in
/// shared batches, and each `subscribed` still lists exactly who is online in that room on the
/// other pod.
#[tokio::test]
async fn subscribes_at_once_each_list_the_users_online_in_their_room() {
    let c = two_pods().await;
    let owner = c.a.user("carol").await;
    let mut rooms = Vec::new();
    for k in 0..4 {
        rooms.push(owner.create_room(&format!("r{k}"), "public").await);
    }
    // User k is online on pod a in rooms 0..=k: room k has users k..=3.
    let mut users = Vec::new();
    let mut held = Vec::new();
    for k in 0..4 {
        let u = c.a.user(&format!("user{k}")).await;
        let mut ws = u.connect().await;
        for room in &rooms[..=k] {
            ws.subscribe(room, None).await;
        }
        users.push(u.id.clone());
        held.push(ws);
    }
    c.b.user("bob").await;
    let bob = c.b.login("bob").await;
    let mut sockets = Vec::new();
    for _ in 0..8 {
        sockets.push(bob.connect().await);
    }
    let answers = sockets.into_iter().map(|mut ws| {
        let rooms = rooms.clone();
        async move {
            for room in &rooms {
                ws.send(json!({"type": "subscribe", "room": room})).await;
            }
            let mut replies = Vec::new();
            for _ in &rooms {
                replies.push(ws.expect_skipping("subscribed").await);
            }
            replies
        }
    });
    for replies in futures::future::join_all(answers).await {
        for reply in replies {
            let k = rooms.iter().position(|r| reply["room"] == *r).unwrap();
            let mut online: Vec<String> = reply["presence"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap().to_string())
                .filter(|u| *u != bob.id)
                .collect();
            online.sort();
            let mut want = users[k..].to_vec();
            want.sort();
            assert_eq!(online, want, "room r{k}: {reply}");
        }
    }
    drop(held);
}

/// Presence is the cluster's: a user's socket in a room on a second pod announces nothing (the
/// user was online already), nor does closing one of the two; the last one going announces
/// offline. (So a pod's sockets reconnecting to the others after it dies announce nothing.)
#[tokio::test]
async fn presence_changes_once_for_the_cluster_not_once_per_pod() {
    let c = two_pods().await;
    let (alice, bob_on_b, room) = c.alice_and_bob_in("general").await;
    let bob_on_a = c.a.login("bob").await;
    let mut watcher = alice.subscribed(&room).await;
    let first = bob_on_a.subscribed(&room).await;
    assert_eq!(watcher.presence_of(&bob_on_a.id).await["status"], "online");

    let mut second = bob_on_b.connect().await;
    let sub = second.subscribe(&room, None).await;
    assert!(
        sub["presence"]
            .as_array()
            .unwrap()
            .contains(&json!(bob_on_b.id)),
        "{sub}"
    );
    watcher
        .expect_none("presence", Duration::from_millis(1500))
        .await;

    drop(first);
    watcher
        .expect_none("presence", Duration::from_millis(1500))
        .await;
    assert!(
        online_in_members(&alice, &room, &bob_on_b.id).await,
        "bob is online on pod b"
    );

    drop(second);
    assert_eq!(watcher.presence_of(&bob_on_b.id).await["status"], "offline");
}
