//! The delivery checker: clients that write with `client_id`s, subscribe to every room, and
//! reconnect with `since` whenever their socket ends (honouring a draining pod's hint), and a
//! final check against the store that every acked message was stored once at the seq of its
//! ack, and that every subscriber received each room's messages exactly once, in `seq` order,
//! over the whole range it followed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::User;

/// What to run.
#[derive(Clone)]
pub struct Load {
    /// Messages each writer sends.
    pub per_writer: usize,
    /// Pause between one writer's sends.
    pub interval: Duration,
}

/// What one client saw.
#[derive(Default, Debug)]
pub struct ClientReport {
    pub user: String,
    /// client_id -> (room, seq) from its acks.
    pub acked: HashMap<String, (String, i64)>,
    /// room -> seqs received, in arrival order.
    pub received: HashMap<String, Vec<i64>>,
    /// room -> the last seq when the client first subscribed (it follows from there).
    pub started_at: HashMap<String, i64>,
    pub reconnects: usize,
    /// The longest time from a socket ending to the next `hello`.
    pub longest_outage: Duration,
    /// Close codes and reasons seen.
    pub closes: Vec<(u16, String)>,
    /// Sends refused with `unavailable` (tried again later).
    pub unavailable: usize,
    /// Messages read from history because a resume missed more than the server replays
    /// (`recovered: false`), as the protocol tells clients to.
    pub paged: usize,
    /// Protocol violations seen live (gap, duplicate, recovered:false).
    pub violations: Vec<String>,
}

/// The verdict over all clients.
#[derive(Debug)]
pub struct Verdict {
    pub acked: usize,
    pub delivered: usize,
    pub reconnects: usize,
    pub longest_outage: Duration,
    pub closes: Vec<(u16, String)>,
    pub unavailable: usize,
    pub paged: usize,
}

/// Runs `writers` (each also a subscriber) and `readers` against `addr` on `rooms` until every
/// writer's messages are acked and every client has received up to each room's last seq.
/// `during` runs alongside (the fault to inject) and must finish before the check.
pub async fn run<F>(
    addr: SocketAddr,
    rooms: &[String],
    writers: &[User],
    readers: &[User],
    load: Load,
    during: F,
) -> Vec<ClientReport>
where
    F: std::future::Future<Output = ()>,
{
    // Where each room stands now: subscribers follow from here.
    let start: HashMap<String, i64> = {
        let mut m = HashMap::new();
        for r in rooms {
            m.insert(r.clone(), last_seq(&writers[0], r).await);
        }
        m
    };
    let (target_tx, target_rx) = watch::channel::<Option<HashMap<String, i64>>>(None);
    let mut tasks = Vec::new();
    let mut writer_done = Vec::new();
    for (i, u) in writers.iter().chain(readers).enumerate() {
        let is_writer = i < writers.len();
        let done = Arc::new(AtomicBool::new(!is_writer));
        writer_done.push(done.clone());
        let client = Client {
            addr,
            user: u.clone(),
            rooms: rooms.to_vec(),
            load: if is_writer { Some(load.clone()) } else { None },
            cursor: start.clone(),
            report: ClientReport {
                user: u.name.clone(),
                started_at: start.clone(),
                ..Default::default()
            },
            unacked: BTreeMap::new(),
            retry_at: HashMap::new(),
            done,
            target: target_rx.clone(),
        };
        tasks.push(tokio::spawn(client.run()));
    }
    during.await;
    // When every writer is done, the target is each room's last seq in the store.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !writer_done.iter().all(|d| d.load(Ordering::SeqCst)) {
        assert!(
            Instant::now() < deadline,
            "writers did not get every message acked within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut target = HashMap::new();
    for r in rooms {
        target.insert(r.clone(), last_seq(&writers[0], r).await);
    }
    target_tx.send(Some(target)).unwrap();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("every client catches up within 60 s")
                .expect("client task"),
        );
    }
    reports
}

/// Checks the reports against the store; panics naming the first broken guarantee.
pub async fn verify(reader: &User, rooms: &[String], reports: &[ClientReport]) -> Verdict {
    let mut stored: HashMap<String, Vec<Value>> = HashMap::new();
    for r in rooms {
        stored.insert(r.clone(), history(reader, r).await);
    }
    // The store: gapless seqs, each client_id once.
    let mut by_client_id: HashMap<String, (String, i64)> = HashMap::new();
    for (room, msgs) in &stored {
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(
                m["seq"].as_i64().unwrap(),
                i as i64 + 1,
                "room {room}: seqs in the store have a gap"
            );
            if let Some(cid) = m["client_id"].as_str() {
                let key = format!("{}/{cid}", m["user"].as_str().unwrap());
                let seq = m["seq"].as_i64().unwrap();
                if let Some(prev) = by_client_id.insert(key.clone(), (room.clone(), seq)) {
                    panic!("{key} stored twice: {prev:?} and {room}/{seq}");
                }
            }
        }
    }
    let mut acked = 0;
    let mut delivered = 0;
    let mut reconnects = 0;
    let mut longest = Duration::ZERO;
    let mut closes = Vec::new();
    let mut unavailable = 0;
    let mut paged = 0;
    for rep in reports {
        assert!(
            rep.violations.is_empty(),
            "{}: {:?}",
            rep.user,
            rep.violations
        );
        // Acked means durable, at the acked seq.
        let user_id = &reader_id_of(rep, &stored);
        for (cid, (room, seq)) in &rep.acked {
            let m = &stored[room][(*seq - 1) as usize];
            assert_eq!(
                m["client_id"].as_str(),
                Some(cid.as_str()),
                "{}: ack of {cid} said {room}/{seq}, the store has {m}",
                rep.user
            );
            if let Some(uid) = user_id {
                assert_eq!(m["user"].as_str(), Some(uid.as_str()));
            }
            acked += 1;
        }
        // Every subscriber got every message of its range, once, in order.
        for room in rooms {
            let from = rep.started_at[room];
            let to = stored[room].len() as i64;
            let expected: Vec<i64> = (from + 1..=to).collect();
            let got = rep.received.get(room).cloned().unwrap_or_default();
            if got != expected {
                let missing: Vec<i64> = expected
                    .iter()
                    .filter(|s| !got.contains(s))
                    .copied()
                    .collect();
                panic!(
                    "{} in room {room}: received {} of {} messages ({}..={to}); missing {:?}",
                    rep.user,
                    got.len(),
                    expected.len(),
                    from + 1,
                    &missing[..missing.len().min(20)]
                );
            }
            delivered += got.len();
        }
        reconnects += rep.reconnects;
        longest = longest.max(rep.longest_outage);
        closes.extend(rep.closes.iter().cloned());
        unavailable += rep.unavailable;
        paged += rep.paged;
    }
    Verdict {
        acked,
        delivered,
        reconnects,
        longest_outage: longest,
        closes,
        unavailable,
        paged,
    }
}

/// The user id behind a report's acks (from any acked message), to check authorship.
fn reader_id_of(rep: &ClientReport, stored: &HashMap<String, Vec<Value>>) -> Option<String> {
    let (_, (room, seq)) = rep.acked.iter().next()?;
    stored[room][(*seq - 1) as usize]["user"]
        .as_str()
        .map(str::to_string)
}

pub async fn last_seq(user: &User, room: &str) -> i64 {
    let (s, r) = user.api.get(&format!("/api/v1/rooms/{room}")).await;
    assert!(s.is_success(), "room {room}: {s} {r}");
    r["last_seq"].as_i64().unwrap()
}

/// The whole history of a room, in order.
pub async fn history(user: &User, room: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (s, page) = user
            .api
            .get(&format!(
                "/api/v1/rooms/{room}/messages?after={after}&limit=200"
            ))
            .await;
        assert!(s.is_success(), "history: {s} {page}");
        let msgs = page["messages"].as_array().unwrap();
        for m in msgs {
            after = m["seq"].as_i64().unwrap();
            all.push(m.clone());
        }
        if page["has_more"] != true {
            return all;
        }
    }
}

struct Client {
    addr: SocketAddr,
    user: User,
    rooms: Vec<String>,
    load: Option<Load>,
    cursor: HashMap<String, i64>,
    report: ClientReport,
    /// client_id -> frame, sent and not yet acked (resent after a reconnect).
    unacked: BTreeMap<String, Value>,
    /// Refused sends (store down, rate limited) and when to try them again.
    retry_at: HashMap<String, Instant>,
    done: Arc<AtomicBool>,
    target: watch::Receiver<Option<HashMap<String, i64>>>,
}

enum Ended {
    /// The socket ended; reconnect after this long.
    Reconnect(Duration),
    Finished,
}

impl Client {
    async fn run(mut self) -> ClientReport {
        let mut sent = 0usize;
        let mut attempt = 0u32;
        let mut outage_since: Option<Instant> = None;
        loop {
            match self.session(&mut sent, &mut outage_since).await {
                Ok(Ended::Finished) => return self.report,
                Ok(Ended::Reconnect(wait)) => {
                    attempt = 0;
                    outage_since.get_or_insert_with(Instant::now);
                    self.report.reconnects += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(()) => {
                    // Could not connect: back off (full jitter, 100 ms doubling, at most 2 s).
                    outage_since.get_or_insert_with(Instant::now);
                    attempt += 1;
                    let ceiling = (100u64 << attempt.min(5)).min(2000);
                    tokio::time::sleep(Duration::from_millis(rand_below(ceiling))).await;
                }
            }
        }
    }

    /// One socket's life: hello, subscribe with since, resend unacked, then send and receive.
    async fn session(
        &mut self,
        sent: &mut usize,
        outage_since: &mut Option<Instant>,
    ) -> Result<Ended, ()> {
        let mut req = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.user.token).parse().unwrap(),
        );
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .map_err(|_| ())?
        .map_err(|_| ())?;
        // hello
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "hello" {
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => return Err(()),
            }
        }
        if let Some(since) = outage_since.take() {
            self.report.longest_outage = self.report.longest_outage.max(since.elapsed());
        }
        for room in &self.rooms {
            let f = json!({"type": "subscribe", "room": room, "since": self.cursor[room]});
            if ws.send(Message::Text(f.to_string().into())).await.is_err() {
                return Ok(Ended::Reconnect(Duration::ZERO));
            }
        }
        for f in self.unacked.values() {
            if ws.send(Message::Text(f.to_string().into())).await.is_err() {
                return Ok(Ended::Reconnect(Duration::ZERO));
            }
        }
        let mut tick = tokio::time::interval(
            self.load
                .as_ref()
                .map(|l| l.interval)
                .unwrap_or(Duration::from_millis(50)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v["type"] == "subscribed" && v["recovered"] == false {
                            self.page_gap(&v).await;
                        } else {
                            self.on_frame(v);
                        }
                    }
                    Some(Ok(Message::Close(c))) => {
                        let (code, reason) = c
                            .map(|c| (u16::from(c.code), c.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        let wait = reason
                            .split("retry_after_ms=")
                            .nth(1)
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(rand_below(500));
                        self.report.closes.push((code, reason));
                        return Ok(Ended::Reconnect(Duration::from_millis(wait)));
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => {
                        self.report.closes.push((1006, String::new()));
                        return Ok(Ended::Reconnect(Duration::from_millis(rand_below(500))));
                    }
                },
                _ = tick.tick(), if self.load.as_ref().is_some_and(|l| *sent < l.per_writer) => {
                    let room = &self.rooms[*sent % self.rooms.len()];
                    let cid = format!("{}-{}", self.user.name, *sent);
                    let f = json!({"type": "message", "room": room, "body": format!("m {cid}"), "client_id": cid});
                    self.unacked.insert(cid, f.clone());
                    *sent += 1;
                    if ws.send(Message::Text(f.to_string().into())).await.is_err() {
                        return Ok(Ended::Reconnect(Duration::ZERO));
                    }
                }
                _ = check.tick() => {
                    let now = Instant::now();
                    let due: Vec<String> = self.retry_at.iter().filter(|(_, t)| **t <= now).map(|(c, _)| c.clone()).collect();
                    for cid in due {
                        self.retry_at.remove(&cid);
                        if let Some(f) = self.unacked.get(&cid)
                            && ws.send(Message::Text(f.to_string().into())).await.is_err()
                        {
                            return Ok(Ended::Reconnect(Duration::ZERO));
                        }
                    }
                    let all_sent = self.load.as_ref().is_none_or(|l| *sent >= l.per_writer);
                    if all_sent && self.unacked.is_empty() {
                        self.done.store(true, Ordering::SeqCst);
                    }
                    let caught_up = self.target.borrow().as_ref().is_some_and(|t| {
                        t.iter().all(|(room, last)| self.cursor[room] >= *last)
                    });
                    if caught_up {
                        let _ = ws.close(None).await;
                        return Ok(Ended::Finished);
                    }
                }
            }
        }
    }

    /// More was missed than the server replays: read the gap up to the `subscribed` reply's
    /// `last_seq` from history (REST, through the load balancer, retried while pods restart);
    /// live messages after it follow on the socket.
    async fn page_gap(&mut self, subscribed: &Value) {
        let room = subscribed["room"].as_str().unwrap().to_string();
        let upto = subscribed["last_seq"].as_i64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.cursor[&room] < upto {
            let after = self.cursor[&room];
            let (status, page) = self
                .user
                .api
                .get(&format!(
                    "/api/v1/rooms/{room}/messages?after={after}&limit=200"
                ))
                .await;
            if !status.is_success() {
                assert!(Instant::now() < deadline, "history unavailable for 60 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            for m in page["messages"].as_array().unwrap() {
                let seq = m["seq"].as_i64().unwrap();
                if seq > upto {
                    break;
                }
                self.received(&room, seq, "history");
                self.report.paged += 1;
            }
        }
    }

    /// A message of `room` handed on (from the socket or from history): it must be the next
    /// seq; anything else is a gap or a duplicate.
    fn received(&mut self, room: &str, seq: i64, from: &str) {
        let cursor = self.cursor.get_mut(room).unwrap();
        if seq != *cursor + 1 {
            self.report.violations.push(format!(
                "room {room}: {from} gave seq {seq} after {cursor} ({})",
                if seq <= *cursor { "duplicate" } else { "gap" }
            ));
        }
        *cursor = (*cursor).max(seq);
        self.report
            .received
            .entry(room.to_string())
            .or_default()
            .push(seq);
    }

    fn on_frame(&mut self, v: Value) {
        match v["type"].as_str().unwrap_or_default() {
            "message" => {
                let room = v["room"].as_str().unwrap();
                let seq = v["seq"].as_i64().unwrap();
                self.received(room, seq, "the socket");
            }
            "ack" => {
                let cid = v["client_id"].as_str().unwrap().to_string();
                if self.unacked.remove(&cid).is_some() || !self.report.acked.contains_key(&cid) {
                    let seq = v["seq"].as_i64().unwrap();
                    let room = v["room"].as_str().unwrap().to_string();
                    if let Some((r0, s0)) = self.report.acked.get(&cid)
                        && (r0 != &room || *s0 != seq)
                    {
                        self.report.violations.push(format!(
                            "{cid} acked as {r0}/{s0} and again as {room}/{seq}"
                        ));
                    }
                    self.report.acked.insert(cid, (room, seq));
                }
            }
            "error" => {
                // A refused send stays unacked and goes again shortly (and with the next
                // socket); a store that is down answers `unavailable` at once.
                if v["code"] == "unavailable" {
                    self.report.unavailable += 1;
                }
                if let Some(cid) = v["ref"].as_str()
                    && self.unacked.contains_key(cid)
                {
                    let wait = v["retry_after_ms"].as_u64().unwrap_or(200);
                    self.retry_at.insert(
                        cid.to_string(),
                        Instant::now() + Duration::from_millis(wait),
                    );
                }
            }
            _ => {}
        }
    }
}

fn rand_below(n: u64) -> u64 {
    rand::random_range(0..n.max(1))
}
