//! Throwaway PostgreSQL and Redis servers, each on a free port in its own temp dir, stopped and
//! removed when dropped. Tests never share one.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free now, below the kernel's ephemeral range: a port the kernel handed out (bind to
/// port 0) can be handed out again for some test's outgoing connection before the server that
/// is meant to listen on it starts ("Address already in use"); a port below the range is only
/// ever taken by a listener.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    assert!(
        low > 12000,
        "the ephemeral port range starts too low to pick from below it"
    );
    for _ in 0..1000 {
        let port = rand::random_range(10000..low);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}

fn is_root() -> bool {
    // SAFETY-free check: `id -u` avoids libc here.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root, so under root it runs as the `postgres` user.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn pg_bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("CONFAB_PG_BIN") {
        return PathBuf::from(dir).join(name);
    }
    // Debian keeps the server binaries out of PATH.
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    match versions.last() {
        Some(v) => v.join("bin").join(name),
        None => PathBuf::from(name),
    }
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on {port} within 30 s");
}

pub struct Postgres {
    pub url: String,
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("confab-pg")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown of the PostgreSQL temp dir failed");
        }
        let out = as_postgres(&pg_bin("initdb"))
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ])
            .output()
            .expect("initdb runs (is PostgreSQL installed?)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            url: String::new(),
            port: 0,
            child: None,
            dir,
        };
        pg.launch();
        pg
    }

    /// Starts the server (again, after `stop`, on the same port and data).
    pub fn launch(&mut self) {
        let port = if self.port == 0 {
            free_port()
        } else {
            self.port
        };
        let data = self.dir.path().join("data");
        let mut child = as_postgres(&pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        wait_for_port(port, "postgres", &mut child);
        self.port = port;
        self.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        self.child = Some(child);
        // Accepting TCP is not yet accepting queries: wait for a real answer.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let ok = Command::new(pg_bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("postgres not ready");
    }

    /// Stops the server (a fast shutdown) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Redis {
    pub url: String,
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("confab-redis")
            .tempdir()
            .expect("temp dir");
        let mut r = Redis {
            url: String::new(),
            port: 0,
            child: None,
            dir,
        };
        r.launch();
        r
    }

    pub fn launch(&mut self) {
        let port = if self.port == 0 {
            free_port()
        } else {
            self.port
        };
        let child = redis_node(self.dir.path(), port, &[]);
        self.port = port;
        self.url = format!("redis://127.0.0.1:{port}");
        self.child = Some(child);
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of three masters (no replicas), each in its own temp dir, created with
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    /// The nodes as a comma-separated list of URLs (CONFAB_REDIS_URL with --redis-cluster).
    pub urls: String,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// A free port whose cluster-bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::Builder::new()
            .prefix("confab-redis-cluster")
            .tempdir()
            .expect("temp dir");
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for _ in 0..3 {
            let port = free_cluster_port();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs");
            wait_for_port(port, "redis-server (cluster node)", &mut child);
            ports.push(port);
            children.push(child);
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every node must agree the cluster is up before clients use it.
        let started = Instant::now();
        for p in &ports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the Redis Cluster did not come up"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster {
            urls: ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(","),
            children,
            _dir: dir,
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Redis master, one replica and one `redis-sentinel` watching them as `mymaster`, quick to
/// fail over (the master is down after 1 s). `url` is the `redis+sentinel://` URL for confab.
pub struct RedisSentinel {
    pub url: String,
    pub master_port: u16,
    pub replica_port: u16,
    pub sentinel_port: u16,
    master: Option<Child>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// A redis-server on `port` without persistence, started and listening.
fn redis_node(dir: &Path, port: u16, extra: &[&str]) -> Child {
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (is it installed?)");
    wait_for_port(port, "redis-server", &mut child);
    child
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        let dir = tempfile::Builder::new()
            .prefix("confab-redis-sentinel")
            .tempdir()
            .expect("temp dir");
        let (master_port, replica_port, sentinel_port) = (free_port(), free_port(), free_port());
        let master_dir = dir.path().join("master");
        let replica_dir = dir.path().join("replica");
        std::fs::create_dir_all(&master_dir).unwrap();
        std::fs::create_dir_all(&replica_dir).unwrap();
        let master = redis_node(&master_dir, master_port, &[]);
        let replica = redis_node(
            &replica_dir,
            replica_port,
            &["--replicaof", "127.0.0.1", &master_port.to_string()],
        );
        // Sentinel rewrites its configuration file, so it gets one of its own.
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut sentinel = Command::new("redis-sentinel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel runs (Debian package redis-sentinel)");
        wait_for_port(sentinel_port, "redis-sentinel", &mut sentinel);
        let s = RedisSentinel {
            url: format!("redis+sentinel://127.0.0.1:{sentinel_port}/mymaster"),
            master_port,
            replica_port,
            sentinel_port,
            master: Some(master),
            children: vec![replica, sentinel],
            _dir: dir,
        };
        // A failover needs a replica the sentinel knows and that has synced.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let replicas = redis_cli(sentinel_port, &["SENTINEL", "REPLICAS", "mymaster"]);
            let synced = redis_cli(replica_port, &["INFO", "replication"]);
            if replicas.contains(&replica_port.to_string())
                && synced.contains("master_link_status:up")
            {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the sentinel did not learn of the replica within 30 s");
    }

    /// The master dies at once (SIGKILL); the sentinel promotes the replica.
    pub fn kill_master(&mut self) {
        if let Some(mut c) = self.master.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The port of the master the sentinel names now.
    pub fn current_master_port(&self) -> Option<u16> {
        let out = redis_cli(
            self.sentinel_port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.kill_master();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
