//! Command-line and environment configuration. Every flag is also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(name = "confab", version, about = "Real-time multi-room chat server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Serve the chat protocol (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the ChatRoom and ChatPolicy CRDs as YAML.
    Crd,
    /// Print the AsyncAPI 3 document of the WebSocket protocol (JSON).
    Asyncapi,
    /// A real round trip through a running confab (register, room, two sockets, a message),
    /// for `helm test` and end-to-end checks. Exits non-zero if anything fails.
    Selftest {
        /// Base URL of the confab to test, e.g. http://confab:80.
        #[arg(long)]
        url: String,
        /// Base URL the receiving socket connects to (another pod); defaults to --url.
        #[arg(long)]
        peer_url: Option<String>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address of the public HTTP and WebSocket listener.
    #[arg(
        long,
        env = "CONFAB_LISTEN",
        default_value = "0.0.0.0:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Address of the Prometheus metrics listener.
    #[arg(
        long,
        env = "CONFAB_METRICS_LISTEN",
        default_value = "0.0.0.0:9090",
        global = true
    )]
    pub metrics_listen: SocketAddr,

    /// Folder for the SQLite database (embedded shape) and other local files.
    #[arg(long, env = "CONFAB_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// PostgreSQL URL (postgres://...). Unset means SQLite in the data dir.
    #[arg(long, env = "CONFAB_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Most PostgreSQL connections this pod opens. Size it so that pods × this stays below the
    /// server's `max_connections` (minus what other clients need); docs/configuration.md.
    #[arg(
        long,
        env = "CONFAB_DATABASE_MAX_CONNECTIONS",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(2..=1000),
        global = true
    )]
    pub database_max_connections: u32,

    /// Apply pending database migrations when the server starts. With `false` the server only
    /// checks that the schema is current and refuses to start otherwise (for installs where
    /// `confab migrate` runs first, as the chart's migration Job does).
    #[arg(long, env = "CONFAB_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub migrate_on_start: bool,

    /// Redis URL: redis://host:6379 (or rediss:// with TLS), or Sentinel as
    /// redis+sentinel://[:password@]sentinel-0:26379,sentinel-1:26379/mymaster. Unset means the
    /// in-process bus (a single pod).
    #[arg(long, env = "CONFAB_REDIS_URL", global = true)]
    pub redis_url: Option<String>,

    /// Treat CONFAB_REDIS_URL as a comma-separated list of Redis Cluster nodes and use sharded
    /// Pub/Sub (SSUBSCRIBE/SPUBLISH, Redis 7 or later).
    #[arg(long, env = "CONFAB_REDIS_CLUSTER", global = true)]
    pub redis_cluster: bool,

    /// HS256 secret for access tokens. Required with --redis-url; otherwise generated once and
    /// kept in the database.
    #[arg(long, env = "CONFAB_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,

    /// Comma-separated usernames that are global administrators.
    #[arg(long, env = "CONFAB_ADMINS", value_delimiter = ',', global = true)]
    pub admins: Vec<String>,

    /// Whether people may register and sign in with a confab password. With `false` only the
    /// OpenID provider's tokens and bots' API keys sign in (existing sessions keep working
    /// until they expire).
    #[arg(long, env = "CONFAB_LOCAL_ACCOUNTS", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub local_accounts: bool,

    /// Issuer URL of the OpenID provider whose tokens sign people in (its discovery document is
    /// at `<issuer>/.well-known/openid-configuration`). Needs --oidc-audience.
    #[arg(long, env = "CONFAB_OIDC_ISSUER", global = true)]
    pub oidc_issuer: Option<String>,

    /// The audience (`aud`) the provider's tokens must carry for confab. Needs --oidc-issuer.
    #[arg(long, env = "CONFAB_OIDC_AUDIENCE", global = true)]
    pub oidc_audience: Option<String>,

    /// The claim a new external account takes its username from.
    #[arg(
        long,
        env = "CONFAB_OIDC_USERNAME_CLAIM",
        default_value = "preferred_username",
        global = true
    )]
    pub oidc_username_claim: String,

    /// A value of the tokens' `groups` claim that makes its holder a global admin.
    #[arg(long, env = "CONFAB_OIDC_ADMIN_GROUP", global = true)]
    pub oidc_admin_group: Option<String>,

    /// The client id the web client signs in with (authorization code with PKCE); without it
    /// the web client offers no provider button.
    #[arg(long, env = "CONFAB_OIDC_CLIENT_ID", global = true)]
    pub oidc_client_id: Option<String>,

    /// Let webhooks reach loopback, private and link-local addresses (refused by default, so
    /// that a webhook cannot be aimed at the cluster's own services or cloud metadata).
    #[arg(long, env = "CONFAB_WEBHOOK_ALLOW_PRIVATE", global = true)]
    pub webhook_allow_private: bool,

    /// Seconds a pod's claim on a webhook event lasts: when a pod dies mid-delivery, another
    /// takes its events after this. A pod never starts an attempt its claim would not outlast.
    #[arg(
        long,
        env = "CONFAB_WEBHOOK_LEASE_SECS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(30..=3600),
        global = true
    )]
    pub webhook_lease_secs: u64,

    /// Hours delivered and failed webhook events, and their attempts, are kept for
    /// `GET …/deliveries` before they are pruned (every row is a message's worth of JSON: at
    /// high rates keep this short).
    #[arg(
        long,
        env = "CONFAB_WEBHOOK_RETENTION_HOURS",
        default_value_t = 168,
        value_parser = clap::value_parser!(u64).range(1..=8760),
        global = true
    )]
    pub webhook_retention_hours: u64,

    /// Log format: json for production, pretty for a terminal.
    #[arg(
        long,
        env = "CONFAB_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,

    /// Access-token lifetime in seconds.
    #[arg(
        long,
        env = "CONFAB_ACCESS_TOKEN_TTL",
        default_value_t = 900,
        global = true
    )]
    pub access_token_ttl: u64,

    /// Refresh-token lifetime in seconds.
    #[arg(long, env = "CONFAB_REFRESH_TOKEN_TTL", default_value_t = 7 * 24 * 3600, global = true)]
    pub refresh_token_ttl: u64,

    /// Interval of server WebSocket pings, in milliseconds.
    #[arg(
        long,
        env = "CONFAB_HEARTBEAT_MS",
        default_value_t = 25_000,
        global = true
    )]
    pub heartbeat_ms: u64,

    /// Frames each connection may have queued before it is closed as a slow consumer (1008).
    #[arg(
        long,
        env = "CONFAB_OUTBOUND_QUEUE",
        default_value_t = 1024,
        global = true
    )]
    pub outbound_queue: usize,

    /// Seconds a draining pod keeps serving while load balancers drop it, before closing
    /// sockets.
    #[arg(
        long,
        env = "CONFAB_DRAIN_DELAY_SECS",
        default_value_t = 0,
        global = true
    )]
    pub drain_delay_secs: u64,

    /// Milliseconds a socket opened without a token has to send its `auth` frame.
    #[arg(
        long,
        env = "CONFAB_WS_AUTH_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub ws_auth_timeout_ms: u64,

    /// Where attachment bytes go: `s3://bucket/prefix` (credentials, region and endpoint from
    /// the usual AWS_* variables) or `file:///path`. Unset: a folder in the data dir.
    #[arg(long, env = "CONFAB_ATTACHMENTS_URL", global = true)]
    pub attachments_url: Option<String>,

    /// Largest attachment, in bytes.
    #[arg(long, env = "CONFAB_MAX_ATTACHMENT_BYTES", default_value_t = 10 * 1024 * 1024, global = true)]
    pub max_attachment_bytes: u64,

    /// Messages per second one connection may send (sustained); see --message-burst.
    #[arg(
        long,
        env = "CONFAB_MESSAGES_PER_SECOND",
        default_value_t = 10,
        global = true
    )]
    pub messages_per_second: u32,

    /// Messages one connection may send in a burst above the sustained rate.
    #[arg(
        long,
        env = "CONFAB_MESSAGE_BURST",
        default_value_t = 20,
        global = true
    )]
    pub message_burst: u32,

    /// HTTP requests per second per client IP (sustained).
    #[arg(long, env = "CONFAB_HTTP_RATE", default_value_t = 50, global = true)]
    pub http_rate: u32,

    /// HTTP requests per client IP in a burst.
    #[arg(long, env = "CONFAB_HTTP_BURST", default_value_t = 200, global = true)]
    pub http_burst: u32,

    /// Register and login attempts per minute per client IP (sustained).
    #[arg(
        long,
        env = "CONFAB_AUTH_RATE_PER_MINUTE",
        default_value_t = 30,
        global = true
    )]
    pub auth_rate_per_minute: u32,

    /// Register and login attempts per client IP in a burst.
    #[arg(long, env = "CONFAB_AUTH_BURST", default_value_t = 20, global = true)]
    pub auth_burst: u32,

    /// Password hashes (argon2id, 19 MiB and tens of ms of CPU each) computed at once by
    /// registration, sign-in and account deletion; 0 means one per core.
    #[arg(
        long,
        env = "CONFAB_PASSWORD_HASH_CONCURRENCY",
        default_value_t = 0,
        global = true
    )]
    pub password_hash_concurrency: usize,

    /// Requests that may wait for a password hash; beyond them a request is answered 503
    /// `unavailable` with Retry-After, so a login storm costs bounded memory.
    #[arg(
        long,
        env = "CONFAB_PASSWORD_HASH_QUEUE",
        default_value_t = 128,
        global = true
    )]
    pub password_hash_queue: usize,

    /// Take the client IP for rate limits from X-Forwarded-For / X-Real-IP (only behind a proxy
    /// that sets them; otherwise clients could pick their own IP).
    #[arg(long, env = "CONFAB_TRUST_FORWARDED_FOR", global = true)]
    pub trust_forwarded_for: bool,

    /// Client frames of any kind (subscribe, typing, receipts, edits, messages...) one
    /// WebSocket connection may send per second, after a burst of
    /// CONFAB_WS_FRAMES_BURST; beyond it frames are answered `rate_limited`.
    #[arg(
        long,
        env = "CONFAB_WS_FRAMES_PER_SECOND",
        default_value_t = 50,
        global = true
    )]
    pub ws_frames_per_second: u32,

    /// The burst of client frames a WebSocket connection may send at once (subscribing to
    /// every room of a user on connect is one such burst).
    #[arg(
        long,
        env = "CONFAB_WS_FRAMES_BURST",
        default_value_t = 200,
        global = true
    )]
    pub ws_frames_burst: u32,

    /// Milliseconds a client has to send a request's complete headers; a slower connection
    /// (or an idle keep-alive one) is closed.
    #[arg(
        long,
        env = "CONFAB_HTTP_HEADER_TIMEOUT_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub http_header_timeout_ms: u64,

    /// Rooms one connection may be subscribed to at once.
    #[arg(
        long,
        env = "CONFAB_MAX_SUBSCRIPTIONS",
        default_value_t = 500,
        global = true
    )]
    pub max_subscriptions: usize,

    /// Store reads of sign-ins and subscribes waiting on this pod beyond which new WebSocket
    /// connections are refused with 503 `unavailable` and `Retry-After` (0: never refused).
    #[arg(
        long,
        env = "CONFAB_WS_ADMISSION_BACKLOG",
        default_value_t = 150_000,
        global = true
    )]
    pub ws_admission_backlog: usize,

    /// WebSocket connections one user may hold on one pod.
    #[arg(
        long,
        env = "CONFAB_MAX_CONNECTIONS_PER_USER",
        default_value_t = 20,
        global = true
    )]
    pub max_connections_per_user: usize,

    /// Origins browsers may open WebSockets from, besides the server's own (comma-separated,
    /// e.g. https://chat.example.com; `*` allows any origin).
    #[arg(
        long,
        env = "CONFAB_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub allowed_origins: Vec<String>,

    /// Folder of ChatRoom / ChatPolicy YAML documents to apply and watch (outside Kubernetes).
    #[arg(long, env = "CONFAB_CONFIG_DIR", global = true)]
    pub config_dir: Option<PathBuf>,

    /// Watch ChatRoom and ChatPolicy resources in the Kubernetes cluster this pod runs in
    /// (in-cluster credentials or KUBECONFIG).
    #[arg(long, env = "CONFAB_WATCH_RESOURCES", global = true)]
    pub watch_resources: bool,

    /// Namespace of the Lease that elects the one pod reconciling ChatRoom resources.
    #[arg(
        long,
        env = "CONFAB_LEASE_NAMESPACE",
        default_value = "default",
        global = true
    )]
    pub lease_namespace: String,

    /// Lease duration in seconds: how long a crashed leader blocks the others at most. Pods
    /// renew two seconds (or a fifth of it) before it runs out.
    #[arg(
        long,
        env = "CONFAB_LEASE_DURATION_SECS",
        default_value_t = 15,
        global = true
    )]
    pub lease_duration_secs: u64,

    /// Seconds between full re-reads of the config dir (besides reacting to changes), so that
    /// users declared before they registered are added.
    #[arg(
        long,
        env = "CONFAB_CONFIG_RESYNC_SECS",
        default_value_t = 10,
        global = true
    )]
    pub config_resync_secs: u64,

    /// Seconds between runs of the message-retention job.
    #[arg(
        long,
        env = "CONFAB_RETENTION_INTERVAL_SECS",
        default_value_t = 3600,
        global = true
    )]
    pub retention_interval_secs: u64,

    /// Largest number of messages one group commit writes in one transaction.
    #[arg(
        long,
        env = "CONFAB_COMMIT_BATCH",
        default_value_t = 512,
        global = true
    )]
    pub commit_batch: usize,

    /// The naive writer, for benchmarks only: every message in its own transaction (one
    /// insert, one commit each), as a baseline to measure group commit against.
    #[arg(long, env = "CONFAB_ONE_INSERT_PER_MESSAGE", global = true)]
    pub one_insert_per_message: bool,
}

impl Config {
    /// Cross-field checks that clap cannot express. The message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.redis_url.is_some() && self.jwt_secret.is_none() {
            return Err(
                "CONFAB_JWT_SECRET (--jwt-secret) is required when CONFAB_REDIS_URL is \
                        set: every pod must sign tokens with the same key"
                    .into(),
            );
        }
        if self.redis_url.is_some() && self.database_url.is_none() {
            return Err(
                "CONFAB_DATABASE_URL (--database-url) is required when CONFAB_REDIS_URL is \
                        set: pods share history through PostgreSQL, not separate SQLite files"
                    .into(),
            );
        }
        if let Some(s) = &self.jwt_secret
            && s.len() < 32
        {
            return Err("CONFAB_JWT_SECRET (--jwt-secret) must be at least 32 bytes".into());
        }
        if let Some(u) = &self.database_url
            && !(u.starts_with("postgres://") || u.starts_with("postgresql://"))
        {
            return Err(
                "CONFAB_DATABASE_URL (--database-url) must start with postgres:// or postgresql://"
                    .into(),
            );
        }
        if let Some(u) = &self.redis_url
            && crate::bus::sentinel::is_sentinel(u)
        {
            if self.redis_cluster {
                return Err(
                    "CONFAB_REDIS_CLUSTER (--redis-cluster) and a redis+sentinel:// \
                            CONFAB_REDIS_URL exclude each other: Sentinel watches one master"
                        .into(),
                );
            }
            crate::bus::sentinel::parse(u)?;
        } else {
            if let Some(u) = &self.redis_url
                && !u
                    .split(',')
                    .all(|u| u.trim().starts_with("redis://") || u.trim().starts_with("rediss://"))
            {
                return Err(
                    "CONFAB_REDIS_URL (--redis-url) must start with redis://, rediss:// or \
                     redis+sentinel:// (with --redis-cluster: a comma-separated list of redis:// URLs)"
                        .into(),
                );
            }
            if self.redis_cluster && self.redis_url.is_none() {
                return Err("CONFAB_REDIS_CLUSTER (--redis-cluster) needs CONFAB_REDIS_URL".into());
            }
            if !self.redis_cluster && self.redis_url.as_deref().is_some_and(|u| u.contains(',')) {
                return Err(
                    "CONFAB_REDIS_URL (--redis-url) lists several servers: set CONFAB_REDIS_CLUSTER=true \
                     for a Redis Cluster, or use redis+sentinel://… for Sentinel"
                        .into(),
                );
            }
        }
        match (&self.oidc_issuer, &self.oidc_audience) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "CONFAB_OIDC_ISSUER (--oidc-issuer) and CONFAB_OIDC_AUDIENCE \
                     (--oidc-audience) go together: set both or neither"
                        .into(),
                );
            }
            (Some(issuer), Some(_)) => {
                let url = reqwest::Url::parse(issuer)
                    .map_err(|e| format!("CONFAB_OIDC_ISSUER (--oidc-issuer) is not a URL: {e}"))?;
                if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
                    return Err(
                        "CONFAB_OIDC_ISSUER (--oidc-issuer) must be an https:// (or http://) URL"
                            .into(),
                    );
                }
            }
            (None, None) => {
                if self.oidc_client_id.is_some() || self.oidc_admin_group.is_some() {
                    return Err("CONFAB_OIDC_CLIENT_ID and CONFAB_OIDC_ADMIN_GROUP need \
                         CONFAB_OIDC_ISSUER (--oidc-issuer)"
                        .into());
                }
            }
        }
        if self.oidc_username_claim.trim().is_empty() {
            return Err(
                "CONFAB_OIDC_USERNAME_CLAIM (--oidc-username-claim) must name a claim".into(),
            );
        }
        if self.heartbeat_ms < 100 {
            return Err("CONFAB_HEARTBEAT_MS (--heartbeat-ms) must be at least 100".into());
        }
        if self.outbound_queue < 16 {
            return Err("CONFAB_OUTBOUND_QUEUE (--outbound-queue) must be at least 16".into());
        }
        if self.messages_per_second == 0 || self.message_burst == 0 {
            return Err(
                "CONFAB_MESSAGES_PER_SECOND and CONFAB_MESSAGE_BURST must be at least 1".into(),
            );
        }
        if self.ws_frames_per_second == 0 || self.ws_frames_burst == 0 {
            return Err(
                "CONFAB_WS_FRAMES_PER_SECOND and CONFAB_WS_FRAMES_BURST must be at least 1".into(),
            );
        }
        if self.http_header_timeout_ms < 100 {
            return Err(
                "CONFAB_HTTP_HEADER_TIMEOUT_MS (--http-header-timeout-ms) must be at least 100"
                    .into(),
            );
        }
        if self.http_rate == 0 || self.http_burst == 0 {
            return Err("CONFAB_HTTP_RATE and CONFAB_HTTP_BURST must be at least 1".into());
        }
        if self.auth_rate_per_minute == 0 || self.auth_burst == 0 {
            return Err(
                "CONFAB_AUTH_RATE_PER_MINUTE and CONFAB_AUTH_BURST must be at least 1".into(),
            );
        }
        if self.lease_duration_secs < 2 {
            return Err(
                "CONFAB_LEASE_DURATION_SECS (--lease-duration-secs) must be at least 2".into(),
            );
        }
        if self.commit_batch == 0 {
            return Err("CONFAB_COMMIT_BATCH (--commit-batch) must be at least 1".into());
        }
        Ok(())
    }

    /// Messages the writer may put in one transaction.
    pub fn writer_batch(&self) -> usize {
        if self.one_insert_per_message {
            1
        } else {
            self.commit_batch
        }
    }

    /// A configuration for tests and tools: loopback, ephemeral ports, the given data dir.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let cli = Cli::parse_from([
            "confab",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
        Config {
            data_dir,
            ..cli.config
        }
    }
}
