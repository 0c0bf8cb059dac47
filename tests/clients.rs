//! The client libraries against real servers: the Rust client's README example as written, and
//! both clients (Rust, and TypeScript through node) streaming through nginx while pods are
//! drained and killed: every message acked once and received once, in order.

mod common;

use std::process::Stdio;
use std::time::Duration;

use confab_client::protocol::{RoomId, ServerFrame};
use confab_client::{Client, Event, Options};
use tokio::io::{AsyncBufReadExt, BufReader};

use common::fleet::Fleet;

#[allow(dead_code)]
mod quickstart {
    include!("../crates/confab-client/examples/quickstart.rs");
}

#[tokio::test]
async fn the_rust_client_readme_example_is_the_example_and_runs() {
    let readme = include_str!("../crates/confab-client/README.md");
    let example = include_str!("../crates/confab-client/examples/quickstart.rs");
    let block = readme
        .split("```rust,no_run\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the README has the example");
    assert_eq!(
        block, example,
        "README.md shows examples/quickstart.rs as it is"
    );
    let server = common::Server::embedded().await;
    let seq = quickstart::run(&server.url(""))
        .await
        .expect("the example runs");
    assert_eq!(seq, 1);
}

/// Messages (seqs) an event stream hands on, until `n` have come.
async fn collect(events: &mut confab_client::Events, n: usize) -> Vec<i64> {
    let mut seqs = Vec::new();
    let wait = tokio::time::timeout(Duration::from_secs(60), async {
        while seqs.len() < n {
            match events.recv().await {
                Some(Event::Frame(ServerFrame::Message(m))) => seqs.push(m.seq),
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    assert!(wait.is_ok(), "only {} of {n} messages arrived", seqs.len());
    seqs
}

#[tokio::test]
async fn the_rust_client_loses_and_repeats_nothing_while_pods_are_drained_and_killed() {
    let mut fleet = Fleet::start(2).await;
    let base = format!("http://{}", fleet.addr());
    let alice = fleet.user("alice").await;
    let bob = fleet.user("bob").await;
    let room: RoomId = alice.create_room("stream", "public").await.parse().unwrap();
    let (sender, mut sender_events) = Client::connect(Options::new(&base).token(&alice.token))
        .await
        .expect("alice connects");
    let (receiver, mut events) = Client::connect(Options::new(&base).token(&bob.token))
        .await
        .expect("bob connects");
    assert_eq!(receiver.user().username, "bob");
    let subscribed = receiver.subscribe(room).await.expect("subscribes");
    assert_eq!(subscribed.last_seq, 0);
    // Alice's own events are not read here; the bounded channel must not stall her sends.
    tokio::spawn(async move { while sender_events.recv().await.is_some() {} });

    const TOTAL: usize = 400;
    let mut acks = Vec::new();
    for i in 0..TOTAL {
        let s = sender.clone();
        acks.push(tokio::spawn(async move {
            s.send_with(
                room,
                confab_client::Outgoing {
                    client_id: Some(format!("m{i}")),
                    ..confab_client::Outgoing::new(format!("message {i}"))
                },
            )
            .await
        }));
        if i == 100 {
            fleet.sigterm(0); // drained: its sockets get 1001 with a hint
        }
        if i == 180 {
            fleet.wait_exit(0, Duration::from_secs(30)).await;
            fleet.start_pod(0).await;
        }
        if i == 260 {
            fleet.kill9(1).await; // crashed: no close frame at all
        }
        if i == 340 {
            fleet.start_pod(1).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seqs = Vec::new();
    for a in acks {
        let ack = tokio::time::timeout(Duration::from_secs(60), a)
            .await
            .expect("every send is acked in time")
            .unwrap()
            .expect("acked");
        seqs.push(ack.seq);
    }
    seqs.sort();
    let all: Vec<i64> = (1..=TOTAL as i64).collect();
    assert_eq!(seqs, all, "each message acked once with its own seq");
    let received = collect(&mut events, TOTAL).await;
    assert_eq!(received, all, "bob received each once, in order");
    assert_eq!(
        receiver.cursor(room).await.unwrap().0,
        Some(TOTAL as i64),
        "the cursor to resume from"
    );
    sender.close();
    receiver.close();
}

#[tokio::test]
async fn the_typescript_client_loses_and_repeats_nothing_when_its_pod_is_drained() {
    let mut fleet = Fleet::start(2).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/test/fleet.mjs");
    let mut node = tokio::process::Command::new("node")
        .arg(script)
        .env("CONFAB_URL", format!("http://{}", fleet.addr()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (install it; scripts/test does)");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut result = None;
    let run = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await.expect("node's output") {
            if line == "streaming" {
                tokio::time::sleep(Duration::from_millis(300)).await;
                // Drain both pods in turn: whichever the clients are on, they move.
                fleet.sigterm(0);
                fleet.wait_exit(0, Duration::from_secs(30)).await;
                fleet.start_pod(0).await;
                fleet.sigterm(1);
                fleet.wait_exit(1, Duration::from_secs(30)).await;
                fleet.start_pod(1).await;
            } else if let Some(json) = line.strip_prefix("result ") {
                result = Some(serde_json::from_str::<serde_json::Value>(json).unwrap());
            }
        }
    })
    .await;
    assert!(run.is_ok(), "the node script finished in time");
    let status = node.wait().await.unwrap();
    assert!(status.success(), "the node script failed");
    let result = result.expect("the script printed its result");
    let total = result["total"].as_i64().unwrap();
    let all: Vec<i64> = (1..=total).collect();
    let mut acked: Vec<i64> = serde_json::from_value(result["acked"].clone()).unwrap();
    acked.sort();
    assert_eq!(acked, all, "each message acked once with its own seq");
    let received: Vec<i64> = serde_json::from_value(result["received"].clone()).unwrap();
    assert_eq!(received, all, "received once each, in order");
    let closes: Vec<i64> = serde_json::from_value(result["closes"].clone()).unwrap();
    assert!(
        closes.contains(&1001),
        "the clients were moved by a drain: {closes:?}"
    );
}
