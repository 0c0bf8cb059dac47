//! A fleet: several confab processes (the real binary) on one PostgreSQL and one Redis, behind
//! nginx configured as ingress-nginx would be for WebSockets (upgrade headers, hour-long read
//! timeout, retry on another pod when one refuses or is gone). Pods can be stopped with SIGTERM,
//! killed with SIGKILL and started again on the same port.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::services::{Postgres, Redis, free_port};
use super::{Server, User};

pub const SECRET: &str = "fleet-test-secret-fleet-test-secret";

pub struct Pod {
    pub port: u16,
    pub metrics_port: u16,
    child: Option<Child>,
}

pub struct Fleet {
    pub pg: Postgres,
    pub redis: Redis,
    pub pods: Vec<Pod>,
    pub nginx_port: u16,
    nginx: Option<std::process::Child>,
    dir: tempfile::TempDir,
    /// Extra `CONFAB_*` settings every pod starts with.
    env: Vec<(String, String)>,
}

impl Fleet {
    /// Starts PostgreSQL, Redis, `n` pods and nginx in front of them.
    pub async fn start(n: usize) -> Fleet {
        Fleet::start_with(n, &[]).await
    }

    pub async fn start_with(n: usize, env: &[(&str, &str)]) -> Fleet {
        let pg = Postgres::start();
        let redis = Redis::start();
        let dir = tempfile::Builder::new()
            .prefix("confab-fleet")
            .tempdir()
            .expect("temp dir");
        let pods = (0..n)
            .map(|_| Pod {
                port: free_port(),
                metrics_port: free_port(),
                child: None,
            })
            .collect();
        let mut fleet = Fleet {
            pg,
            redis,
            pods,
            nginx_port: free_port(),
            nginx: None,
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for i in 0..n {
            fleet.start_pod(i).await;
        }
        fleet.start_nginx();
        fleet
    }

    /// The address clients use: nginx.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nginx_port))
    }

    /// REST helpers through nginx.
    pub fn server(&self) -> Server {
        Server::external(self.addr())
    }

    pub fn pod_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.pods[i].port))
    }

    pub async fn user(&self, name: &str) -> User {
        self.server().user(name).await
    }

    /// Starts pod `i` (again) on its port and waits until it is ready.
    pub async fn start_pod(&mut self, i: usize) {
        let pod = &self.pods[i];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CONFAB_LISTEN", format!("127.0.0.1:{}", pod.port))
            .env(
                "CONFAB_METRICS_LISTEN",
                format!("127.0.0.1:{}", pod.metrics_port),
            )
            .env("CONFAB_DATABASE_URL", &self.pg.url)
            .env("CONFAB_REDIS_URL", &self.redis.url)
            .env("CONFAB_JWT_SECRET", SECRET)
            .env("CONFAB_DRAIN_DELAY_SECS", "1")
            .env("CONFAB_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            // Every client comes from nginx's address: lift the per-address limits.
            .env("CONFAB_HTTP_RATE", "100000")
            .env("CONFAB_HTTP_BURST", "100000")
            .env("CONFAB_AUTH_RATE_PER_MINUTE", "100000")
            .env("CONFAB_AUTH_BURST", "100000")
            .env("CONFAB_MESSAGES_PER_SECOND", "100000")
            .env("CONFAB_MESSAGE_BURST", "100000")
            .env("CONFAB_WS_FRAMES_PER_SECOND", "100000")
            .env("CONFAB_WS_FRAMES_BURST", "100000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("confab starts");
        self.pods[i].child = Some(child);
        self.wait_ready(i, Duration::from_secs(30)).await;
    }

    /// Waits until pod `i` answers `/readyz` with 200.
    pub async fn wait_ready(&self, i: usize, within: Duration) {
        let url = format!("http://{}/readyz", self.pod_addr(i));
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pod {i} not ready within {within:?}");
    }

    /// `/readyz` of pod `i`: its status code, or None when it does not answer.
    pub async fn readyz(&self, i: usize) -> Option<u16> {
        reqwest::get(format!("http://{}/readyz", self.pod_addr(i)))
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    fn pid(&self, i: usize) -> u32 {
        self.pods[i]
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("pod is running")
    }

    /// Sends SIGTERM to pod `i` without waiting.
    pub fn sigterm(&mut self, i: usize) {
        let pid = self.pid(i);
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success());
    }

    /// Waits for pod `i` to exit; returns whether it exited with 0.
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> bool {
        let mut child = self.pods[i].child.take().expect("pod is running");
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => status.expect("wait").success(),
            Err(_) => panic!("pod {i} did not exit within {within:?}"),
        }
    }

    /// SIGKILL: the pod dies at once, without draining.
    pub async fn kill9(&mut self, i: usize) {
        let mut child = self.pods[i].child.take().expect("pod is running");
        child.start_kill().expect("kill -9");
        let _ = child.wait().await;
    }

    /// Peak resident memory of pod `i` in KiB (VmHWM), and now (VmRSS).
    pub fn memory_kib(&self, i: usize) -> (u64, u64) {
        let pid = self.pid(i);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    fn start_nginx(&mut self) {
        let dir = self.dir.path();
        let upstreams: String = self
            .pods
            .iter()
            .map(|p| {
                format!(
                    "    server 127.0.0.1:{} max_fails=1 fail_timeout=2s;\n",
                    p.port
                )
            })
            .collect();
        let conf = nginx_conf(dir, self.nginx_port, &upstreams);
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = std::process::Command::new(nginx_bin())
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx runs (is it installed?)");
        self.nginx = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.nginx_port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not listen: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn nginx_bin() -> String {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nginx")
        .to_string()
}

/// What ingress-nginx does for a WebSocket route: HTTP/1.1 upstream with the upgrade headers
/// passed on, a long read timeout, and the next pod tried when one refuses or answers 502/503
/// (a draining pod refuses new sockets with 503).
fn nginx_conf(dir: &Path, port: u16, upstreams: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream confab {{
{upstreams}  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://confab;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_connect_timeout 2s;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      proxy_next_upstream error timeout http_502 http_503;
      proxy_next_upstream_tries 3;
    }}
  }}
}}
"
    )
}

impl Drop for Fleet {
    /// Stops nginx with SIGTERM, which makes its master stop the workers too (SIGKILL to the
    /// master alone left its workers running, still holding the port); SIGKILL only if it has
    /// not exited within 5 s.
    fn drop(&mut self) {
        if let Some(mut n) = self.nginx.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &n.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(n.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}
