//! Redis Pub/Sub between pods: one channel per room (`confab:room:{id}`), subscribed only while
//! this pod has local subscribers, and `confab:control`. Against a Redis Cluster
//! (`--redis-cluster`) the same channels are sharded (SSUBSCRIBE / SPUBLISH): each room's
//! traffic stays on the shard that owns its channel instead of being broadcast to every node.
//!
//! Publishing goes through one task that pipelines whatever has queued up, so the writer and
//! the sockets never wait on Redis. Receiving uses a RESP3 connection whose push messages feed
//! the hub; the connection manager reconnects and resubscribes by itself.
//!
//! Presence: a hash per room (`confab:presence:{room}`) whose fields are `{pod}/{user}` and
//! whose values are expiry times in ms, refreshed by the hub; a crashed pod's entries expire,
//! and the pods that still have subscribers in the room sweep them and announce the users
//! offline.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::PodStats;
use super::{Bus, Envelope, Incoming};
use crate::ids::{PodId, RoomId, UserId};
use crate::telemetry::Metrics;

pub const CONTROL_CHANNEL: &str = "confab:control";
/// Hash of pod id → JSON stats with the time they were written.
const PODS_KEY: &str = "confab:pods";
/// A pod that has not announced itself for this long is gone.
pub const POD_TTL_MS: i64 = 15_000;
/// How long a presence entry lives without a refresh: three refresh periods, so a live pod's
/// entries never lapse, and a dead pod's users go offline within this plus one sweep period.
pub const PRESENCE_TTL_MS: i64 = 15_000;
const PIPELINE_MAX: usize = 512;

fn room_channel(room: RoomId) -> String {
    format!("confab:room:{room}")
}

fn presence_key(room: RoomId) -> String {
    format!("confab:presence:{room}")
}

/// Which pods a user has sockets on: fields `{pod}` with an expiry time, like presence.
fn connected_key(user: UserId) -> String {
    format!("confab:connected:{user}")
}

/// The user of a presence field (`{pod}/{user}`).
fn presence_user(field: &str) -> Option<UserId> {
    field.split_once('/')?.1.parse().ok()
}

/// The users of a presence hash whose entries have not expired, sorted, each once.
fn live_users(entries: Vec<(String, i64)>) -> Vec<UserId> {
    let now = crate::now_ms();
    let mut users: Vec<UserId> = entries
        .into_iter()
        .filter(|(_, expires)| *expires > now)
        .filter_map(|(field, _)| presence_user(&field))
        .collect();
    users.sort();
    users.dedup();
    users
}

/// Commands to one Redis server, or to a Redis Cluster (routed by key slot).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Starts receiving a channel: SUBSCRIBE on one server; sharded SSUBSCRIBE on a cluster,
    /// so that a room's events go only to the shard that owns its channel.
    async fn listen(&mut self, channel: String) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    async fn unlisten(&mut self, channel: String) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.unsubscribe(channel).await,
            Conn::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }
}

pub struct RedisBus {
    pod: PodId,
    /// Replaced as a whole when Sentinel names a new master.
    commands: Arc<std::sync::RwLock<Conn>>,
    subscriber: tokio::sync::Mutex<Conn>,
    outgoing: mpsc::UnboundedSender<(String, Bytes)>,
    metrics: Metrics,
    /// Rooms this pod listens to, so a resubscription after a race is idempotent.
    joined: Mutex<HashSet<RoomId>>,
}

/// The two connections to one Redis server: commands, and a RESP3 connection whose push
/// messages (Pub/Sub, disconnections) go to `push`. Both reconnect by themselves.
async fn single_conns(
    client: redis::Client,
    push: mpsc::UnboundedSender<PushInfo>,
) -> redis::RedisResult<(Conn, Conn)> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_max_delay(Duration::from_secs(2));
    let info = client.get_connection_info().clone();
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let sub_client = redis::Client::open(info.set_redis_settings(resp3))?;
    let commands = ConnectionManager::new_with_config(client, config.clone()).await?;
    let subscriber = ConnectionManager::new_with_config(
        sub_client,
        config.set_push_sender(push).set_automatic_resubscription(),
    )
    .await?;
    Ok((Conn::Single(commands), Conn::Single(subscriber)))
}

impl RedisBus {
    /// Connects both connections and subscribes to the control channel. Incoming envelopes
    /// from other pods are sent to `incoming`.
    pub async fn connect(
        url: &str,
        cluster: bool,
        pod: PodId,
        incoming: mpsc::UnboundedSender<Incoming>,
        metrics: Metrics,
    ) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        let (push_tx, mut push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let sentinels = if super::sentinel::is_sentinel(url) {
            let parsed = super::sentinel::parse(url).map_err(anyhow::Error::msg)?;
            Some(Arc::new(
                super::sentinel::Sentinels::new(parsed)
                    .context("CONFAB_REDIS_URL is not a valid Sentinel URL")?,
            ))
        } else {
            None
        };
        let mut master = None;
        let (commands, mut subscriber) = if cluster {
            let nodes: Vec<String> = url.split(',').map(|u| u.trim().to_string()).collect();
            let client = |push: Option<mpsc::UnboundedSender<PushInfo>>| {
                let mut b = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(2));
                if let Some(push) = push {
                    b = b
                        .use_protocol(redis::ProtocolVersion::RESP3)
                        .push_sender(push);
                }
                b.build()
                    .context("CONFAB_REDIS_URL is not a valid list of Redis Cluster nodes")
            };
            let commands = client(None)?
                .get_async_connection()
                .await
                .context("cannot connect to the Redis Cluster (CONFAB_REDIS_URL)")?;
            let subscriber = client(Some(push_tx.clone()))?
                .get_async_connection()
                .await
                .context("cannot connect to the Redis Cluster for Pub/Sub (CONFAB_REDIS_URL)")?;
            (Conn::Cluster(commands), Conn::Cluster(subscriber))
        } else if let Some(sentinels) = &sentinels {
            let client = sentinels.master().await.with_context(|| {
                format!(
                    "cannot find the Redis master {:?} through Sentinel (CONFAB_REDIS_URL)",
                    sentinels.master_name()
                )
            })?;
            master = super::sentinel::addr_of(&client);
            single_conns(client, push_tx.clone())
                .await
                .context("cannot connect to the Redis master Sentinel named (CONFAB_REDIS_URL)")?
        } else {
            let client =
                redis::Client::open(url).context("CONFAB_REDIS_URL is not a valid Redis URL")?;
            single_conns(client, push_tx.clone())
                .await
                .context("cannot connect to Redis (CONFAB_REDIS_URL)")?
        };
        subscriber
            .listen(CONTROL_CHANNEL.to_string())
            .await
            .context("cannot subscribe to the Redis control channel")?;

        let incoming_events = incoming.clone();
        tokio::spawn(async move {
            let mut disconnected = false;
            while let Some(push) = push_rx.recv().await {
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {}
                    PushKind::Disconnection => {
                        tracing::warn!("bus connection lost; reconnecting");
                        if !disconnected && incoming.send(Incoming::Disconnected).is_err() {
                            break;
                        }
                        disconnected = true;
                        continue;
                    }
                    PushKind::Subscribe | PushKind::SSubscribe if disconnected => {
                        tracing::info!("bus resubscribed; checking rooms for missed messages");
                        disconnected = false;
                        if incoming.send(Incoming::Resubscribed).is_err() {
                            break;
                        }
                        continue;
                    }
                    _ => continue,
                }
                let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) else {
                    continue;
                };
                match Envelope::decode(Bytes::from(payload)) {
                    Some(env) if env.origin != pod => {
                        if incoming.send(Incoming::Event(env)).is_err() {
                            break;
                        }
                    }
                    Some(_) => {}
                    None => tracing::warn!("dropped a malformed bus envelope"),
                }
            }
        });

        let (outgoing, rx) = mpsc::unbounded_channel();
        let commands = Arc::new(std::sync::RwLock::new(commands));
        tokio::spawn(publisher(commands.clone(), rx, metrics.clone()));
        let bus = Arc::new(RedisBus {
            pod,
            commands,
            subscriber: tokio::sync::Mutex::new(subscriber),
            outgoing,
            metrics,
            joined: Mutex::new(HashSet::new()),
        });
        if let Some(sentinels) = sentinels {
            tokio::spawn(follow_master(
                Arc::downgrade(&bus),
                sentinels,
                master,
                push_tx,
                incoming_events,
            ));
        }
        Ok(bus)
    }

    fn commands(&self) -> Conn {
        self.commands.read().expect("commands lock").clone()
    }

    /// Moves both connections to the master Sentinel names now: subscribes the new one to
    /// everything this pod listens to, then swaps. The hub is told the bus was down, and
    /// fills what was missed from the store once it is back.
    async fn switch_master(
        &self,
        sentinels: &super::sentinel::Sentinels,
        push: &mpsc::UnboundedSender<PushInfo>,
        incoming: &mpsc::UnboundedSender<Incoming>,
    ) -> redis::RedisResult<Option<(String, u16)>> {
        let client = sentinels.master().await?;
        let addr = super::sentinel::addr_of(&client);
        let (commands, mut subscriber) = single_conns(client, push.clone()).await?;
        let _ = incoming.send(Incoming::Disconnected);
        // Held while subscribing, so a room joined meanwhile is subscribed on the new one.
        let mut current = self.subscriber.lock().await;
        let mut channels = vec![CONTROL_CHANNEL.to_string()];
        channels.extend(
            self.joined
                .lock()
                .expect("joined lock")
                .iter()
                .map(|r| room_channel(*r)),
        );
        for chunk in channels.chunks(512) {
            if let Conn::Single(c) = &mut subscriber {
                c.subscribe(chunk.to_vec()).await?;
            }
        }
        *current = subscriber;
        *self.commands.write().expect("commands lock") = commands;
        drop(current);
        let _ = incoming.send(Incoming::Resubscribed);
        Ok(addr)
    }
}

/// Asks the sentinels once a second where the master is, and follows it when it moves.
async fn follow_master(
    bus: std::sync::Weak<RedisBus>,
    sentinels: Arc<super::sentinel::Sentinels>,
    mut master: Option<(String, u16)>,
    push: mpsc::UnboundedSender<PushInfo>,
    incoming: mpsc::UnboundedSender<Incoming>,
) {
    let mut tick = tokio::time::interval(super::sentinel::POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(bus) = bus.upgrade() else { break };
        let now = match sentinels.master_addr().await {
            Ok(addr) => addr,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask Sentinel where the Redis master is");
                continue;
            }
        };
        if master.as_ref() == Some(&now) {
            continue;
        }
        tracing::warn!(
            from = ?master,
            to = ?now,
            name = sentinels.master_name(),
            "Sentinel names a new Redis master; moving the bus to it"
        );
        match bus.switch_master(&sentinels, &push, &incoming).await {
            Ok(addr) => {
                master = addr;
                tracing::info!(master = ?master, "bus moved to the new Redis master");
            }
            Err(e) => tracing::warn!(error = %e, "cannot move to the new Redis master yet"),
        }
    }
}

/// Sends queued publishes in pipelines: one round trip for everything that queued meanwhile.
///
/// On a cluster a pipeline must stay within one slot, so the batch goes as one SPUBLISH
/// pipeline per channel (in order within the channel), all channels at once.
async fn publisher(
    shared: Arc<std::sync::RwLock<Conn>>,
    mut rx: mpsc::UnboundedReceiver<(String, Bytes)>,
    metrics: Metrics,
) {
    let mut batch = Vec::with_capacity(PIPELINE_MAX);
    while rx.recv_many(&mut batch, PIPELINE_MAX).await > 0 {
        let con = shared.read().expect("commands lock").clone();
        let started = Instant::now();
        let sent: redis::RedisResult<()> = match &con {
            Conn::Single(_) => {
                let mut pipe = redis::pipe();
                for (channel, payload) in batch.drain(..) {
                    pipe.publish(channel, payload.as_ref()).ignore();
                }
                pipe.query_async(&mut con.clone()).await
            }
            Conn::Cluster(_) => {
                let mut per_channel: HashMap<String, redis::Pipeline> = HashMap::new();
                for (channel, payload) in batch.drain(..) {
                    per_channel
                        .entry(channel.clone())
                        .or_insert_with(redis::pipe)
                        .cmd("SPUBLISH")
                        .arg(channel)
                        .arg(payload.as_ref())
                        .ignore();
                }
                let sends = per_channel.into_values().map(|pipe| {
                    let mut con = con.clone();
                    async move { pipe.query_async::<()>(&mut con).await }
                });
                futures::future::join_all(sends)
                    .await
                    .into_iter()
                    .collect::<redis::RedisResult<Vec<()>>>()
                    .map(|_| ())
            }
        };
        metrics.bus_publish.observe(started.elapsed().as_secs_f64());
        if let Err(e) = sent {
            tracing::warn!(error = %e, "bus publish failed; other pods fill the gap from the store");
        }
    }
}

impl RedisBus {
    /// Sets `field` of each hash `key` to a new expiry time and renews the hash's TTL: the
    /// records of presence and of connections. One server gets pipelines of 512 entries, a
    /// round trip each; a cluster routes every key by its slot, 64 at a time.
    async fn renew(&self, entries: Vec<(String, String)>) -> redis::RedisResult<()> {
        let expires = crate::now_ms() + PRESENCE_TTL_MS;
        let one = |pipe: &mut redis::Pipeline, key: &str, field: &str| {
            pipe.hset(key, field, expires)
                .ignore()
                .pexpire(key, PRESENCE_TTL_MS)
                .ignore();
        };
        let con = self.commands();
        match &con {
            Conn::Single(_) => {
                let mut result = Ok(());
                for chunk in entries.chunks(512) {
                    let mut pipe = redis::pipe();
                    for (key, field) in chunk {
                        one(&mut pipe, key, field);
                    }
                    if let Err(e) = pipe.query_async::<()>(&mut con.clone()).await {
                        result = Err(e);
                    }
                }
                result
            }
            Conn::Cluster(_) => {
                use futures::StreamExt;
                futures::stream::iter(entries)
                    .map(|(key, field)| {
                        let mut con = con.clone();
                        let mut pipe = redis::pipe();
                        one(&mut pipe, &key, &field);
                        async move { pipe.query_async::<()>(&mut con).await }
                    })
                    .buffer_unordered(64)
                    .fold(Ok(()), |acc, r| async move { acc.and(r) })
                    .await
            }
        }
    }

    fn observe(&self, command: &str, started: Instant) {
        self.metrics
            .redis_command
            .with_label_values(&[command])
            .observe(started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn has_peers(&self) -> bool {
        true
    }

    fn publish(&self, env: Envelope) {
        let channel = match env.kind {
            super::Kind::Control => CONTROL_CHANNEL.to_string(),
            _ => room_channel(env.room),
        };
        let _ = self.outgoing.send((channel, env.encode()));
    }

    async fn join_room(&self, room: RoomId) {
        if !self.joined.lock().expect("joined lock").insert(room) {
            return;
        }
        if let Err(e) = self
            .subscriber
            .lock()
            .await
            .listen(room_channel(room))
            .await
        {
            tracing::warn!(error = %e, %room, "redis subscribe failed");
            self.joined.lock().expect("joined lock").remove(&room);
        }
    }

    async fn leave_room(&self, room: RoomId) {
        if !self.joined.lock().expect("joined lock").remove(&room) {
            return;
        }
        if let Err(e) = self
            .subscriber
            .lock()
            .await
            .unlisten(room_channel(room))
            .await
        {
            tracing::warn!(error = %e, %room, "redis unsubscribe failed");
        }
    }

    async fn ping(&self) -> Result<(), String> {
        let started = Instant::now();
        let mut con = self.commands();
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
        self.observe("ping", started);
        pong.map(|_| ()).map_err(|e| e.to_string())
    }

    async fn presence_set(&self, room: RoomId, user: UserId, online: bool) {
        let mut con = self.commands();
        let field = format!("{}/{}", self.pod, user);
        let key = presence_key(room);
        let done: redis::RedisResult<()> = if online {
            self.renew(vec![(key, field)]).await
        } else {
            con.hdel(&key, field).await
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, %room, "presence update failed");
        }
    }

    async fn connected_set(&self, user: UserId, connected: bool) {
        let mut con = self.commands();
        let key = connected_key(user);
        let field = self.pod.to_string();
        let done: redis::RedisResult<()> = if connected {
            self.renew(vec![(key, field)]).await
        } else {
            con.hdel(&key, field).await
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, %user, "connection presence update failed");
        }
    }

    async fn refresh(&self, connected: &[UserId], presence: &[(RoomId, Vec<UserId>)]) {
        let started = Instant::now();
        let me = self.pod.to_string();
        // `{pod}` in each user's connected hash, `{pod}/{user}` in each room's presence hash.
        let mut entries: Vec<(String, String)> = connected
            .iter()
            .map(|u| (connected_key(*u), me.clone()))
            .collect();
        for (room, users) in presence {
            let key = presence_key(*room);
            entries.extend(users.iter().map(|u| (key.clone(), format!("{me}/{u}"))));
        }
        let done = self.renew(entries).await;
        self.observe("presence_refresh", started);
        if let Err(e) = done {
            tracing::warn!(error = %e, "presence refresh failed in part; entries expire unless renewed");
        }
    }

    async fn connected_remote(&self, users: &[UserId]) -> Vec<UserId> {
        let mut con = self.commands();
        let me = self.pod.to_string();
        let now = crate::now_ms();
        let mut online = Vec::new();
        // Each user's key lives on its own slot: one command each (few users per message).
        for &user in users {
            let started = Instant::now();
            let entries: redis::RedisResult<Vec<(String, i64)>> =
                con.hgetall(connected_key(user)).await;
            self.observe("hgetall", started);
            if entries
                .unwrap_or_default()
                .iter()
                .any(|(pod, expires)| *pod != me && *expires > now)
            {
                online.push(user);
            }
        }
        online
    }

    async fn presence_remote(&self, room: RoomId) -> Vec<UserId> {
        let started = Instant::now();
        let mut con = self.commands();
        let entries: redis::RedisResult<Vec<(String, i64)>> = con.hgetall(presence_key(room)).await;
        self.observe("hgetall", started);
        live_users(entries.unwrap_or_default())
    }

    async fn presence_remote_many(&self, rooms: &[RoomId]) -> Vec<Vec<UserId>> {
        let started = Instant::now();
        let con = self.commands();
        let entries: Vec<Vec<(String, i64)>> = match &con {
            Conn::Single(_) => {
                let mut pipe = redis::pipe();
                for room in rooms {
                    pipe.hgetall(presence_key(*room));
                }
                pipe.query_async(&mut con.clone())
                    .await
                    .unwrap_or_else(|_| vec![Vec::new(); rooms.len()])
            }
            // Each room's key lives on its own slot.
            Conn::Cluster(_) => {
                use futures::StreamExt;
                let keys: Vec<String> = rooms.iter().map(|r| presence_key(*r)).collect();
                futures::stream::iter(keys)
                    .map(|key| {
                        let mut con = con.clone();
                        async move {
                            con.hgetall::<_, Vec<(String, i64)>>(key)
                                .await
                                .unwrap_or_default()
                        }
                    })
                    .buffered(64)
                    .collect()
                    .await
            }
        };
        self.observe("hgetall", started);
        entries.into_iter().map(live_users).collect()
    }

    async fn presence_sweep(&self, room: RoomId) -> Vec<UserId> {
        let started = Instant::now();
        let mut con = self.commands();
        let key = presence_key(room);
        let entries: Vec<(String, i64)> = match con.hgetall(&key).await {
            Ok(e) => e,
            Err(_) => return Vec::new(),
        };
        self.observe("hgetall", started);
        let now = crate::now_ms();
        let live: HashSet<UserId> = entries
            .iter()
            .filter(|(_, expires)| *expires > now)
            .filter_map(|(f, _)| presence_user(f))
            .collect();
        let expired: Vec<&str> = entries
            .iter()
            .filter(|(_, expires)| *expires <= now)
            .map(|(f, _)| f.as_str())
            .collect();
        if expired.is_empty() {
            return Vec::new();
        }
        // One round trip; each HDEL's own count says whether this pod's delete took effect.
        let mut pipe = redis::pipe();
        for field in &expired {
            pipe.hdel(&key, *field);
        }
        let started = Instant::now();
        let deleted: Vec<i64> = pipe.query_async(&mut con).await.unwrap_or_default();
        self.observe("hdel", started);
        let mut gone: Vec<UserId> = expired
            .iter()
            .zip(deleted)
            .filter(|(_, n)| *n == 1)
            .filter_map(|(f, _)| presence_user(f))
            .filter(|u| !live.contains(u))
            .collect();
        gone.sort();
        gone.dedup();
        gone
    }

    async fn announce(&self, stats: &PodStats) {
        let started = Instant::now();
        let mut con = self.commands();
        let entry = serde_json::json!({"stats": stats, "seen_ms": crate::now_ms()}).to_string();
        let done: redis::RedisResult<()> = con.hset(PODS_KEY, self.pod.to_string(), entry).await;
        self.observe("hset", started);
        if let Err(e) = done {
            tracing::warn!(error = %e, "pod announcement failed");
        }
    }

    async fn pods_remote(&self) -> Vec<PodStats> {
        let started = Instant::now();
        let mut con = self.commands();
        let entries: redis::RedisResult<Vec<(String, String)>> = con.hgetall(PODS_KEY).await;
        self.observe("hgetall", started);
        let now = crate::now_ms();
        let mut stale = Vec::new();
        let mut pods = Vec::new();
        for (pod, entry) in entries.unwrap_or_default() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&entry) else {
                continue;
            };
            let seen = v["seen_ms"].as_i64().unwrap_or(0);
            if now - seen > POD_TTL_MS {
                stale.push(pod);
            } else if pod != self.pod.to_string()
                && let Ok(stats) = serde_json::from_value::<PodStats>(v["stats"].clone())
            {
                pods.push(stats);
            }
        }
        if !stale.is_empty() {
            let _: redis::RedisResult<()> = con.hdel(PODS_KEY, stale).await;
        }
        pods
    }
}
