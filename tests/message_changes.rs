//! Protocol v1.1 message features over real sockets, in the embedded shape: `rev` and the
//! changes that converge, reactions, threads, mentions, notifications and pins.

mod common;

use std::time::Duration;

use common::{Postgres, Redis, Server, User, Ws};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Alice owns a public room that Bob has joined; Alice and Bob each have a socket on it.
async fn two_in_a_room(s: &Server) -> (User, User, String) {
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    (alice, bob, room)
}

fn reaction_path(room: &str, seq: i64, emoji: &str) -> String {
    let mut url = reqwest::Url::parse("http://confab/api/v1/rooms").unwrap();
    url.path_segments_mut().unwrap().extend([
        room,
        "messages",
        &seq.to_string(),
        "reactions",
        emoji,
    ]);
    url.path().to_string()
}

async fn history(u: &User, room: &str) -> Vec<Value> {
    let (st, page) = u.api.get(&format!("/api/v1/rooms/{room}/messages")).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    page["messages"].as_array().unwrap().clone()
}

#[tokio::test]
async fn reactions_reach_every_subscriber_and_show_on_the_message() {
    let s = Server::embedded().await;
    let (alice, bob, room) = two_in_a_room(&s).await;
    let mut a = alice.subscribed(&room).await;
    let mut b = bob.subscribed(&room).await;
    let m = alice.post_message(&room, "ship it").await;
    assert_eq!((m["rev"].as_i64(), &m["reactions"]), (Some(1), &json!([])));
    a.expect("message").await;
    b.expect("message").await;

    // Over REST, then the frame: every subscriber (the reacting one included) hears it.
    let (st, body) = bob.api.put(&reaction_path(&room, 1, "👍")).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    for ws in [&mut a, &mut b] {
        let r = ws.expect("reaction").await;
        assert_eq!(
            (&r["emoji"], &r["active"], &r["user"], &r["rev"], &r["seq"]),
            (
                &json!("👍"),
                &json!(true),
                &json!(bob.id),
                &json!(2),
                &json!(1)
            )
        );
    }
    a.send(json!({"type": "react", "room": room, "seq": 1, "emoji": "👍", "active": true}))
        .await;
    for ws in [&mut a, &mut b] {
        let r = ws.expect("reaction").await;
        assert_eq!((&r["user"], &r["rev"]), (&json!(alice.id), &json!(3)));
    }
    // A repeat is 204 and changes nothing: no event, no rev.
    let (st, _) = bob.api.put(&reaction_path(&room, 1, "👍")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    b.expect_none("reaction", Duration::from_millis(300)).await;
    let shown = &history(&bob, &room).await[0];
    assert_eq!(shown["rev"], 3);
    assert_eq!(
        shown["reactions"],
        json!([{"emoji": "👍", "count": 2, "users": [bob.id, alice.id]}])
    );
    // Removing it.
    let (st, _) = bob.api.delete(&reaction_path(&room, 1, "👍")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let r = a.expect("reaction").await;
    assert_eq!((&r["active"], &r["rev"]), (&json!(false), &json!(4)));
    assert_eq!(history(&bob, &room).await[0]["reactions"][0]["count"], 1);
}

#[tokio::test]
async fn bad_reactions_are_refused_with_the_rule_and_change_nothing() {
    let s = Server::embedded().await;
    let (alice, bob, room) = two_in_a_room(&s).await;
    let carol = s.user("carol").await;
    alice.post_message(&room, "hello").await;
    for bad in ["ab", "👍👍", ":Nope:", " "] {
        let (st, body) = bob.api.put(&reaction_path(&room, 1, bad)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("emoji"),
            "{body}"
        );
    }
    let (st, _) = carol.api.put(&reaction_path(&room, 1, "👍")).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "members only");
    let (st, _) = bob.api.put(&reaction_path(&room, 7, "👍")).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "no such message");
    for i in 0..20 {
        let (st, _) = bob
            .api
            .put(&reaction_path(&room, 1, &format!(":e{i}:")))
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
    }
    let (st, body) = bob.api.put(&reaction_path(&room, 1, ":e20:")).await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        history(&bob, &room).await[0]["reactions"]
            .as_array()
            .unwrap()
            .len(),
        20
    );
    // On the socket: an error frame naming the field, and the socket stays open.
    let mut ws = bob.subscribed(&room).await;
    ws.send(json!({"type": "react", "room": room, "seq": 1, "emoji": "nope", "active": true}))
        .await;
    let e = ws.expect("error").await;
    assert_eq!(e["code"], "bad_request");
    assert!(e["message"].as_str().unwrap().contains("emoji"));
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
    // A deleted message takes no reaction.
    let (st, _) = alice
        .api
        .delete(&format!("/api/v1/rooms/{room}/messages/1"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = bob.api.put(&reaction_path(&room, 1, "👍")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn since_rev_replays_the_changes_missed_while_away_in_rev_order() {
    let s = Server::embedded().await;
    let (alice, bob, room) = two_in_a_room(&s).await;
    for body in ["one", "two", "three"] {
        alice.post_message(&room, body).await;
    }
    let mut away = bob.connect().await;
    let sub = away.subscribe(&room, None).await;
    assert_eq!(
        (sub["last_seq"].as_i64(), sub["rev"].as_i64()),
        (Some(3), Some(3))
    );
    drop(away);

    // While Bob is away: an edit, a reaction, a delete, and a new message.
    let (st, _) = alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}/messages/2"),
            json!({"body": "two!"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    alice.api.put(&reaction_path(&room, 1, "🎉")).await;
    alice
        .api
        .delete(&format!("/api/v1/rooms/{room}/messages/3"))
        .await;
    alice.post_message(&room, "four").await;

    let mut back = bob.connect().await;
    back.send(json!({"type": "subscribe", "room": room, "since": 3, "since_rev": 3}))
        .await;
    let sub = back.expect("subscribed").await;
    assert_eq!(
        (&sub["recovered"], &sub["rev"], &sub["last_seq"]),
        (&json!(true), &json!(7), &json!(4))
    );
    let missed = back.expect("message").await;
    assert_eq!(missed["seq"], 4);
    let mut updates = Vec::new();
    for _ in 0..3 {
        let u = back.expect("message_updated").await;
        updates.push((u["seq"].as_i64().unwrap(), u["rev"].as_i64().unwrap()));
    }
    assert_eq!(updates, vec![(2, 4), (1, 5), (3, 6)], "in rev order");
    back.expect_none("message_updated", Duration::from_millis(300))
        .await;

    // The same over REST, paged.
    let (st, page) = bob
        .api
        .get(&format!("/api/v1/rooms/{room}/changes?since_rev=3&limit=2"))
        .await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert_eq!((&page["rev"], &page["has_more"]), (&json!(7), &json!(true)));
    let revs: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["rev"].as_i64().unwrap())
        .collect();
    assert_eq!(revs, vec![4, 5]);
    let (_, rest) = bob
        .api
        .get(&format!("/api/v1/rooms/{room}/changes?since_rev=5"))
        .await;
    assert_eq!(rest["has_more"], false);
    assert_eq!(rest["messages"].as_array().unwrap().len(), 2);
    let (st, _) = bob
        .api
        .get(&format!("/api/v1/rooms/{room}/changes?since_rev=-1"))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // A rev the room never reached is not from its history: resync.
    let mut lost = bob.connect().await;
    lost.send(json!({"type": "subscribe", "room": room, "since": 4, "since_rev": 1000}))
        .await;
    let sub = lost.expect("subscribed").await;
    assert_eq!((&sub["recovered"], &sub["rev"]), (&json!(false), &json!(7)));
}

#[tokio::test]
async fn thread_replies_update_their_root_and_page_in_order() {
    let s = Server::embedded().await;
    let (alice, bob, room) = two_in_a_room(&s).await;
    let mut a = alice.subscribed(&room).await;
    alice.post_message(&room, "root").await;
    a.expect("message").await;
    let (st, reply) = bob
        .api
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": "first reply", "thread": 1}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{reply}");
    assert_eq!((&reply["thread"], &reply["rev"]), (&json!(1), &json!(2)));
    let live = a.expect("message").await;
    assert_eq!(live["thread"], 1);
    let root = a.expect("message_updated").await;
    assert_eq!(root["seq"], 1);
    assert_eq!(
        root["rev"], 2,
        "the reply and its root's summary are one change"
    );
    let summary = &root["thread_summary"];
    assert_eq!(
        (
            &summary["reply_count"],
            &summary["last_reply_seq"],
            &summary["participants"]
        ),
        (&json!(1), &json!(2), &json!([bob.id]))
    );
    assert!(summary["last_reply_at"].is_string());
    // Over the socket too.
    a.send(
        json!({"type": "message", "room": room, "body": "second", "thread": 1, "client_id": "t2"}),
    )
    .await;
    a.expect("ack").await;
    alice.post_message(&room, "top level").await;

    let (st, page) = bob
        .api
        .get(&format!("/api/v1/rooms/{room}/threads/1?limit=1"))
        .await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert_eq!(page["root"]["thread_summary"]["reply_count"], 2);
    assert_eq!(
        (&page["messages"][0]["seq"], &page["has_more"]),
        (&json!(2), &json!(true))
    );
    let (_, next) = bob
        .api
        .get(&format!("/api/v1/rooms/{room}/threads/1?after=2"))
        .await;
    assert_eq!(next["messages"][0]["seq"], 3);
    assert_eq!(next["has_more"], false);
    let (_, lonely) = bob
        .api
        .get(&format!("/api/v1/rooms/{room}/threads/4"))
        .await;
    assert_eq!(
        (&lonely["messages"], &lonely["root"]["thread_summary"]),
        (&json!([]), &Value::Null)
    );
    for (path, why) in [
        ("threads/2", "a reply is not a root"),
        ("threads/99", "no such seq"),
    ] {
        let (st, _) = bob.api.get(&format!("/api/v1/rooms/{room}/{path}")).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{why}");
    }
    // A reply to a reply, to a missing or deleted message: 400, and nothing committed.
    alice
        .api
        .delete(&format!("/api/v1/rooms/{room}/messages/4"))
        .await;
    for root in [2, 99, 4, 0] {
        let (st, body) = bob
            .api
            .post(
                &format!("/api/v1/rooms/{room}/messages"),
                json!({"body": "x", "thread": root}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "thread {root}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("thread")
        );
    }
    let (_, r) = bob.api.get(&format!("/api/v1/rooms/{room}")).await;
    assert_eq!(r["last_seq"], 4);
}

#[tokio::test]
async fn mentions_are_counted_and_notify_sockets_elsewhere() {
    let s = Server::embedded().await;
    let (alice, bob, room) = two_in_a_room(&s).await;
    let carol = s.user("carol").await;
    let elsewhere = bob.create_room("elsewhere", "public").await;
    // Bob's socket watches another room; his second socket watches this one.
    let mut away = bob.subscribed(&elsewhere).await;
    let mut here = bob.subscribed(&room).await;

    let m = alice
        .post_message(&room, "@bob and @carol, see @alice.")
        .await;
    assert_eq!(m["mentions"], json!([bob.id]), "members only: {m}");
    assert_eq!(m["mentions_room"], false);
    let n = away.expect("notification").await;
    assert_eq!(
        (&n["reason"], &n["room"]),
        (&json!("mention"), &json!(room))
    );
    assert_eq!(n["message"]["seq"], 1);
    here.expect("message").await;
    here.expect_none("notification", Duration::from_millis(300))
        .await;

    alice.post_message(&room, "@room lunch").await;
    assert_eq!(away.expect("notification").await["reason"], "mention");
    // Bob's own @room tells others, not him.
    bob.post_message(&room, "@room thanks").await;
    away.expect_none("notification", Duration::from_millis(300))
        .await;

    let mentions = |rooms: &Value| {
        rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == json!(room))
            .map(|r| r["mentions"].clone())
            .unwrap()
    };
    let (_, rooms) = bob.api.get("/api/v1/rooms").await;
    assert_eq!(
        mentions(&rooms),
        0,
        "Bob's own message moved his read marker"
    );
    let (_, rooms) = alice.api.get("/api/v1/rooms").await;
    assert_eq!(mentions(&rooms), 1, "Bob's @room counts for Alice");
    alice.post_message(&room, "@bob again").await;
    let (_, rooms) = bob.api.get("/api/v1/rooms").await;
    assert_eq!(mentions(&rooms), 1);
    let (_, rooms) = alice.api.get("/api/v1/rooms").await;
    assert_eq!(mentions(&rooms), 0, "her own message moved her read marker");
    let (st, _) = bob
        .api
        .post(&format!("/api/v1/rooms/{room}/read"), json!({"seq": 4}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, rooms) = bob.api.get("/api/v1/rooms").await;
    assert_eq!(mentions(&rooms), 0);
    drop(carol);
}

#[tokio::test]
async fn direct_messages_and_thread_replies_notify_the_people_concerned() {
    let s = Server::embedded().await;
    let (alice, bob, room) = two_in_a_room(&s).await;
    let mut bob_away = bob.connect().await;
    let mut alice_away = alice.connect().await;
    let (st, dm) = alice
        .api
        .post("/api/v1/dms", json!({"user_id": bob.id}))
        .await;
    assert!(st.is_success(), "{dm}");
    let dm = dm["id"].as_str().unwrap().to_string();
    alice.post_message(&dm, "psst").await;
    let n = bob_away.expect_skipping("notification").await;
    assert_eq!((&n["reason"], &n["room"]), (&json!("dm"), &json!(dm)));
    alice_away
        .expect_none("notification", Duration::from_millis(300))
        .await;

    // Bob replies in Alice's thread: Alice is told; then Alice replies: Bob is told.
    alice.post_message(&room, "root").await;
    bob.api
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": "reply", "thread": 1}),
        )
        .await;
    let n = alice_away.expect_skipping("notification").await;
    assert_eq!(n["reason"], "thread_reply");
    assert_eq!(n["message"]["thread"], 1);
    alice
        .api
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": "answer", "thread": 1}),
        )
        .await;
    let n = bob_away.expect_skipping("notification").await;
    assert_eq!(
        (&n["reason"], &n["message"]["body"]),
        (&json!("thread_reply"), &json!("answer"))
    );
}

#[tokio::test]
async fn pins_are_for_moderators_and_listed_newest_first() {
    let s = Server::embedded().await;
    let (alice, bob, room) = two_in_a_room(&s).await;
    let mut b = bob.subscribed(&room).await;
    for body in ["a", "b"] {
        alice.post_message(&room, body).await;
        b.expect("message").await;
    }
    let (st, _) = bob.api.put(&format!("/api/v1/rooms/{room}/pins/1")).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "a member may not pin");
    for seq in [1, 2] {
        let (st, body) = alice
            .api
            .put(&format!("/api/v1/rooms/{room}/pins/{seq}"))
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
        let u = b.expect("message_updated").await;
        assert_eq!((&u["seq"], &u["pinned"]), (&json!(seq), &json!(true)));
    }
    let (st, again) = alice.api.put(&format!("/api/v1/rooms/{room}/pins/2")).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{again}");
    b.expect_none("message_updated", Duration::from_millis(300))
        .await;
    let (st, pins) = bob.api.get(&format!("/api/v1/rooms/{room}/pins")).await;
    assert_eq!(st, StatusCode::OK);
    let seqs: Vec<i64> = pins["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 1]);
    let (st, _) = alice
        .api
        .delete(&format!("/api/v1/rooms/{room}/pins/2"))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(b.expect("message_updated").await["pinned"], false);
    let (st, _) = alice.api.put(&format!("/api/v1/rooms/{room}/pins/9")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Private rooms stay hidden from outsiders.
    let carol = s.user("carol").await;
    let secret = alice.create_room("secret", "private").await;
    let (st, _) = carol.api.get(&format!("/api/v1/rooms/{secret}/pins")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let mut w: Ws = carol.connect().await;
    w.send(json!({"type": "ping"})).await;
    w.expect("pong").await;
}

/// Many sockets resume one room at once, each from its own place: the pod reads their
/// replays and changes in shared batches, and each socket still gets exactly the messages
/// after its `since` in order, then exactly the changes to the messages it had, in rev order.
async fn sockets_resuming_together_each_get_exactly_what_they_missed(s: &Server) {
    let (alice, bob, room) = two_in_a_room(s).await;
    for i in 1..=30 {
        alice.post_message(&room, &format!("m{i}")).await;
    }
    // Revs 31-33: edits of 5, 12 and 20; rev 34: message 31.
    for seq in [5, 12, 20] {
        let (st, _) = alice
            .api
            .patch(
                &format!("/api/v1/rooms/{room}/messages/{seq}"),
                json!({"body": format!("m{seq}!")}),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
    }
    alice.post_message(&room, "m31").await;

    let mut sockets = Vec::new();
    for _ in 0..40 {
        sockets.push(bob.connect().await);
    }
    let resumes = sockets.into_iter().enumerate().map(|(i, mut ws)| {
        let room = room.clone();
        async move {
            // The socket had messages 1..=since, when the room's rev was `since`.
            let since = (i % 31) as i64;
            ws.send(json!({"type": "subscribe", "room": room, "since": since, "since_rev": since}))
                .await;
            let sub = ws.expect("subscribed").await;
            let mut got = Vec::new();
            loop {
                let Some(v) = ws.next(Duration::from_millis(500)).await else {
                    break;
                };
                if v["type"] == "message" || v["type"] == "message_updated" {
                    got.push((
                        v["type"].as_str().unwrap().to_string(),
                        v["seq"].as_i64().unwrap(),
                        v["body"].as_str().unwrap().to_string(),
                    ));
                }
            }
            (since, sub, got)
        }
    });
    for (since, sub, got) in futures::future::join_all(resumes).await {
        assert_eq!(
            (&sub["recovered"], &sub["last_seq"], &sub["rev"]),
            (&json!(true), &json!(31), &json!(34)),
            "since {since}"
        );
        let body = |seq: i64| {
            if [5, 12, 20].contains(&seq) {
                format!("m{seq}!")
            } else {
                format!("m{seq}")
            }
        };
        let mut want: Vec<(String, i64, String)> = (since + 1..=31)
            .map(|seq| ("message".to_string(), seq, body(seq)))
            .collect();
        want.extend(
            [5, 12, 20]
                .into_iter()
                .filter(|&seq| seq <= since)
                .map(|seq| ("message_updated".to_string(), seq, body(seq))),
        );
        assert_eq!(got, want, "since {since}");
    }
}

#[tokio::test]
async fn sockets_resuming_together_each_get_exactly_what_they_missed_embedded() {
    let (mut config, dir) = common::embedded();
    config.max_connections_per_user = 40;
    let s = Server::start_with(config, Some(dir)).await;
    sockets_resuming_together_each_get_exactly_what_they_missed(&s).await;
}

#[tokio::test]
async fn sockets_resuming_together_each_get_exactly_what_they_missed_on_postgres() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let mut config = common::cluster(&pg, &redis);
    config.max_connections_per_user = 40;
    let s = Server::start(config).await;
    sockets_resuming_together_each_get_exactly_what_they_missed(&s).await;
}
