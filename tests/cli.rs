//! The `confab` binary as an operator runs it: clear startup errors, `migrate`, and a SIGTERM
//! that drains sockets with 1001 and exits 0.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::services::free_port;
use common::ws::{Closed, WAIT};
use common::{Postgres, Ws};
use serde_json::{Value, json};

fn confab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_confab"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CONFAB_") {
            c.env_remove(k);
        }
    }
    c
}

fn fails_naming(args: &[&str], envs: &[(&str, &str)], needle: &str) {
    let out = confab()
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "{args:?}: stderr should name {needle}:\n{err}"
    );
    assert_eq!(
        err.trim().lines().count().min(20),
        err.trim().lines().count(),
        "short error"
    );
}

#[test]
fn bad_settings_stop_startup_with_one_clear_line() {
    fails_naming(
        &["--redis-url", "redis://127.0.0.1:1"],
        &[],
        "CONFAB_JWT_SECRET",
    );
    fails_naming(&[], &[("CONFAB_LISTEN", "not-an-address")], "--listen");
    fails_naming(&["--database-url", "mysql://x"], &[], "CONFAB_DATABASE_URL");
    fails_naming(&["--jwt-secret", "short"], &[], "CONFAB_JWT_SECRET");
    fails_naming(&["--log-format", "xml"], &[], "--log-format");
    fails_naming(
        &["--database-max-connections", "0"],
        &[],
        "--database-max-connections",
    );
    fails_naming(&["--webhook-lease-secs", "5"], &[], "--webhook-lease-secs");
    fails_naming(
        &["--webhook-retention-hours", "0"],
        &[],
        "--webhook-retention-hours",
    );
    // A Redis Cluster is named as such: the flag needs nodes, and a list needs the flag.
    let pg = ["--database-url", "postgres://db/chat"];
    let secret = ["--jwt-secret", "a-secret-of-at-least-thirty-two-bytes"];
    fails_naming(
        &[&pg[..], &secret[..], &["--redis-cluster"]].concat(),
        &[],
        "CONFAB_REDIS_URL",
    );
    fails_naming(
        &[
            &pg[..],
            &secret[..],
            &["--redis-url", "redis://a:6379,redis://b:6379"],
        ]
        .concat(),
        &[],
        "CONFAB_REDIS_CLUSTER",
    );
    // Sentinel: the master's name is required, and Sentinel is not a Cluster.
    fails_naming(
        &[
            &pg[..],
            &secret[..],
            &["--redis-url", "redis+sentinel://s1:26379,s2:26379"],
        ]
        .concat(),
        &[],
        "names the master",
    );
    fails_naming(
        &[
            &pg[..],
            &secret[..],
            &["--redis-cluster", "--redis-url", "redis+sentinel://s1/m"],
        ]
        .concat(),
        &[],
        "CONFAB_REDIS_CLUSTER",
    );
    // A database that is not there is named too.
    let port = free_port();
    fails_naming(
        &[
            "migrate",
            "--database-url",
            &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        ],
        &[],
        "CONFAB_DATABASE_URL",
    );
}

#[test]
fn migrate_prepares_both_databases() {
    let dir = tempfile::tempdir().unwrap();
    let out = confab()
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("confab.db").exists());
    let pg = Postgres::start();
    let out = confab()
        .args(["migrate", "--database-url", &pg.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Running it again is a no-op.
    let out = confab()
        .args(["migrate", "--database-url", &pg.url])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// The chart's migration Job runs `confab migrate`; the pods then start with
/// `--migrate-on-start=false` and refuse a schema older than themselves with the step that fixes
/// it. A schema one release ahead (after a rollback) does not stop the older release.
#[tokio::test]
async fn pods_that_do_not_migrate_refuse_an_old_schema_and_accept_a_newer_one() {
    let pg = Postgres::start();
    let serve = |port: u16| {
        let mut c = confab();
        c.args([
            "serve",
            "--migrate-on-start=false",
            "--database-url",
            &pg.url,
            "--jwt-secret",
            "a-secret-of-at-least-thirty-two-bytes",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
        c
    };
    let out = serve(free_port()).output().unwrap();
    assert!(!out.status.success(), "an empty database must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("confab migrate"), "{err}");
    assert!(err.contains("CONFAB_MIGRATE_ON_START"), "{err}");

    let out = confab()
        .args(["migrate", "--database-url", &pg.url])
        .output()
        .unwrap();
    assert!(out.status.success());
    // A migration from a later release is recorded: this release still migrates and serves.
    let db = sqlx::PgPool::connect(&pg.url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (29991231000000, 'from a later release', true, '\\x00'::bytea, 1)",
    )
    .execute(&db)
    .await
    .unwrap();
    let out = confab()
        .args(["migrate", "--database-url", &pg.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // It serves without migrating, within its pool: 40 readiness checks at once (each a
    // store query) open no more than --database-max-connections to PostgreSQL.
    db.close().await;
    let port = free_port();
    let mut child = serve(port)
        .args(["--database-max-connections", "3"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = answers_health(port).await;
    let checks = (0..40).map(|_| reqwest::get(format!("http://127.0.0.1:{port}/readyz")));
    let ready = futures::future::join_all(checks).await;
    let mut probe = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url)
        .await
        .unwrap();
    let (open,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut probe)
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(up, "a migrated database serves without migrating");
    assert!(
        ready
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
    );
    assert!(
        (1..=3).contains(&open),
        "{open} connections with --database-max-connections 3"
    );
}

/// Whether the binary on `port` answers /healthz within 20 s.
async fn answers_health(port: u16) -> bool {
    let health = format!("http://127.0.0.1:{port}/healthz");
    common::eventually(Duration::from_secs(20), || async {
        reqwest::get(&health)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
}

#[tokio::test]
async fn sigterm_drains_sockets_with_1001_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    assert!(
        common::eventually(Duration::from_secs(20), || async {
            http.get(format!("{base}/healthz")).send().await.is_ok()
        })
        .await,
        "the binary did not come up"
    );
    let reg = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"username": "alice", "password": "password1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reg.status(), 201);
    let tokens: serde_json::Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "alice", "password": "password1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ws = Ws::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        tokens["access_token"].as_str(),
    )
    .await
    .unwrap();
    ws.expect("hello").await;

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(ws.expect_close(WAIT).await, Closed::Code(1001));
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    // Logs are JSON lines on stdout, and they never contain a token.
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout)
        .await
        .unwrap();
    assert!(stdout.lines().count() >= 3, "{stdout}");
    for line in stdout.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(!stdout.contains(tokens["access_token"].as_str().unwrap()));
    assert!(stdout.contains("shutdown complete"));
}

#[test]
fn the_shipped_crds_are_generated_from_the_code() {
    let out = confab().arg("crd").output().unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/k8s/crds/confab.dev.yaml"
    ))
    .unwrap();
    assert_eq!(
        generated, shipped,
        "k8s/crds/confab.dev.yaml is stale: run `confab crd > k8s/crds/confab.dev.yaml`"
    );
    assert!(
        generated.contains("name: chatrooms.confab.dev")
            && generated.contains("name: chatpolicies.confab.dev")
    );
    assert!(
        generated.contains("^[a-z0-9_-]{1,64}$"),
        "validation is in the schema"
    );
}

#[tokio::test]
async fn selftest_makes_a_real_round_trip_and_fails_loudly() {
    let s = common::Server::embedded().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["selftest", "--url", &format!("http://{}", s.addr)])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("selftest ok"), "{stdout}");
    // Nothing listening: a clear failure, not a hang.
    let port = free_port();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["selftest", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("selftest failed"));
}

/// A stand-in OTLP/HTTP collector: records the bodies posted to /v1/traces.
async fn collector() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use axum::routing::post;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let record = record.clone();
            async move {
                record.lock().unwrap().extend_from_slice(&body);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

#[tokio::test]
async fn traces_are_exported_over_otlp_when_configured() {
    let (otlp, seen) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (mut child, s) = common::spawn_binary(
        &["--data-dir", data],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("OTEL_SERVICE_NAME", "confab-under-test".into()),
        ],
    )
    .await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    alice.post_message(&room, "traced").await;
    let found = |needle: &'static [u8]| {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
            }
        }
    };
    for span in [
        &b"http_request"[..],
        b"commit_batch",
        b"publish_message",
        b"confab-under-test",
    ] {
        assert!(
            common::eventually(Duration::from_secs(10), found(span)).await,
            "no {} in what the collector received",
            String::from_utf8_lossy(span)
        );
    }
    child.kill().await.unwrap();
}

/// A collector that keeps every request body, to decode them as OTLP.
async fn collector_requests() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    use axum::routing::post;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// (service name, span name, trace id) of every span received.
fn spans(bodies: &[Vec<u8>]) -> Vec<(String, String, Vec<u8>)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let mut out = Vec::new();
    for body in bodies {
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push((service.clone(), span.name, span.trace_id));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn one_messages_trace_crosses_pods() {
    let pg = common::Postgres::start();
    let redis = common::Redis::start();
    let (otlp, seen) = collector_requests().await;
    let mut pods = Vec::new();
    for name in ["pod-a", "pod-b"] {
        pods.push(
            common::spawn_binary(
                &["--database-url", &pg.url, "--redis-url", &redis.url],
                &[
                    (
                        "CONFAB_JWT_SECRET",
                        "trace-test-secret-trace-test-secret-trace".into(),
                    ),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
                    ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
                    ("OTEL_SERVICE_NAME", name.into()),
                ],
            )
            .await,
        );
    }
    // The receiver subscribes on pod b; the sender posts on pod a.
    let (a, b) = (&pods[0].1, &pods[1].1);
    let alice = a.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let alice_b = b.login("alice").await;
    let mut ws = alice_b.subscribed(&room).await;
    alice.post_message(&room, "across").await;
    assert_eq!(ws.expect("message").await["body"], "across");
    let crossed = || {
        let seen = seen.clone();
        async move {
            let all = spans(&seen.lock().unwrap());
            let commits: Vec<&Vec<u8>> = all
                .iter()
                .filter(|(s, n, _)| s.contains("pod-a") && n == "commit_batch")
                .map(|(_, _, t)| t)
                .collect();
            all.iter()
                .any(|(s, n, t)| s.contains("pod-b") && n == "deliver" && commits.contains(&t))
        }
    };
    assert!(
        common::eventually(Duration::from_secs(10), crossed).await,
        "pod b's deliver span should share the trace of pod a's commit: {:?}",
        spans(&seen.lock().unwrap())
            .iter()
            .map(|(s, n, _)| format!("{s}/{n}"))
            .collect::<Vec<_>>()
    );
    for (mut child, _) in pods {
        child.kill().await.unwrap();
    }
}

/// Runs a `confab-bench --json` command; its result, or a failure showing what it printed.
async fn bench_json(mut cmd: std::process::Command) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn the_bench_drives_every_scenario_through_the_real_protocol() {
    let (mut config, dir) = common::embedded();
    config.http_burst = 100_000;
    config.auth_burst = 100_000;
    config.max_connections_per_user = 1_000;
    config.messages_per_second = 100_000;
    config.message_burst = 100_000;
    config.ws_frames_per_second = 100_000;
    config.ws_frames_burst = 100_000;
    let s = common::Server::start_with(config, Some(dir)).await;
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_confab-bench"));
        cmd.args(["--url", &format!("http://{}", s.addr), "--json"])
            .args(args);
        cmd
    };
    let idle = bench_json(run(&[
        "--bind",
        "127.0.0.1,127.0.0.2",
        "idle",
        "--connections",
        "40",
        "--settle",
        "0",
    ]))
    .await;
    assert_eq!(idle["connections"], 40);
    let fanout = bench_json(run(&[
        "fanout",
        "--members",
        "20",
        "--senders",
        "1",
        "--rate",
        "20",
        "--seconds",
        "1",
    ]))
    .await;
    assert_eq!(fanout["delivery_ratio"], 1.0, "{fanout}");
    assert!(fanout["latency_ms_p99"].as_f64().unwrap() > 0.0);
    let ingest = bench_json(run(&[
        "ingest",
        "--senders",
        "4",
        "--window",
        "4",
        "--seconds",
        "1",
    ]))
    .await;
    assert!(ingest["acked_messages"].as_u64().unwrap() > 0, "{ingest}");
    assert!(ingest["bench_cpu_percent"].is_number());
    // Ten sign-ins at once: the queue (128) takes them all.
    let logins = bench_json(run(&["logins", "--count", "10"])).await;
    assert_eq!(
        (&logins["signed_in"], &logins["refused_busy_503"]),
        (&json!(10), &json!(0)),
        "{logins}"
    );
}

#[tokio::test]
async fn the_bench_crosses_pods_through_redis() {
    let pg = common::Postgres::start();
    let redis = common::Redis::start();
    let config = || {
        let mut c = common::unlimited(common::cluster(&pg, &redis));
        c.http_burst = 100_000;
        c.auth_burst = 100_000;
        c
    };
    let a = common::Server::start(config()).await;
    let b = common::Server::start(config()).await;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_confab-bench"));
    cmd.args([
        "--url",
        &format!("http://{}", a.addr),
        "--json",
        "cross-pod",
    ])
    .args(["--receive-url", &format!("http://{}", b.addr)])
    .args([
        "--members",
        "5",
        "--senders",
        "2",
        "--rate",
        "20",
        "--seconds",
        "1",
    ]);
    let r = bench_json(cmd).await;
    assert_eq!(r["scenario"], "cross-pod");
    assert_eq!(r["delivery_ratio"], 1.0, "{r}");
    // Every delivery reached the receivers through the other pod, by way of the bus.
    let received =
        common::metric(&b.metrics().await, "confab_bus_lag_seconds_count").unwrap_or(0.0);
    assert!(
        received >= r["messages_sent"].as_f64().unwrap(),
        "{r} {received}"
    );
}

#[test]
fn the_server_raises_its_open_files_limit_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    // Started the way a container runtime often starts it: a small soft limit under a larger
    // hard one.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -S -n 256 && exec {} serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0",
            env!("CARGO_BIN_EXE_confab")
        ))
        .env("CONFAB_DATA_DIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let open_files = || -> Option<(String, String)> {
        // Only once the shell has become the server (before, its limits are the shell's).
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        if exe.file_name()? != "confab" {
            return None;
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let mut f = line.split_whitespace().skip(3);
        Some((f.next()?.to_string(), f.next()?.to_string()))
    };
    let started = std::time::Instant::now();
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(20) {
        seen = open_files();
        if let Some((soft, hard)) = &seen
            && soft == hard
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let (soft, hard) = seen.expect("the server's limits");
    assert_eq!(soft, hard, "soft open-files limit not raised");
    assert_ne!(soft, "256");
}

/// Kilobytes of a /proc/<pid>/status line (VmRSS now, VmHWM the peak so far).
fn proc_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

/// A login storm costs bounded memory: 300 sign-ins at once against a server whose limits let
/// them all through (as behind an ingress with many clients). One hash per core runs, a queue of
/// 64 waits, the rest are answered 503 with Retry-After; the server's peak RSS stays within
/// 200 MiB of where it was, and everyone refused signs in when they retry.
#[tokio::test]
async fn a_login_storm_costs_bounded_memory_and_the_refused_are_told_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = confab()
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", "127.0.0.1:0", "--trust-forwarded-for"])
        .args(["--auth-rate-per-minute", "100000", "--auth-burst", "100000"])
        .args(["--http-rate", "100000", "--http-burst", "100000"])
        .args(["--password-hash-queue", "64"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    assert!(answers_health(port).await, "the server starts");
    let login = |i: usize| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.post(format!("{base}/api/v1/auth/login"))
                .header("x-forwarded-for", format!("10.1.{}.{}", i / 256, i % 256))
                .json(&json!({"username": "storm", "password": "storm-password"}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"username": "storm", "password": "storm-password"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(login(0).await.status(), 200);
    let pid = child.id();
    let before = proc_kib(pid, "VmRSS:");

    let storm: Vec<_> = (1..=300).map(|i| tokio::spawn(login(i))).collect();
    let mut refused = Vec::new();
    let mut signed_in = 0;
    for (i, task) in storm.into_iter().enumerate() {
        let r = task.await.unwrap();
        match r.status().as_u16() {
            200 => signed_in += 1,
            503 => {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "unavailable");
                refused.push((i + 1, retry));
            }
            other => panic!("a sign-in in the storm was answered {other}"),
        }
    }
    let peak = proc_kib(pid, "VmHWM:");
    assert!(signed_in >= 64, "the queue's worth signed in: {signed_in}");
    assert!(
        !refused.is_empty(),
        "beyond the queue, sign-ins are refused"
    );
    assert!(
        peak.saturating_sub(before) < 200 * 1024,
        "peak RSS {peak} KiB, {before} KiB before the storm: more than 200 MiB for 300 sign-ins"
    );
    // The refused come back when told to, a few at a time, and get in.
    let wait = refused.iter().map(|(_, s)| *s).max().unwrap();
    tokio::time::sleep(Duration::from_secs(wait)).await;
    for chunk in refused.chunks(16) {
        let again: Vec<_> = chunk.iter().map(|(i, _)| tokio::spawn(login(*i))).collect();
        for task in again {
            assert_eq!(task.await.unwrap().status(), 200);
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
