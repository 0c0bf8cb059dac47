//! The `confab` binary as an operator runs it: clear startup errors, `migrate`, and a SIGTERM
//! that drains sockets with 1001 and exits 0.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::services::free_port;
use common::ws::{Closed, WAIT};
use common::{Postgres, Ws};
use serde_json::json;

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
