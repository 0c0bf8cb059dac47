//! The reconnect storm: many sockets on one pod, each subscribed to many shared rooms, messages
//! flowing; the pod is killed and every socket comes back to the other pods at once, resuming
//! each room with `since` and `since_rev`. Reports how long until every socket has resumed and
//! every message has reached every subscriber, with nothing lost or repeated.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::SinkExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::{Target, percentile};

pub struct Storm {
    pub sockets: usize,
    pub users: usize,
    pub rooms: usize,
    pub rooms_per_socket: usize,
    pub rate: u64,
    pub settle: u64,
    pub victim_pid: u32,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    /// The resuming servers' process ids, for their CPU during the resume.
    pub resume_pids: Vec<u32>,
}

/// What one socket has seen of one room.
struct Seen {
    room: usize,
    last: AtomicI64,
    rev: AtomicI64,
}

/// One client socket's rooms and progress; shared with the checker.
struct Client {
    token: usize,
    rooms: Vec<Seen>,
    /// When it saw the first server go (micros after the kill), or -1.
    closed_us: AtomicI64,
    /// When its new socket was open (micros after the kill), or -1.
    connected_us: AtomicI64,
    /// When its last resume finished (micros after the kill), or -1.
    resumed_us: AtomicI64,
}

#[derive(Default)]
struct Counters {
    gaps: AtomicU64,
    duplicates: AtomicU64,
    not_recovered: AtomicU64,
    refused: AtomicU64,
    closed_again: AtomicU64,
    errors: AtomicU64,
    subscribed: AtomicU64,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    room: Option<&'a str>,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default)]
    last_seq: Option<i64>,
    #[serde(default)]
    rev: Option<i64>,
    #[serde(default)]
    recovered: Option<bool>,
}

struct Shared {
    room_ids: Vec<String>,
    index: HashMap<String, usize>,
    tokens: Vec<String>,
    counters: Counters,
    killed: AtomicBool,
    killed_at: std::sync::OnceLock<Instant>,
    /// Why reconnects were refused: each distinct reason and how often.
    refusals: std::sync::Mutex<HashMap<String, u64>>,
}

pub async fn run(first: &Arc<Target>, resume: &[Arc<Target>], s: Storm) -> anyhow::Result<Value> {
    if resume.is_empty() {
        bail!("--resume-url names at least one other server");
    }
    let setup = Instant::now();
    let admin = resume[0].user("storm").await?;
    let mut room_ids = Vec::with_capacity(s.rooms);
    for i in 0..s.rooms {
        room_ids.push(resume[0].public_room(&admin, &format!("storm-{i}")).await?);
    }
    // User u belongs to rooms_per_socket consecutive rooms starting at u * rooms_per_socket.
    let rooms_of = |u: usize| -> Vec<usize> {
        (0..s.rooms_per_socket)
            .map(|k| (u * s.rooms_per_socket + k) % s.rooms)
            .collect()
    };
    let mut tokens = Vec::with_capacity(s.users);
    for chunk in (0..s.users).collect::<Vec<_>>().chunks(32) {
        let made = chunk.iter().map(|&u| {
            let t = resume[0].clone();
            let rooms: Vec<String> = rooms_of(u).iter().map(|&r| room_ids[r].clone()).collect();
            async move { t.member_of("storm", &rooms).await }
        });
        for token in futures::future::join_all(made).await {
            tokens.push(token?);
        }
    }
    let index = room_ids
        .iter()
        .enumerate()
        .map(|(i, r)| (r.clone(), i))
        .collect();
    let shared = Arc::new(Shared {
        room_ids,
        index,
        tokens,
        counters: Counters::default(),
        killed: AtomicBool::new(false),
        killed_at: std::sync::OnceLock::new(),
        refusals: std::sync::Mutex::default(),
    });
    let clients: Vec<Arc<Client>> = (0..s.sockets)
        .map(|i| {
            let u = i % s.users;
            Arc::new(Client {
                token: u,
                rooms: rooms_of(u)
                    .into_iter()
                    .map(|room| Seen {
                        room,
                        last: AtomicI64::new(-1),
                        rev: AtomicI64::new(-1),
                    })
                    .collect(),
                closed_us: AtomicI64::new(-1),
                connected_us: AtomicI64::new(-1),
                resumed_us: AtomicI64::new(-1),
            })
        })
        .collect();

    // Every socket connects to the first server and subscribes, a few hundred at a time.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(1024);
    let mut tasks = Vec::with_capacity(s.sockets);
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    for (i, c) in clients.iter().enumerate() {
        let (c, shared, ready) = (c.clone(), shared.clone(), ready_tx.clone());
        let first = first.clone();
        let next = resume[i % resume.len()].clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            client(c, shared, first, next, ready, gate).await;
        }));
    }
    drop(ready_tx);
    for _ in 0..s.sockets {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e.context("opening the sockets on the first server")),
            None => bail!("a socket task ended before subscribing"),
        }
    }
    let setup_secs = setup.elapsed().as_secs_f64();

    // Messages flow through a resuming server from here to the end.
    let acked: Arc<Vec<AtomicI64>> = Arc::new((0..s.rooms).map(|_| AtomicI64::new(0)).collect());
    let (stop_tx, stop_rx) = watch::channel(false);
    let sender = tokio::spawn(send(
        resume[0].clone(),
        admin.clone(),
        shared.clone(),
        acked.clone(),
        s.rate,
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_secs(s.settle)).await;

    let pg = match &s.database_url {
        Some(url) => Some(sqlx::PgPool::connect(url).await?),
        None => None,
    };
    let redis = match &s.redis_url {
        Some(url) => Some(
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await?,
        ),
        None => None,
    };
    let pg_before = match &pg {
        Some(pool) => Some(pg_transactions(pool).await?),
        None => None,
    };
    let redis_before = match &redis {
        Some(c) => Some(redis_commands(&mut c.clone()).await?),
        None => None,
    };
    let pg_cpu_before = postgres_cpu_seconds();
    let servers_cpu = |pids: &[u32]| -> f64 {
        pids.iter()
            .filter_map(|p| crate::cpu_seconds(&p.to_string()))
            .sum()
    };
    let servers_before = servers_cpu(&s.resume_pids);

    // The kill.
    let killed_at = Instant::now();
    shared.killed_at.set(killed_at).ok();
    shared.killed.store(true, Ordering::SeqCst);
    let status = std::process::Command::new("kill")
        .args(["-KILL", &s.victim_pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("could not kill process {}", s.victim_pid);
    }

    // Every socket resumed: each has had a `subscribed` for each of its rooms on its new server.
    let limit = Duration::from_secs(120);
    let resumed_all = loop {
        if clients
            .iter()
            .all(|c| c.resumed_us.load(Ordering::Relaxed) >= 0)
        {
            break Some(killed_at.elapsed());
        }
        if killed_at.elapsed() > limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pg_after = match &pg {
        Some(pool) => Some(pg_transactions(pool).await?),
        None => None,
    };
    let redis_after = match &redis {
        Some(c) => Some(redis_commands(&mut c.clone()).await?),
        None => None,
    };
    let pg_cpu_after = postgres_cpu_seconds();
    let servers_after = servers_cpu(&s.resume_pids);
    let storm_secs = killed_at.elapsed().as_secs_f64();

    // Every message acknowledged by the time all had resumed reached every subscriber.
    let target: Vec<i64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let caught_up = wait_until(&clients, &target, killed_at, limit).await;

    // Stop the traffic and check that every socket ends with every message of its rooms.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send(true).ok();
    let sent = sender.await??;
    let last: Vec<i64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let complete = wait_until(&clients, &last, Instant::now(), Duration::from_secs(30)).await;
    let lagging = clients
        .iter()
        .filter(|c| {
            c.rooms
                .iter()
                .any(|r| r.last.load(Ordering::SeqCst) < last[r.room])
        })
        .count();
    for t in tasks {
        t.abort();
    }

    let ms = |of: fn(&Client) -> &AtomicI64| {
        let mut v: Vec<f64> = clients
            .iter()
            .map(|c| of(c).load(Ordering::Relaxed))
            .filter(|&us| us >= 0)
            .map(|us| us as f64 / 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let closed_ms = ms(|c| &c.closed_us);
    let connected_ms = ms(|c| &c.connected_us);
    // A resume: from the new socket being open to the last `subscribed` on it.
    let mut resume_ms: Vec<f64> = clients
        .iter()
        .filter_map(|c| {
            let (a, b) = (
                c.connected_us.load(Ordering::Relaxed),
                c.resumed_us.load(Ordering::Relaxed),
            );
            (a >= 0 && b >= a).then(|| (b - a) as f64 / 1000.0)
        })
        .collect();
    resume_ms.sort_by(f64::total_cmp);
    let resumed_ms = ms(|c| &c.resumed_us);
    let k = &shared.counters;
    let round = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 100.0).round() / 100.0);
    Ok(json!({
        "scenario": "storm",
        "sockets": s.sockets,
        "users": s.users,
        "rooms": s.rooms,
        "rooms_per_socket": s.rooms_per_socket,
        "messages_per_second": s.rate,
        "setup_seconds": (setup_secs * 10.0).round() / 10.0,
        "resumed_all_seconds": round(resumed_all),
        "caught_up_seconds": round(caught_up),
        "closed_seen_ms_p99": percentile(&closed_ms, 99.0).round(),
        "reconnected_ms_p50": percentile(&connected_ms, 50.0).round(),
        "reconnected_ms_p99": percentile(&connected_ms, 99.0).round(),
        "resume_ms_p50": percentile(&resume_ms, 50.0).round(),
        "resume_ms_p99": percentile(&resume_ms, 99.0).round(),
        "resumed_ms_p50": percentile(&resumed_ms, 50.0).round(),
        "resumed_ms_p99": percentile(&resumed_ms, 99.0).round(),
        "subscribes_answered": k.subscribed.load(Ordering::Relaxed),
        "messages_sent": sent,
        "complete_after_stop": complete.is_some(),
        "sockets_lagging": lagging,
        "gaps": k.gaps.load(Ordering::Relaxed),
        "duplicates": k.duplicates.load(Ordering::Relaxed),
        "not_recovered": k.not_recovered.load(Ordering::Relaxed),
        "connects_refused": k.refused.load(Ordering::Relaxed),
        "refusals": *shared.refusals.lock().unwrap(),
        "closed_after_resume": k.closed_again.load(Ordering::Relaxed),
        "error_frames": k.errors.load(Ordering::Relaxed),
        "postgres_transactions_during_resume": pg_after.zip(pg_before).map(|(a, b)| a - b),
        "postgres_cpu_percent_during_resume": pg_cpu_after.zip(pg_cpu_before)
            .map(|(a, b)| ((a - b) / storm_secs * 100.0).round()),
        "resuming_servers_cpu_percent_during_resume": (!s.resume_pids.is_empty())
            .then(|| ((servers_after - servers_before) / storm_secs * 100.0).round()),
        "redis_commands_during_resume": redis_after.zip(redis_before).map(|(a, b)| a - b),
    }))
}

/// Waits until every socket has seen at least `target[room]` in each of its rooms; the time
/// since `from`, or None at `limit`.
async fn wait_until(
    clients: &[Arc<Client>],
    target: &[i64],
    from: Instant,
    limit: Duration,
) -> Option<Duration> {
    loop {
        let done = clients.iter().all(|c| {
            c.rooms
                .iter()
                .all(|r| r.last.load(Ordering::Relaxed) >= target[r.room])
        });
        if done {
            return Some(from.elapsed());
        }
        if from.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One client socket: subscribes on the first server, and after the kill reconnects to its
/// resuming server (retrying with backoff) and resumes every room from what it has seen.
async fn client(
    c: Arc<Client>,
    shared: Arc<Shared>,
    first: Arc<Target>,
    next: Arc<Target>,
    ready: tokio::sync::mpsc::Sender<anyhow::Result<()>>,
    gate: Arc<tokio::sync::Semaphore>,
) {
    let token = &shared.tokens[c.token];
    let permit = gate.acquire().await;
    let mut ws = match first.socket(token).await {
        Ok(ws) => ws,
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    if let Err(e) = subscribe_all(&mut ws, &c, &shared, false).await {
        let _ = ready.send(Err(e)).await;
        return;
    }
    drop(permit);
    let _ = ready.send(Ok(())).await;
    drop(ready);
    read(&mut ws, &c, &shared, None).await;
    c.closed_us.store(since_kill(&shared), Ordering::Relaxed);
    // Its file goes before the new socket's comes: the process holds one per client.
    drop(ws);
    if !shared.killed.load(Ordering::SeqCst) {
        shared.counters.closed_again.fetch_add(1, Ordering::Relaxed);
    }
    // Reconnect as a client library would: exponential backoff with jitter.
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let attempt = async {
            let mut ws = next.socket(token).await?;
            c.connected_us.store(since_kill(&shared), Ordering::Relaxed);
            let expected = subscribe_all(&mut ws, &c, &shared, true).await?;
            anyhow::Ok((ws, expected))
        };
        match attempt.await {
            Ok((mut ws, expected)) => {
                read(&mut ws, &c, &shared, Some(expected)).await;
                shared.counters.closed_again.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                *shared
                    .refusals
                    .lock()
                    .unwrap()
                    .entry(format!("{e:#}"))
                    .or_default() += 1;
            }
        }
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
    }
}

fn since_kill(shared: &Shared) -> i64 {
    shared
        .killed_at
        .get()
        .map_or(-1, |at| at.elapsed().as_micros() as i64)
}

/// Sends a `subscribe` for every room at once (resuming from what was seen when `resume`);
/// before the kill also waits for the replies. Returns how many replies to expect.
async fn subscribe_all(
    ws: &mut crate::Socket,
    c: &Client,
    shared: &Shared,
    resume: bool,
) -> anyhow::Result<usize> {
    for r in &c.rooms {
        let mut frame = json!({"type": "subscribe", "room": shared.room_ids[r.room]});
        if resume {
            frame["since"] = json!(r.last.load(Ordering::SeqCst));
            frame["since_rev"] = json!(r.rev.load(Ordering::SeqCst));
        }
        ws.inner_mut()
            .feed(Message::Text(frame.to_string().into()))
            .await?;
    }
    ws.inner_mut().flush().await?;
    if !resume {
        let mut answered = 0;
        while answered < c.rooms.len() {
            let text = tokio::time::timeout(Duration::from_secs(60), ws.recv_text())
                .await
                .context("no subscribed within 60 s")?
                .map_err(|e| anyhow::anyhow!("closed while subscribing: {e:?}"))?;
            if handle(&text, c, shared)? {
                answered += 1;
            }
        }
    }
    Ok(c.rooms.len())
}

/// Reads until the socket closes. With `expected`, the socket is resuming: it counts as
/// resumed at the last `subscribed`.
async fn read(ws: &mut crate::Socket, c: &Client, shared: &Shared, expected: Option<usize>) {
    let mut waiting = expected.unwrap_or(0);
    while let Ok(text) = ws.recv_text().await {
        match handle(&text, c, shared) {
            Ok(true) if waiting > 0 => {
                waiting -= 1;
                if waiting == 0
                    && let Some(at) = shared.killed_at.get()
                {
                    c.resumed_us
                        .store(at.elapsed().as_micros() as i64, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(_) => {
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Applies one frame to what the socket has seen; true for a `subscribed`.
fn handle(text: &str, c: &Client, shared: &Shared) -> anyhow::Result<bool> {
    let f: Frame = serde_json::from_str(text)?;
    let seen = || {
        let room = f.room.and_then(|r| shared.index.get(r))?;
        c.rooms.iter().find(|s| s.room == *room)
    };
    match f.kind {
        "subscribed" => {
            let r = seen().context("subscribed to an unknown room")?;
            shared.counters.subscribed.fetch_add(1, Ordering::Relaxed);
            if f.recovered == Some(false) {
                shared
                    .counters
                    .not_recovered
                    .fetch_add(1, Ordering::Relaxed);
                r.last.store(f.last_seq.unwrap_or(0), Ordering::SeqCst);
            } else if r.last.load(Ordering::SeqCst) < 0 {
                r.last.store(f.last_seq.unwrap_or(0), Ordering::SeqCst);
            }
            r.rev.fetch_max(f.rev.unwrap_or(0), Ordering::SeqCst);
            Ok(true)
        }
        "message" => {
            let r = seen().context("a message from an unknown room")?;
            let seq = f.seq.unwrap_or(0);
            let last = r.last.load(Ordering::SeqCst);
            if seq <= last {
                shared.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            } else {
                if seq != last + 1 {
                    shared.counters.gaps.fetch_add(1, Ordering::Relaxed);
                }
                r.last.store(seq, Ordering::SeqCst);
            }
            r.rev.fetch_max(f.rev.unwrap_or(0), Ordering::SeqCst);
            Ok(false)
        }
        "error" => bail!("error frame: {text}"),
        _ => Ok(false),
    }
}

/// One socket sends `rate` messages a second round robin over the rooms until told to stop;
/// records the highest acked seq of each room. Returns how many were acked.
async fn send(
    t: Arc<Target>,
    token: String,
    shared: Arc<Shared>,
    acked: Arc<Vec<AtomicI64>>,
    rate: u64,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let mut ws = t.socket(&token).await?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let (mut sent, mut done) = (0u64, 0u64);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = tick.tick(), if !stopping => {
                let room = sent as usize % shared.room_ids.len();
                let frame = json!({"type": "message", "room": shared.room_ids[room], "body": "storm", "client_id": format!("s{sent}")});
                ws.send_text(frame.to_string()).await?;
                sent += 1;
            }
            _ = stop.changed(), if !stopping => stopping = true,
            text = ws.recv_text() => {
                let text = text.map_err(|e| anyhow::anyhow!("the sender's socket closed: {e:?}"))?;
                let v: Value = serde_json::from_str(&text)?;
                if v["type"] == "ack" {
                    let room = v["room"].as_str().and_then(|r| shared.index.get(r)).context("ack room")?;
                    acked[*room].fetch_max(v["seq"].as_i64().unwrap_or(0), Ordering::SeqCst);
                    done += 1;
                } else if v["type"] == "error" {
                    bail!("the sender got an error: {v}");
                }
            }
        }
        if stopping && done == sent {
            return Ok(done);
        }
    }
}

async fn pg_transactions(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    let n: i64 =
        sqlx::query_scalar("SELECT sum(xact_commit + xact_rollback)::bigint FROM pg_stat_database")
            .fetch_one(pool)
            .await?;
    Ok(n)
}

async fn redis_commands(c: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<i64> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(c).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO stats without total_commands_processed")
}

/// CPU seconds of every PostgreSQL process on the machine.
fn postgres_cpu_seconds() -> Option<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            // With the children that ended: the backends of server A's connections end
            // during the resume, and their time must not vanish from the total.
            total += crate::cpu_seconds_with_ended_children(pid).unwrap_or(0.0);
        }
    }
    Some(total)
}
