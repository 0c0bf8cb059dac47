//! confab-bench: load through the real protocol (REST register/login, WebSocket subscribe, send
//! with client_id), for the figures in docs/BENCHMARKS.md.
//!
//! Scenarios: `idle` (server memory per open, subscribed connection), `fanout` (deliveries per
//! second and end-to-end latency in a large room), `ingest` (durably committed messages per
//! second with acks), `cross-pod` (the fanout with senders on one server and receivers on
//! another, so every delivery crosses the bus), `logins` (a sign-in storm), `storm` (a pod
//! with many sockets killed; every socket resumes on the others). Client sockets are spread over several loopback addresses (--bind) to pass
//! the per-address port limit; run several processes for more than one process's open files.
//! The bench reports its own CPU so that a saturated load generator is not taken for a slow
//! server.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use confab_client::protocol::ClientFrame;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

mod storm;

#[derive(Parser)]
#[command(name = "confab-bench", about = "Load confab through its real protocol")]
struct Cli {
    /// Base URL of the confab under test.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// Local addresses client sockets bind to, round robin (e.g. 127.0.0.1,127.0.0.2).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1",
        global = true
    )]
    bind: Vec<IpAddr>,
    /// The server's process id, to read its memory and CPU from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Print the result as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N authenticated, subscribed connections and measure the server's memory per
    /// connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold them before measuring.
        #[arg(long, default_value_t = 3)]
        settle: u64,
        /// Distinct users the connections belong to (round robin), each a member of the room:
        /// presence and connection records grow with users, not sockets.
        #[arg(long, default_value_t = 1)]
        users: usize,
        /// Rooms each connection subscribes to (every connection to the same ones): the hub
        /// keeps an entry per subscription.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
    },
    /// One room with M subscribers; K senders at R messages/s each; latency from the send
    /// time written in each body to its arrival.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        members: usize,
        #[arg(long, default_value_t = 4)]
        senders: usize,
        #[arg(long, default_value_t = 50)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The fanout with the receivers on a second server (`--receive-url`) sharing the same
    /// database and bus: every delivery crosses Redis.
    CrossPod {
        /// Base URL of the server the receivers connect to.
        #[arg(long)]
        receive_url: String,
        /// The receiving server's process id, for its CPU.
        #[arg(long)]
        receive_pid: Option<u32>,
        #[arg(long, default_value_t = 10)]
        members: usize,
        #[arg(long, default_value_t = 20)]
        senders: usize,
        #[arg(long, default_value_t = 500)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// N sign-ins at once for one account (a login storm after an outage), each from its own
    /// X-Forwarded-For address (start the server with --trust-forwarded-for). Reports the
    /// answers, their latency and, with --server-pid, the server's resident memory before, at
    /// its peak (VmHWM: start a fresh server for each run) and after.
    Logins {
        #[arg(long, default_value_t = 300)]
        count: usize,
    },
    /// A reconnect storm: SOCKETS sockets on the server at --url, each subscribed to
    /// ROOMS_PER_SOCKET of ROOMS shared rooms, messages flowing through the first
    /// --resume-url; the first server (--victim-pid) is killed and every socket reconnects to
    /// the resuming servers (round robin) and resumes each room with `since` and `since_rev`.
    Storm {
        #[arg(long, default_value_t = 15000)]
        sockets: usize,
        /// Distinct users the sockets belong to (round robin; start the servers with a high
        /// --max-connections-per-user).
        #[arg(long, default_value_t = 300)]
        users: usize,
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        #[arg(long, default_value_t = 20)]
        rooms_per_socket: usize,
        /// Messages a second, round robin over the rooms, from the storm's start to its end.
        #[arg(long, default_value_t = 20)]
        rate: u64,
        /// Seconds of traffic before the kill.
        #[arg(long, default_value_t = 3)]
        settle: u64,
        /// The process id of the server at --url, killed with SIGKILL.
        #[arg(long)]
        victim_pid: u32,
        /// Servers the sockets come back to (comma-separated base URLs).
        #[arg(long, value_delimiter = ',', required = true)]
        resume_url: Vec<String>,
        /// The resuming servers' process ids, for their CPU during the resume.
        #[arg(long, value_delimiter = ',')]
        resume_pid: Vec<u32>,
        /// The PostgreSQL the servers share, to count its transactions during the storm.
        #[arg(long)]
        database_url: Option<String>,
        /// The Redis the servers share, to count its commands during the storm.
        #[arg(long)]
        redis_url: Option<String>,
    },
    /// Many senders, each with a window of unacknowledged messages; acks mean durable commits.
    Ingest {
        #[arg(long, default_value_t = 64)]
        senders: usize,
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Register a webhook for `message.created` at this URL before the run (needs
        /// `--admin`), then wait until every message of the run has been delivered to it and
        /// report the delivery rate and how long the backlog took to drain.
        #[arg(long, requires = "admin")]
        webhook: Option<String>,
        /// Where the server's metrics are served (its `--metrics-listen`), to count deliveries.
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        metrics_url: String,
        /// An administrator's username (one of the server's `--admins`); registered with the
        /// bench's password if it does not exist yet.
        #[arg(long)]
        admin: Option<String>,
    },
}

/// The client library's socket (a typed handshake and frames); the load loops use its stream
/// directly, so that the generator measures the server and not its own parsing.
type Socket = confab_client::raw::Socket;

struct Target {
    http: reqwest::Client,
    base: String,
    ws: SocketAddr,
    bind: Vec<IpAddr>,
    next: AtomicU64,
}

impl Target {
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> anyhow::Result<Value> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("POST {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers and logs in a fresh user; returns its token.
    async fn user(&self, tag: &str) -> anyhow::Result<String> {
        let name = format!(
            "bench-{tag}-{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        self.post(
            "/api/v1/auth/register",
            None,
            json!({"username": name, "password": "bench-password"}),
        )
        .await?;
        let t = self
            .post(
                "/api/v1/auth/login",
                None,
                json!({"username": name, "password": "bench-password"}),
            )
            .await?;
        Ok(t["access_token"].as_str().context("no token")?.to_string())
    }

    /// Creates a public room named `{tag}-{random}`; returns its id.
    async fn public_room(&self, token: &str, tag: &str) -> anyhow::Result<String> {
        let name = format!("{tag}-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let room = self
            .post(
                "/api/v1/rooms",
                Some(token),
                json!({"name": name, "kind": "public"}),
            )
            .await?;
        Ok(room["id"].as_str().context("room id")?.to_string())
    }

    /// Registers a fresh user who joins `rooms`; returns its token.
    async fn member_of(&self, tag: &str, rooms: &[String]) -> anyhow::Result<String> {
        let token = self.user(tag).await?;
        for room in rooms {
            self.post(
                &format!("/api/v1/rooms/{room}/join"),
                Some(&token),
                json!({}),
            )
            .await?;
        }
        Ok(token)
    }

    /// Signs in `admin` (registering it first if needed) and registers a webhook for
    /// `message.created` at `url`; returns the webhook's id and the admin's token.
    async fn webhook(&self, admin: &str, url: &str) -> anyhow::Result<(String, String)> {
        let creds = json!({"username": admin, "password": "bench-password"});
        let _ = self
            .post("/api/v1/auth/register", None, creds.clone())
            .await;
        let token = self.post("/api/v1/auth/login", None, creds).await?["access_token"]
            .as_str()
            .context("no token")?
            .to_string();
        let hook = self
            .post(
                "/api/v1/admin/webhooks",
                Some(&token),
                json!({"url": url, "events": ["message.created"]}),
            )
            .await?;
        Ok((
            hook["id"].as_str().context("webhook id")?.to_string(),
            token,
        ))
    }

    async fn remove_webhook(&self, (id, token): &(String, String)) -> anyhow::Result<()> {
        self.http
            .delete(format!("{}/api/v1/admin/webhooks/{id}", self.base))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// The server's count of delivered webhook events, from its metrics.
    async fn delivered(&self, metrics_url: &str) -> anyhow::Result<u64> {
        let text = self
            .http
            .get(format!("{metrics_url}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find(|l| l.starts_with("confab_webhook_deliveries_total{outcome=\"delivered\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64)
    }

    async fn socket(&self, token: &str) -> anyhow::Result<Socket> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        let local = self.bind[n % self.bind.len()];
        let sock = if local.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        sock.bind(SocketAddr::new(local, 0))?;
        let stream = sock.connect(self.ws).await?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{}/ws?token={token}", self.ws);
        let mut ws = Socket::from_stream(&url, stream).await?;
        expect(&mut ws, "hello").await?;
        Ok(ws)
    }
}

async fn expect(ws: &mut Socket, kind: &str) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.recv_text()).await {
            Ok(Ok(t)) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == kind {
                    return Ok(v);
                }
                if v["type"] == "error" {
                    bail!("error while waiting for {kind}: {v}");
                }
            }
            Ok(Err(closed)) => bail!("no {kind}: the socket closed {closed:?}"),
            Err(_) => bail!("no {kind} within 30 s"),
        }
    }
}

async fn subscribe(ws: &mut Socket, room: &str) -> anyhow::Result<()> {
    ws.send(&ClientFrame::Subscribe {
        room: room.parse().context("a room id")?,
        since: None,
        since_rev: None,
    })
    .await?;
    expect(ws, "subscribed").await?;
    Ok(())
}

/// (user + system) CPU seconds of a process, from /proc.
fn cpu_seconds(pid: &str) -> Option<f64> {
    proc_ticks(pid, 11..13)
}

/// A process's CPU time with that of its children that have ended (a PostgreSQL postmaster
/// and the backends of closed connections).
fn cpu_seconds_with_ended_children(pid: &str) -> Option<f64> {
    proc_ticks(pid, 11..15)
}

/// The sum of the `/proc/<pid>/stat` clock-tick fields `fields` (counted after the command
/// name), in seconds.
fn proc_ticks(pid: &str, fields: std::ops::Range<usize>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let all: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let mut ticks = 0.0;
    for f in fields {
        ticks += all.get(f)?.parse::<f64>().ok()?;
    }
    Some(ticks / 100.0)
}

/// A process's CPU time since a start, as a percentage of one core over a wall time.
struct CpuClock {
    pid: String,
    start: f64,
}

impl CpuClock {
    fn start(pid: String) -> Option<CpuClock> {
        Some(CpuClock {
            start: cpu_seconds(&pid)?,
            pid,
        })
    }

    fn percent(&self, wall: f64) -> f64 {
        let now = cpu_seconds(&self.pid).unwrap_or(self.start);
        ((now - self.start) / wall * 100.0).round()
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    proc_status_bytes(pid, "VmRSS:")
}

/// A memory line of /proc/<pid>/status (VmRSS, or VmHWM: the peak resident size).
fn proc_status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Kernel slab memory (reclaimable and not), from /proc/meminfo: socket structures live there.
fn kernel_slab_bytes() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |key: &str| -> Option<u64> {
        m.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((kb("SReclaimable:")? + kb("SUnreclaim:")?) * 1024)
}

/// Kernel memory held by TCP socket buffers (all processes), from /proc/net/sockstat.
fn tcp_kernel_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse::<u64>().ok().map(|pages| pages * 4096);
        }
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn report(cli: &Cli, result: Value) {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&result).unwrap());
    } else {
        for (k, v) in result.as_object().unwrap() {
            println!("{k:<28} {v}");
        }
    }
}

async fn connect_target(url: &str, bind: &[IpAddr]) -> anyhow::Result<Arc<Target>> {
    let base = url.trim_end_matches('/').to_string();
    let host = base.trim_start_matches("http://");
    let ws: SocketAddr = tokio::net::lookup_host(host)
        .await?
        .next()
        .with_context(|| format!("cannot resolve {url}"))?;
    Ok(Arc::new(Target {
        http: reqwest::Client::new(),
        base,
        ws,
        bind: bind.to_vec(),
        next: AtomicU64::new(0),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let target = connect_target(&cli.url, &cli.bind).await?;
    let peer_pid = match &cli.scenario {
        Scenario::CrossPod { receive_pid, .. } => *receive_pid,
        _ => None,
    };
    let clocks = [
        ("bench_cpu_percent", CpuClock::start("self".into())),
        (
            "server_cpu_percent",
            cli.server_pid.and_then(|p| CpuClock::start(p.to_string())),
        ),
        (
            "receiving_server_cpu_percent",
            peer_pid.and_then(|p| CpuClock::start(p.to_string())),
        ),
    ];
    let started = Instant::now();
    let mut result = match &cli.scenario {
        Scenario::Idle {
            connections,
            settle,
            users,
            rooms,
        } => idle(&cli, &target, *connections, *settle, *users, *rooms).await?,
        Scenario::Fanout {
            members,
            senders,
            rate,
            seconds,
        } => fanout(&target, &target, *members, *senders, *rate, *seconds).await?,
        Scenario::CrossPod {
            receive_url,
            members,
            senders,
            rate,
            seconds,
            ..
        } => {
            let receivers = connect_target(receive_url, &cli.bind).await?;
            let mut r = fanout(&target, &receivers, *members, *senders, *rate, *seconds).await?;
            r["scenario"] = json!("cross-pod");
            r
        }
        Scenario::Ingest {
            senders,
            window,
            seconds,
            webhook,
            admin,
            metrics_url,
        } => {
            let hook = match (webhook, admin) {
                (Some(url), Some(admin)) => Some(target.webhook(admin, url).await?),
                _ => None,
            };
            let delivered_before = match hook {
                Some(_) => target.delivered(metrics_url).await?,
                None => 0,
            };
            let mut r = ingest(&target, *senders, *window, *seconds).await?;
            if let Some(id) = hook {
                drain(&target, metrics_url, &mut r, delivered_before).await?;
                target.remove_webhook(&id).await?;
            }
            r
        }
        Scenario::Logins { count } => logins(&cli, &target, *count).await?,
        Scenario::Storm {
            sockets,
            users,
            rooms,
            rooms_per_socket,
            rate,
            settle,
            victim_pid,
            resume_url,
            resume_pid,
            database_url,
            redis_url,
        } => {
            let mut resume = Vec::new();
            for url in resume_url {
                resume.push(connect_target(url, &cli.bind).await?);
            }
            let s = storm::Storm {
                sockets: *sockets,
                users: *users,
                rooms: *rooms,
                rooms_per_socket: *rooms_per_socket,
                rate: *rate,
                settle: *settle,
                victim_pid: *victim_pid,
                database_url: database_url.clone(),
                redis_url: redis_url.clone(),
                resume_pids: resume_pid.clone(),
            };
            storm::run(&target, &resume, s).await?
        }
    };
    let wall = started.elapsed().as_secs_f64();
    for (key, clock) in &clocks {
        if let Some(c) = clock {
            result[*key] = json!(c.percent(wall));
        }
    }
    report(&cli, result);
    Ok(())
}

async fn idle(
    cli: &Cli,
    t: &Arc<Target>,
    n: usize,
    settle: u64,
    users: usize,
    rooms: usize,
) -> anyhow::Result<Value> {
    let token = t.user("idle").await?;
    let mut room_ids = Vec::new();
    for _ in 0..rooms.max(1) {
        room_ids.push(t.public_room(&token, "idle").await?);
    }
    let room_ids = Arc::new(room_ids);
    let mut tokens = vec![token.clone()];
    for chunk in (1..users.max(1)).collect::<Vec<_>>().chunks(64) {
        let joined = chunk.iter().map(|_| {
            let (t, rooms) = (t.clone(), room_ids.clone());
            async move { t.member_of("idle", &rooms).await }
        });
        for token in futures::future::join_all(joined).await {
            tokens.push(token?);
        }
    }
    let pid = cli.server_pid;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = pid.and_then(rss_bytes);
    let kernel_before = tcp_kernel_bytes();
    let slab_before = kernel_slab_bytes();
    let mut sockets = Vec::with_capacity(n);
    let opened = Instant::now();
    // Open in parallel batches.
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut batch = Vec::new();
        for i in chunk {
            let t = t.clone();
            let token = tokens[i % tokens.len()].clone();
            let rooms = room_ids.clone();
            batch.push(tokio::spawn(async move {
                let mut ws = t.socket(&token).await?;
                for room in rooms.iter() {
                    subscribe(&mut ws, room).await?;
                }
                anyhow::Ok(ws)
            }));
        }
        for b in batch {
            sockets.push(b.await??);
        }
    }
    let open_secs = opened.elapsed().as_secs_f64();
    // Keep answering pings while settling.
    let mut readers = Vec::new();
    for mut ws in sockets {
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.inner_mut().next().await {}
        }));
    }
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let rss_after = pid.and_then(rss_bytes);
    let kernel_after = tcp_kernel_bytes();
    let slab_after = kernel_slab_bytes();
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) => json!(((a as f64 - b as f64) / n as f64).round()),
        _ => Value::Null,
    };
    let kernel_per_conn = match (kernel_before, kernel_after) {
        // Both ends of each loopback connection are counted by the kernel.
        (Some(b), Some(a)) => json!(((a as f64 - b as f64) / n as f64).round()),
        _ => Value::Null,
    };
    for r in readers {
        r.abort();
    }
    Ok(json!({
        "scenario": "idle",
        "connections": n,
        "users": tokens.len(),
        "rooms_per_connection": room_ids.len(),
        "open_seconds": (open_secs * 100.0).round() / 100.0,
        "server_rss_before_bytes": rss_before,
        "server_rss_after_bytes": rss_after,
        "server_rss_per_connection_bytes": per_conn,
        "kernel_tcp_buffer_bytes_per_connection_both_ends": kernel_per_conn,
        "kernel_slab_bytes_per_connection_both_ends": match (slab_before, slab_after) {
            (Some(b), Some(a)) => json!(((a as f64 - b as f64) / n as f64).round()),
            _ => Value::Null,
        },
    }))
}

async fn logins(cli: &Cli, t: &Arc<Target>, count: usize) -> anyhow::Result<Value> {
    let name = format!("storm-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    t.post(
        "/api/v1/auth/register",
        None,
        json!({"username": name, "password": "storm-password"}),
    )
    .await?;
    let pid = cli.server_pid;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = pid.and_then(rss_bytes);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let (t, name) = (t.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let resp = t
                .http
                .post(format!("{}/api/v1/auth/login", t.base))
                .header(
                    "x-forwarded-for",
                    format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                )
                .json(&json!({"username": name, "password": "storm-password"}))
                .send()
                .await;
            let status = resp.map(|r| r.status().as_u16()).unwrap_or(0);
            (status, sent.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut ok = Vec::new();
    let (mut busy, mut other) = (0u64, 0u64);
    for task in tasks {
        let (status, ms) = task.await?;
        match status {
            200 => ok.push(ms),
            503 => busy += 1,
            _ => other += 1,
        }
    }
    let wall = started.elapsed().as_secs_f64();
    ok.sort_by(f64::total_cmp);
    let rss_after = pid.and_then(rss_bytes);
    let peak = pid.and_then(|p| proc_status_bytes(p, "VmHWM:"));
    Ok(json!({
        "scenario": "logins",
        "count": count,
        "signed_in": ok.len(),
        "refused_busy_503": busy,
        "other_answers": other,
        "seconds": (wall * 100.0).round() / 100.0,
        "signed_in_ms_p50": (percentile(&ok, 50.0) * 10.0).round() / 10.0,
        "signed_in_ms_p99": (percentile(&ok, 99.0) * 10.0).round() / 10.0,
        "server_rss_before_bytes": rss_before,
        "server_rss_peak_bytes": peak,
        "server_rss_after_bytes": rss_after,
    }))
}

/// Senders connect to `t`, receivers to `rt` (the same server, or another for `cross-pod`).
async fn fanout(
    t: &Arc<Target>,
    rt: &Arc<Target>,
    members: usize,
    senders: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Value> {
    let token = t.user("fanout").await?;
    let room = t.public_room(&token, "fanout").await?;
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut receivers = Vec::new();
    for chunk in (0..members).collect::<Vec<_>>().chunks(200) {
        let mut batch = Vec::new();
        for _ in chunk {
            let (rt, token, room) = (rt.clone(), token.clone(), room.clone());
            batch.push(tokio::spawn(async move {
                let mut ws = rt.socket(&token).await?;
                subscribe(&mut ws, &room).await?;
                anyhow::Ok(ws)
            }));
        }
        for b in batch {
            let mut socket = b.await??;
            let (received, latencies, mut stopped) =
                (received.clone(), latencies.clone(), stopped.clone());
            receivers.push(tokio::spawn(async move {
                let ws = socket.inner_mut();
                let mut local = Vec::new();
                loop {
                    let msg = tokio::select! {
                        m = ws.next() => match m { Some(Ok(m)) => m, _ => break },
                        _ = stopped.wait_for(|s| *s) => break,
                    };
                    if let Message::Text(text) = msg
                        && let Some(i) = text.find("\"body\":\"t")
                    {
                        let digits: String = text[i + 9..]
                            .chars()
                            .take_while(char::is_ascii_digit)
                            .collect();
                        if let Ok(sent) = digits.parse::<u64>() {
                            local.push((now_us().saturating_sub(sent)) as f64 / 1000.0);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies.lock().unwrap().append(&mut local);
            }));
        }
    }
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut writers = Vec::new();
    for s in 0..senders {
        let (t, token, room, sent) = (t.clone(), token.clone(), room.clone(), sent.clone());
        writers.push(tokio::spawn(async move {
            let mut socket = t.socket(&token).await?;
            let ws = socket.inner_mut();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut i = 0u64;
            while Instant::now() < deadline {
                tick.tick().await;
                let frame = json!({"type": "message", "room": room, "body": format!("t{}", now_us()), "client_id": format!("{s}-{i}")});
                ws.send(Message::Text(frame.to_string().into())).await?;
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
                // Drain acks and echoes without blocking the pace.
                while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(0), ws.next()).await {}
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await; // the last messages arrive
    let _ = stop.send(true);
    for r in receivers {
        let _ = r.await;
    }
    let sent = sent.load(Ordering::Relaxed);
    let got = received.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let expected = sent * members as u64;
    Ok(json!({
        "scenario": "fanout",
        "members": members,
        "messages_per_second": (sent as f64 / elapsed).round(),
        "messages_sent": sent,
        "deliveries": got,
        "delivery_ratio": if expected > 0 { (got as f64 / expected as f64 * 10000.0).round() / 10000.0 } else { 0.0 },
        "deliveries_per_second": (got as f64 / elapsed).round(),
        "latency_ms_p50": percentile(&lat, 50.0),
        "latency_ms_p90": percentile(&lat, 90.0),
        "latency_ms_p99": percentile(&lat, 99.0),
        "latency_ms_p99_9": percentile(&lat, 99.9),
        "latency_ms_max": lat.last().copied().unwrap_or(0.0),
    }))
}

/// After an ingest run with a webhook: how many events were delivered during the run, and how
/// long the rest took (every acked message is one `message.created` event).
async fn drain(
    t: &Arc<Target>,
    metrics_url: &str,
    r: &mut Value,
    before: u64,
) -> anyhow::Result<()> {
    let acked = r["acked_messages"].as_u64().unwrap_or(0);
    let run = r["seconds"].as_f64().unwrap_or(1.0);
    let during = t.delivered(metrics_url).await?.saturating_sub(before);
    let started = Instant::now();
    let (mut delivered, mut progress) = (during, Instant::now());
    while delivered < acked {
        if progress.elapsed() > Duration::from_secs(30) {
            bail!("webhook deliveries stalled: {delivered} of {acked} delivered");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = t.delivered(metrics_url).await?.saturating_sub(before);
        if now > delivered {
            (delivered, progress) = (now, Instant::now());
        }
    }
    let drain = started.elapsed().as_secs_f64();
    r["webhook_delivered_during_run"] = json!(during);
    r["webhook_delivered_per_second_during_run"] = json!((during as f64 / run).round());
    r["webhook_drain_seconds_after_run"] = json!((drain * 10.0).round() / 10.0);
    r["webhook_delivered_per_second_overall"] = json!((acked as f64 / (run + drain)).round());
    Ok(())
}

async fn ingest(
    t: &Arc<Target>,
    senders: usize,
    window: usize,
    seconds: u64,
) -> anyhow::Result<Value> {
    let token = t.user("ingest").await?;
    let room = t.public_room(&token, "ingest").await?;
    let acked = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (t, token, room, acked, latencies) = (
            t.clone(),
            token.clone(),
            room.clone(),
            acked.clone(),
            latencies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut socket = t.socket(&token).await?;
            let ws = socket.inner_mut();
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut in_flight = std::collections::HashMap::new();
            let mut i = 0u64;
            let mut local = Vec::new();
            loop {
                while in_flight.len() < window && Instant::now() < deadline {
                    let cid = format!("{s}-{i}");
                    let frame =
                        json!({"type": "message", "room": room, "body": "x", "client_id": cid});
                    ws.feed(Message::Text(frame.to_string().into())).await?;
                    in_flight.insert(cid, Instant::now());
                    i += 1;
                }
                ws.flush().await?;
                if in_flight.is_empty() {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        let v: Value = serde_json::from_str(&text)?;
                        if v["type"] == "ack"
                            && let Some(sent) =
                                v["client_id"].as_str().and_then(|c| in_flight.remove(c))
                        {
                            local.push(sent.elapsed().as_secs_f64() * 1000.0);
                            acked.fetch_add(1, Ordering::Relaxed);
                        } else if v["type"] == "error" {
                            bail!("server refused a message: {v}");
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    other => bail!("socket ended: {other:?}"),
                }
            }
            latencies.lock().unwrap().append(&mut local);
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let acked = acked.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": "ingest",
        "senders": senders,
        "window": window,
        "acked_messages": acked,
        "seconds": (elapsed * 100.0).round() / 100.0,
        "committed_per_second": (acked as f64 / elapsed).round(),
        "ack_latency_ms_p50": percentile(&lat, 50.0),
        "ack_latency_ms_p99": percentile(&lat, 99.0),
        "ack_latency_ms_max": lat.last().copied().unwrap_or(0.0),
    }))
}
