//! Many pods, no lost messages: three confab processes (the real binary) on one PostgreSQL and
//! one Redis behind nginx, and the delivery checker (`common/checker.rs`) writing, reading and
//! reconnecting through nginx while pods are restarted, killed, and the services go away.
//! Each test ends with the checker's verdict against the store: every acked message stored once
//! at its acked seq; every subscriber got each room's messages once, in order, with no gap.

mod common;

use std::time::{Duration, Instant};

use common::User;
use common::checker::{self, Load};
use common::fleet::Fleet;

async fn people(fleet: &Fleet, writers: usize, readers: usize) -> (Vec<User>, Vec<User>) {
    let mut w = Vec::new();
    for i in 0..writers {
        w.push(fleet.user(&format!("writer{i}")).await);
    }
    let mut r = Vec::new();
    for i in 0..readers {
        r.push(fleet.user(&format!("reader{i}")).await);
    }
    (w, r)
}

async fn rooms(owner: &User, others: &[&User], n: usize) -> Vec<String> {
    let mut rooms = Vec::new();
    for i in 0..n {
        let id = owner.create_room(&format!("room{i}"), "public").await;
        for u in others {
            u.join(&id).await;
        }
        rooms.push(id);
    }
    rooms
}

/// A fleet of three with `writers` writers and `readers` readers in two rooms.
async fn setup(writers: usize, readers: usize) -> (Fleet, Vec<User>, Vec<User>, Vec<String>) {
    let fleet = Fleet::start(3).await;
    let (w, r) = people(&fleet, writers, readers).await;
    let others: Vec<&User> = w.iter().skip(1).chain(r.iter()).collect();
    let rooms = rooms(&w[0], &others, 2).await;
    (fleet, w, r, rooms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_three_pods_share_one_gapless_order() {
    let (fleet, writers, readers, rooms) = setup(6, 3).await;
    let load = Load {
        per_writer: 80,
        interval: Duration::from_millis(5),
    };
    let reports = checker::run(fleet.addr(), &rooms, &writers, &readers, load, async {}).await;
    let v = checker::verify(&readers[0], &rooms, &reports).await;
    assert_eq!(v.acked, 6 * 80);
    assert_eq!(v.delivered, 9 * 6 * 80, "each of 9 subscribers got all 480");
    assert_eq!(v.reconnects, 0, "{:?}", v.closes);
    // nginx spread the sockets over all three pods.
    for i in 0..3 {
        let m = reqwest::get(format!(
            "http://127.0.0.1:{}/metrics",
            fleet.pods[i].metrics_port
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        let opened: f64 = m
            .lines()
            .filter(|l| l.starts_with("confab_ws_connections_opened_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(opened >= 1.0, "pod {i} got no socket");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_loses_nothing() {
    let (mut fleet, writers, readers, rooms) = setup(6, 2).await;
    let load = Load {
        per_writer: 400,
        interval: Duration::from_millis(20),
    };
    let mut exits = Vec::new();
    let mut not_ready_first = Vec::new();
    let addr = fleet.addr();
    let during = async {
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            fleet.sigterm(i);
            // Readiness turns 503 during the drain delay, before sockets close.
            let t = Instant::now();
            let mut saw_503 = false;
            while t.elapsed() < Duration::from_millis(900) {
                if fleet.readyz(i).await == Some(503) {
                    saw_503 = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            not_ready_first.push(saw_503);
            exits.push(fleet.wait_exit(i, Duration::from_secs(30)).await);
            fleet.start_pod(i).await;
        }
    };
    let reports = checker::run(addr, &rooms, &writers, &readers, load, during).await;
    let v = checker::verify(&readers[0], &rooms, &reports).await;
    assert_eq!(v.acked, 6 * 400);
    assert_eq!(exits, [true, true, true], "each pod exits 0 after draining");
    assert_eq!(
        not_ready_first,
        [true, true, true],
        "/readyz is 503 while draining"
    );
    let drained: Vec<_> = v.closes.iter().filter(|(c, _)| *c == 1001).collect();
    assert!(
        !drained.is_empty(),
        "clients saw 1001 closes: {:?}",
        v.closes
    );
    assert!(
        drained.iter().all(|(_, r)| r.contains("retry_after_ms=")),
        "every 1001 carries a reconnect hint"
    );
    assert!(
        v.longest_outage < Duration::from_secs(5),
        "no client waited long to get back: {:?}",
        v.longest_outage
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acked() {
    let (mut fleet, writers, readers, rooms) = setup(6, 2).await;
    let load = Load {
        per_writer: 200,
        interval: Duration::from_millis(15),
    };
    let addr = fleet.addr();
    let during = async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        fleet.kill9(1).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        fleet.start_pod(1).await;
    };
    let reports = checker::run(addr, &rooms, &writers, &readers, load, during).await;
    let v = checker::verify(&readers[0], &rooms, &reports).await;
    // Unacked sends in flight at the kill were resent with the same client_id: each was
    // stored once (verify checks), and all were acked in the end.
    assert_eq!(v.acked, 6 * 200);
    assert!(v.reconnects > 0, "the killed pod's clients reconnected");
}

enum Service {
    Redis,
    Postgres,
}

/// 4 writers and 2 readers on three pods while `service` is stopped for `down` under load:
/// the verdict, and each pod's `/readyz` status during the outage.
async fn through_an_outage(
    service: Service,
    down: Duration,
) -> (checker::Verdict, Vec<Option<u16>>) {
    let (mut fleet, writers, readers, rooms) = setup(4, 2).await;
    let load = Load {
        per_writer: 200,
        interval: Duration::from_millis(15),
    };
    let addr = fleet.addr();
    let mut ready_during_outage = Vec::new();
    let during = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        match service {
            Service::Redis => fleet.redis.stop(),
            Service::Postgres => fleet.pg.stop(),
        }
        tokio::time::sleep(down).await;
        for i in 0..3 {
            ready_during_outage.push(fleet.readyz(i).await);
        }
        match service {
            Service::Redis => fleet.redis.launch(),
            Service::Postgres => fleet.pg.launch(),
        }
        for i in 0..3 {
            fleet.wait_ready(i, Duration::from_secs(30)).await;
        }
    };
    let reports = checker::run(addr, &rooms, &writers, &readers, load, during).await;
    let v = checker::verify(&readers[0], &rooms, &reports).await;
    (v, ready_during_outage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_loses_nothing() {
    let (v, ready) = through_an_outage(Service::Redis, Duration::from_millis(2500)).await;
    assert_eq!(
        v.acked,
        4 * 200,
        "sends kept working while the bus was down"
    );
    assert_eq!(ready, [Some(503); 3], "/readyz reflects the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_fails_fast_and_recovers_by_itself() {
    let (v, ready) = through_an_outage(Service::Postgres, Duration::from_millis(3000)).await;
    assert_eq!(
        v.acked,
        4 * 200,
        "every message was acked once the store was back"
    );
    assert!(
        v.unavailable > 0,
        "sends during the outage were refused with `unavailable`, not left hanging"
    );
    assert_eq!(ready, [Some(503); 3], "/readyz reflects the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_a_killed_pod_go_offline_for_others_within_20_seconds() {
    let mut fleet = Fleet::start(3).await;
    let alice = fleet.user("alice").await;
    let bob = fleet.user("bob").await;
    let room = alice.create_room("lobby", "public").await;
    bob.join(&room).await;
    // Alice on pod 0, Bob on pod 1, directly.
    let mut a = common::Ws::connect(fleet.pod_addr(0), Some(&alice.token))
        .await
        .unwrap();
    a.expect("hello").await;
    a.subscribe(&room, None).await;
    let mut b = common::Ws::connect(fleet.pod_addr(1), Some(&bob.token))
        .await
        .unwrap();
    b.expect("hello").await;
    b.subscribe(&room, None).await;
    let online = a.presence_of(&bob.id).await;
    assert_eq!(online["status"], "online");
    let killed = Instant::now();
    fleet.kill9(1).await;
    loop {
        let left = Duration::from_secs(25).saturating_sub(killed.elapsed());
        let f = a.next(left).await.expect("Bob goes offline for Alice");
        if f["type"] == "presence" && f["user"] == bob.id.as_str() {
            assert_eq!(f["status"], "offline");
            break;
        }
    }
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(21),
        "offline after {took:?}; the bound is 15 s of entry lifetime + a 5 s sweep"
    );
    // The presence snapshot agrees, and Alice herself is still online.
    let (_, members) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/members"))
        .await;
    for m in members["members"].as_array().unwrap() {
        let expect_online = m["user"]["id"] == alice.id.as_str();
        assert_eq!(m["online"], expect_online, "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_over_a_redis_cluster_with_sharded_pubsub() {
    let cluster = common::services::RedisCluster::start();
    let fleet = Fleet::start_with(
        3,
        &[
            ("CONFAB_REDIS_URL", cluster.urls.as_str()),
            ("CONFAB_REDIS_CLUSTER", "true"),
        ],
    )
    .await;
    let (writers, readers) = people(&fleet, 6, 3).await;
    let others: Vec<&User> = writers.iter().skip(1).chain(readers.iter()).collect();
    // Several rooms, so their channels land on different shards.
    let rooms = rooms(&writers[0], &others, 6).await;
    let load = Load {
        per_writer: 60,
        interval: Duration::from_millis(5),
    };
    let reports = checker::run(fleet.addr(), &rooms, &writers, &readers, load, async {}).await;
    let v = checker::verify(&readers[0], &rooms, &reports).await;
    assert_eq!(v.acked, 6 * 60);
    assert_eq!(v.delivered, 9 * 6 * 60);
    assert_eq!(v.reconnects, 0, "{:?}", v.closes);
    // The traffic went through sharded channels on the cluster's nodes.
    let mut sharded = 0;
    for url in cluster.urls.split(',') {
        let port = url.rsplit(':').next().unwrap();
        let out = std::process::Command::new("redis-cli")
            .args(["-p", port, "pubsub", "shardchannels"])
            .output()
            .unwrap();
        sharded += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("confab:"))
            .count();
    }
    assert!(sharded >= 1, "rooms are subscribed as sharded channels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_cost_bounded_memory_and_resume_losing_nothing() {
    use futures::{SinkExt, StreamExt};
    use serde_json::json;
    use tokio_tungstenite::tungstenite::Message;

    const SLOW: usize = 20;
    const MESSAGES: usize = 1000;
    // A short outbound queue, so that the queue (not the kernel's socket buffers, which hold
    // a few MB per socket) is what fills first.
    let fleet = Fleet::start_with(
        3,
        &[
            ("CONFAB_MAX_CONNECTIONS_PER_USER", "100"),
            ("CONFAB_OUTBOUND_QUEUE", "64"),
        ],
    )
    .await;
    let alice = fleet.user("alice").await;
    let room = alice.create_room("flood", "public").await;
    let pod = fleet.pod_addr(0);
    // Sockets with a tiny receive buffer that subscribe and then never read.
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let stream = sock.connect(pod).await.unwrap();
        let req = format!("ws://{pod}/ws?token={}", alice.token);
        let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
        let sub = json!({"type": "subscribe", "room": room, "since": 0});
        ws.send(Message::Text(sub.to_string().into()))
            .await
            .unwrap();
        slow.push(ws);
    }
    // A reader that keeps up, on the same pod.
    let mut fast = common::Ws::connect(pod, Some(&alice.token)).await.unwrap();
    fast.expect("hello").await;
    fast.subscribe(&room, Some(0)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, rss_before) = fleet.memory_kib(0);

    // 1000 messages of 8 KB: 8 MB of frames for each of the 20 slow sockets if nothing were
    // bounded (160 MB in all).
    let mut writer = common::Ws::connect(pod, Some(&alice.token)).await.unwrap();
    writer.expect("hello").await;
    let body = "z".repeat(8_000);
    let mut fast_seen = 0i64;
    for round in 0..MESSAGES / 20 {
        for i in 0..20 {
            writer
                .send(json!({"type": "message", "room": room, "body": body, "client_id": format!("f{round}-{i}")}))
                .await;
        }
        for _ in 0..20 {
            writer.expect("ack").await;
        }
        // The fast reader keeps getting everything, in order, while the slow ones stall.
        while fast_seen < ((round + 1) * 20) as i64 {
            let m = fast.expect("message").await;
            fast_seen += 1;
            assert_eq!(m["seq"], fast_seen);
        }
    }
    let (peak, rss_after) = fleet.memory_kib(0);
    let grew_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    let peak_grew_mib = peak.saturating_sub(rss_before) as f64 / 1024.0;
    println!("slow readers: RSS grew {grew_mib:.1} MiB (peak +{peak_grew_mib:.1} MiB)");
    // The stated bound (docs/reliability.md): frames are shared between sockets, and a slow
    // socket holds at most --outbound-queue of them plus its write buffer (128 KiB) before it
    // is closed, so 20 stalled readers cost well under 2 MiB each.
    assert!(
        peak_grew_mib < 40.0,
        "20 stalled readers grew the pod by {peak_grew_mib:.1} MiB"
    );
    // Every slow socket was closed as a slow consumer...
    let metrics = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        fleet.pods[0].metrics_port
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics.contains(&format!("confab_slow_consumers_total {SLOW}")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("slow_consumers"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // ...and, reading what reached it (in order) until the 1008 close, or the reset of a
    // socket whose close frame could not even be written, resumes with since losing nothing.
    let readers: Vec<_> = slow
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut last = 0i64;
                loop {
                    match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                            if v["type"] == "message" {
                                assert_eq!(v["seq"], last + 1, "in order before the close");
                                last += 1;
                            }
                        }
                        Ok(Some(Ok(Message::Close(Some(c))))) => {
                            assert_eq!(u16::from(c.code), 1008);
                            break;
                        }
                        Ok(Some(Ok(_))) => {}
                        Ok(None) | Ok(Some(Err(_))) => break,
                        Err(_) => panic!("a slow socket was left open"),
                    }
                }
                last
            })
        })
        .collect();
    for r in readers {
        let last = r.await.expect("a slow socket read to its close");
        assert!(last < MESSAGES as i64, "the socket was cut before the end");
        let mut again = common::Ws::connect(pod, Some(&alice.token)).await.unwrap();
        again.expect("hello").await;
        let sub = again.subscribe(&room, Some(last)).await;
        assert_ne!(sub["recovered"], false, "resumed from {last}");
        for seq in last + 1..=MESSAGES as i64 {
            let m = again.expect("message").await;
            assert_eq!(m["seq"], seq);
        }
    }
}
