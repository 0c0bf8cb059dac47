//! Shared test helpers: throwaway PostgreSQL and Redis servers started from the machine's
//! binaries, confab itself on `127.0.0.1:0`, and REST and WebSocket clients whose methods read
//! like the protocol (`alice.send(...)`, `bob.expect("message")`).

#![allow(dead_code)]

pub mod checker;
pub mod fleet;
pub mod services;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use confab::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use services::{Postgres, Redis};
pub use ws::Ws;

/// A confab instance running inside the test process.
pub struct Server {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _data: Option<tempfile::TempDir>,
}

/// An embedded-shape configuration (SQLite in a temp dir, in-process bus).
pub fn embedded() -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    (Config::for_tests(dir.path().to_path_buf()), dir)
}

/// Lifts the per-connection message and frame limits, for tests that send as fast as they can.
pub fn unlimited(mut c: Config) -> Config {
    c.messages_per_second = 1_000_000;
    c.message_burst = 1_000_000;
    c.ws_frames_per_second = 1_000_000;
    c.ws_frames_burst = 1_000_000;
    c
}

/// An embedded-shape server without the per-connection message limit.
pub async fn flood_server() -> Server {
    let (config, dir) = embedded();
    Server::start_with(unlimited(config), Some(dir)).await
}

/// A cluster-shape configuration: PostgreSQL and Redis.
pub fn cluster(pg: &Postgres, redis: &Redis) -> Config {
    let mut c = Config::for_tests(PathBuf::from("/nonexistent-unused"));
    c.database_url = Some(pg.url.clone());
    c.redis_url = Some(redis.url.clone());
    c.jwt_secret = Some("cluster-test-secret-cluster-test-secret".into());
    c
}

impl Server {
    /// Starts the embedded shape with default settings.
    pub async fn embedded() -> Server {
        let (config, dir) = embedded();
        Server::start_with(config, Some(dir)).await
    }

    pub async fn start(config: Config) -> Server {
        Server::start_with(config, None).await
    }

    pub async fn start_with(config: Config, data: Option<tempfile::TempDir>) -> Server {
        config.validate().expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let metrics = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let addr = listener.local_addr().unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(confab::server::run(config, listener, metrics, async move {
            let _ = stopped.await;
        }));
        let server = Server {
            addr,
            metrics_addr,
            stop: Some(stop),
            task: Some(task),
            _data: data,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(self.url("/healthz")).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("confab did not come up on {}", self.addr);
    }

    /// A handle to a confab started elsewhere (a subprocess); `shutdown` is not available.
    pub fn external(addr: SocketAddr) -> Server {
        Server {
            addr,
            metrics_addr: addr,
            stop: None,
            task: None,
            _data: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn api(&self) -> Api {
        Api {
            base: format!("http://{}", self.addr),
            client: reqwest::Client::new(),
            token: None,
        }
    }

    /// Registers `name` and logs in.
    pub async fn user(&self, name: &str) -> User {
        let api = self.api();
        let (status, body) = api
            .call(
                Method::POST,
                "/api/v1/auth/register",
                Some(json!({"username": name, "password": "correct horse"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register {name}: {body}");
        self.login(name).await
    }

    pub async fn login(&self, name: &str) -> User {
        let (status, tokens) = self
            .api()
            .call(
                Method::POST,
                "/api/v1/auth/login",
                Some(json!({"username": name, "password": "correct horse"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {name}: {tokens}");
        let token = tokens["access_token"].as_str().unwrap().to_string();
        let api = self.api().with_token(&token);
        let (_, me) = api.call(Method::GET, "/api/v1/users/me", None).await;
        User {
            id: me["id"].as_str().unwrap().to_string(),
            name: name.to_string(),
            token,
            refresh: tokens["refresh_token"].as_str().unwrap().to_string(),
            api,
            addr: self.addr,
        }
    }

    /// Triggers a graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("shutdown within 30 s")
            .expect("join")
    }

    /// The text of the metrics endpoint.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A REST client, optionally authenticated.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub token: Option<String>,
}

impl Api {
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(body)).await
    }
    pub async fn put(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::PUT, path, None).await
    }
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }
}

/// A logged-in test user.
#[derive(Clone)]
pub struct User {
    pub id: String,
    pub name: String,
    pub token: String,
    pub refresh: String,
    pub api: Api,
    pub addr: SocketAddr,
}

impl User {
    /// Creates a room owned by this user; returns its id.
    pub async fn create_room(&self, name: &str, kind: &str) -> String {
        let (s, room) = self
            .api
            .post("/api/v1/rooms", json!({"name": name, "kind": kind}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "create room: {room}");
        room["id"].as_str().unwrap().to_string()
    }

    /// Creates `n` public rooms named `r0`, `r1`, …; returns their ids in that order.
    pub async fn create_public_rooms(&self, n: usize) -> Vec<String> {
        let mut rooms = Vec::with_capacity(n);
        for i in 0..n {
            rooms.push(self.create_room(&format!("r{i}"), "public").await);
        }
        rooms
    }

    pub async fn join(&self, room: &str) {
        let (s, body) = self
            .api
            .post(&format!("/api/v1/rooms/{room}/join"), json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "join: {body}");
    }

    /// Sends over REST; returns the message.
    pub async fn post_message(&self, room: &str, body: &str) -> Value {
        let (s, m) = self
            .api
            .post(
                &format!("/api/v1/rooms/{room}/messages"),
                json!({"body": body}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "send: {m}");
        m
    }

    /// Opens an authenticated socket and reads `hello`.
    pub async fn connect(&self) -> Ws {
        let mut ws = Ws::connect(self.addr, Some(&self.token))
            .await
            .expect("connect");
        ws.expect("hello").await;
        ws
    }

    /// Opens a socket and subscribes to `room`.
    pub async fn subscribed(&self, room: &str) -> Ws {
        let mut ws = self.connect().await;
        ws.subscribe(room, None).await;
        ws
    }
}

/// The real `confab` binary serving on a free port with extra arguments and environment,
/// returned once `/healthz` answers. The process is killed when the child is dropped.
pub async fn spawn_binary(
    args: &[&str],
    envs: &[(&str, String)],
) -> (tokio::process::Child, Server) {
    let port = services::free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("confab starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let http = reqwest::Client::new();
    let up = eventually(Duration::from_secs(20), || async {
        http.get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    assert!(up, "the confab binary did not come up on {addr}");
    (child, Server::external(addr))
}

/// The value of one sample (`series` exactly as exposed, labels included) in a `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `f` until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
