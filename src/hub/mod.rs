//! Local fan-out. The hub knows every connection of this pod ([`Outbox`]), which rooms each
//! is subscribed to, and how far each room has been delivered.
//!
//! Messages are delivered in `seq` order with no gap and no duplicate: an event that arrives
//! early waits in the room's `pending` map; a gap that does not fill within [`GAP_WAIT`] is read
//! back from the store. Each event is encoded once; subscribers share the bytes.
//!
//! Locks: `rooms` (RwLock, read on the hot path) then one room's Mutex. Both are std locks held
//! for short, non-async sections; nothing awaits or does I/O under them.

pub mod order;
pub mod outbox;
pub mod presence;
pub mod registry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::bus::{Bus, Envelope, Kind, PodStats};
use crate::ids::{PodId, RoomId, UserId};
use crate::model::Message;
use crate::protocol::Encode as _;
use crate::protocol::{NotificationReason, PresenceStatus, ServerFrame};
use crate::resume::{Batched, Unanswered};
use crate::store::{MessageRecord, Store};
use crate::telemetry::Metrics;

use order::Order;
pub use outbox::{Close, ConnId, Inbox, Next, Outbound, Outbox, RoomEvent};
use presence::Presence;
use registry::Registry;

/// How long an out-of-order message waits for the ones before it before they are read from the
/// store.
pub const GAP_WAIT: Duration = Duration::from_millis(150);
/// How often this pod re-announces its presence entries to the bus.
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(5);
/// How often every local room is compared with the store, in case a bus message was lost.
pub const RESYNC_EVERY: Duration = Duration::from_secs(2);
/// At most this many changes are sent again per room after a bus outage.
const REFILL_MAX: i64 = 1000;

#[derive(Default)]
struct RoomState {
    /// Delivery order; its items are (frame, when the server read the message).
    order: Order<(Utf8Bytes, i64)>,
    subscribers: HashMap<ConnId, Outbox>,
    /// Who is online here: presence changes with a user's first and last socket.
    presence: Presence,
    /// The room's rev as the last two resyncs read it while the bus was up (older first).
    /// Changes to existing messages carry no seq to find gaps by: after a bus outage, every
    /// change after the older one is sent again (clients apply only what is newer).
    revs: Option<(i64, i64)>,
}

/// Queues one event, shared, for every subscriber but `except`'s sockets; returns how many
/// took it.
fn fan_out(
    subscribers: &HashMap<ConnId, Outbox>,
    text: &Utf8Bytes,
    room: RoomId,
    seq: i64,
    except: Option<UserId>,
    created_ms: i64,
) -> usize {
    let mut n = 0;
    let event = Arc::new(RoomEvent {
        room,
        seq,
        text: text.clone(),
        created_ms,
    });
    for sub in subscribers.values() {
        if except.is_some_and(|u| sub.user() == u) {
            continue;
        }
        if sub.push(Outbound::Room(event.clone())) {
            n += 1;
        }
    }
    n
}

/// What a subscriber needs to know when it joins a room.
pub struct Subscribed {
    /// Events with a greater seq reach the subscriber through its queue.
    pub cursor: i64,
}

pub struct Hub {
    pod: PodId,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    metrics: Metrics,
    rooms: RwLock<HashMap<RoomId, Arc<Mutex<RoomState>>>>,
    /// Every connection of this pod, by user (locked for short, non-async sections only).
    users: Mutex<Registry>,
    /// The connections opened with a bot's API key, with the key's id, so that revoking a key
    /// closes exactly its sockets.
    keyed: Mutex<HashMap<ConnId, (String, Outbox)>>,
    started_ms: i64,
    /// Set while the bus is disconnected: resyncs then do not move `RoomState::revs`.
    bus_down: std::sync::atomic::AtomicBool,
    /// Who is online in a room on the other pods, read for many subscribes at once.
    remote_presence: Batched<RoomId, Vec<UserId>, Unanswered>,
}

/// Most presence asks answered by one batch.
const PRESENCE_BATCH: usize = 4096;

/// The queue of remote presence reads: each batch reads every room asked once, in one round
/// trip, and answers every ask of the room (a reconnect storm asks for the same rooms from
/// thousands of sockets). Its batches are larger than the store's: what a batch costs is one
/// read per distinct room, however many asks share it.
fn remote_presence(bus: Arc<dyn Bus>) -> Batched<RoomId, Vec<UserId>, Unanswered> {
    Batched::with_max_batch(PRESENCE_BATCH, move |asked: Vec<RoomId>| {
        let bus = bus.clone();
        async move {
            let mut rooms = asked.clone();
            rooms.sort();
            rooms.dedup();
            let online = bus.presence_remote_many(&rooms).await;
            let by_room: HashMap<RoomId, Vec<UserId>> = rooms.into_iter().zip(online).collect();
            Ok(asked
                .iter()
                .map(|r| by_room.get(r).cloned().unwrap_or_default())
                .collect())
        }
    })
}

/// The `message` event of a committed message.
fn message_frame(m: &MessageRecord) -> Utf8Bytes {
    ServerFrame::Message(std::borrow::Cow::Borrowed(&Message::from(m))).encode()
}

fn from_bytes(b: Bytes) -> Option<Utf8Bytes> {
    Utf8Bytes::try_from(b).ok()
}

impl Hub {
    /// Starts the hub (and its presence reads: call within the runtime).
    pub fn new(
        pod: PodId,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Hub {
            pod,
            store,
            bus: bus.clone(),
            metrics,
            rooms: RwLock::default(),
            users: Mutex::default(),
            keyed: Mutex::default(),
            started_ms: crate::now_ms(),
            bus_down: std::sync::atomic::AtomicBool::new(false),
            remote_presence: remote_presence(bus),
        })
    }

    pub fn pod(&self) -> PodId {
        self.pod
    }

    fn room(&self, room: RoomId) -> Option<Arc<Mutex<RoomState>>> {
        self.rooms.read().expect("rooms lock").get(&room).cloned()
    }

    // ---- connections -------------------------------------------------------------------

    pub fn register(&self, outbox: &Outbox) {
        let first = {
            let mut users = self.users.lock().expect("users lock");
            users.insert(outbox);
            users.connections_of(outbox.user()) == 1
        };
        self.metrics.ws_connections.inc();
        self.metrics.ws_opened.inc();
        if first && self.bus.has_peers() {
            // Other pods learn the user has a socket here (for offline notifications).
            let (bus, user) = (self.bus.clone(), outbox.user());
            tokio::spawn(async move { bus.connected_set(user, true).await });
        }
    }

    /// Which of `users` have a socket open on any pod.
    pub async fn connected(&self, users: &[UserId]) -> Vec<UserId> {
        let (mut here, elsewhere): (Vec<UserId>, Vec<UserId>) = {
            let registry = self.users.lock().expect("users lock");
            users.iter().partition(|u| registry.connections_of(**u) > 0)
        };
        if !elsewhere.is_empty() && self.bus.has_peers() {
            here.extend(self.bus.connected_remote(&elsewhere).await);
        }
        here
    }

    /// Forgets a connection and everything it was subscribed to.
    pub async fn unregister(
        self: &Arc<Self>,
        outbox: &Outbox,
        rooms: impl IntoIterator<Item = RoomId>,
    ) {
        for room in rooms {
            self.unsubscribe(room, outbox).await;
        }
        let last = {
            let mut users = self.users.lock().expect("users lock");
            users.remove(outbox);
            users.connections_of(outbox.user()) == 0
        };
        self.keyed.lock().expect("keyed lock").remove(&outbox.conn);
        self.metrics.ws_connections.dec();
        if last && self.bus.has_peers() {
            self.bus.connected_set(outbox.user(), false).await;
        }
    }

    /// Notes that a connection was opened with the API key `key` (see [`ControlEvent::KeyRevoked`]).
    pub fn register_key(&self, outbox: &Outbox, key: String) {
        self.keyed
            .lock()
            .expect("keyed lock")
            .insert(outbox.conn, (key, outbox.clone()));
    }

    /// Local connections of one user.
    pub fn connections_of(&self, user: UserId) -> usize {
        self.users.lock().expect("users lock").connections_of(user)
    }

    pub fn connection_count(&self) -> usize {
        self.users.lock().expect("users lock").len()
    }

    fn outboxes_of(&self, user: UserId) -> Vec<Outbox> {
        self.users
            .lock()
            .expect("users lock")
            .of(user)
            .cloned()
            .collect()
    }

    /// Closes every local socket, a wave at a time so that clients reconnect elsewhere without
    /// a storm, and waits (bounded) until they are gone.
    pub async fn close_all(&self, close: Close, wave: usize, pause: Duration, wait: Duration) {
        let all: Vec<Outbox> = self
            .users
            .lock()
            .expect("users lock")
            .all()
            .cloned()
            .collect();
        for chunk in all.chunks(wave.max(1)) {
            for o in chunk {
                o.close(close.clone());
            }
            tokio::time::sleep(pause).await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        while self.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // ---- subscriptions -----------------------------------------------------------------

    /// Adds a subscriber. `known` is the room's (last_seq, rev) as the caller read it: used
    /// when this pod already follows the room (its order is ahead of or repairs a stale
    /// value); a room new to this pod is joined on the bus and then read again, so that no
    /// event falls between the two.
    pub async fn subscribe(
        self: &Arc<Self>,
        room: RoomId,
        outbox: &Outbox,
        known: (i64, i64),
    ) -> Result<Subscribed, crate::store::StoreError> {
        let fresh = !self.rooms.read().expect("rooms lock").contains_key(&room);
        if fresh {
            self.bus.join_room(room).await;
        }
        let (last_seq, rev) = if fresh {
            self.store
                .room(room)
                .await?
                .map_or((0, 0), |r| (r.last_seq, r.rev))
        } else {
            known
        };
        let (cursor, came_online, fill) = {
            let mut rooms = self.rooms.write().expect("rooms lock");
            let state = rooms.entry(room).or_default().clone();
            drop(rooms);
            let mut guard = state.lock().expect("room lock");
            let s = &mut *guard;
            s.revs.get_or_insert((rev, rev));
            let (cursor, fill) = s.order.join(last_seq, |seq, (text, created_ms)| {
                let n = fan_out(&s.subscribers, &text, room, seq, None, created_ms);
                self.metrics.deliveries.inc_by(n as u64);
            });
            s.subscribers.insert(outbox.conn, outbox.clone());
            let first = s.presence.join(outbox.user());
            (cursor, first, fill)
        };
        self.metrics.subscriptions.inc();
        if fill {
            self.schedule_gap_fill(room, last_seq);
        }
        if came_online {
            self.presence_changed(room, outbox.user(), true).await;
        }
        Ok(Subscribed { cursor })
    }

    pub async fn unsubscribe(self: &Arc<Self>, room: RoomId, outbox: &Outbox) {
        let (removed, went_offline, now_empty) = {
            let rooms = self.rooms.read().expect("rooms lock");
            let Some(state) = rooms.get(&room) else {
                return;
            };
            let mut s = state.lock().expect("room lock");
            let removed = s.subscribers.remove(&outbox.conn).is_some();
            let offline = removed && s.presence.leave(outbox.user());
            (removed, offline, s.subscribers.is_empty())
        };
        if !removed {
            return;
        }
        self.metrics.subscriptions.dec();
        if went_offline {
            self.presence_changed(room, outbox.user(), false).await;
        }
        if now_empty {
            let dropped = {
                let mut rooms = self.rooms.write().expect("rooms lock");
                let empty = rooms
                    .get(&room)
                    .is_some_and(|s| s.lock().expect("room lock").subscribers.is_empty());
                if empty {
                    rooms.remove(&room);
                }
                empty
            };
            if dropped {
                self.bus.leave_room(room).await;
            }
        }
    }

    /// Users online in a room, on this pod and on the others.
    pub async fn online(&self, room: RoomId) -> Vec<UserId> {
        let mut users: Vec<UserId> = self
            .room(room)
            .map(|s| s.lock().expect("room lock").presence.users().collect())
            .unwrap_or_default();
        users.extend(self.remote_presence.load(room).await.unwrap_or_default());
        users.sort();
        users.dedup();
        users
    }

    /// Records a user's first socket in a room on this pod (or its last one going) and tells
    /// the room when that changes the user's presence in the cluster: `online` when no other
    /// pod had the user in the room, `offline` when none has any more (the protocol's presence
    /// is the cluster's, so a reconnect to another pod, or a second device on another pod,
    /// announces nothing). Coming online reads the other pods before writing this pod's entry,
    /// going offline reads after removing it: two pods racing may both announce, never neither.
    async fn presence_changed(&self, room: RoomId, user: UserId, online: bool) {
        let announce = if online {
            let elsewhere = self.online_elsewhere(room, user).await;
            self.bus.presence_set(room, user, true).await;
            !elsewhere
        } else {
            self.bus.presence_set(room, user, false).await;
            !self.online_elsewhere(room, user).await
        };
        if announce {
            self.announce_presence(room, user, online);
        }
    }

    /// Whether another pod has `user` online in `room` (this pod's own entry is not there when
    /// this is asked). A bus that does not answer says no, so the change is announced.
    async fn online_elsewhere(&self, room: RoomId, user: UserId) -> bool {
        self.bus.has_peers()
            && self
                .remote_presence
                .load(room)
                .await
                .is_ok_and(|users| users.contains(&user))
    }

    /// Sends `presence` to the room's subscribers on every pod.
    fn announce_presence(&self, room: RoomId, user: UserId, online: bool) {
        let status = if online {
            PresenceStatus::Online
        } else {
            PresenceStatus::Offline
        };
        let text = ServerFrame::Presence { room, user, status }.encode();
        self.publish_event(room, text, None);
    }

    /// Announces offline the users a dead pod left online in the rooms this pod serves (their
    /// presence entries expired without being removed), unless they are still here.
    pub async fn sweep_presence(&self) {
        let rooms: Vec<RoomId> = self
            .rooms
            .read()
            .expect("rooms lock")
            .keys()
            .copied()
            .collect();
        for room in rooms {
            for user in self.bus.presence_sweep(room).await {
                let here = self
                    .room(room)
                    .is_some_and(|s| s.lock().expect("room lock").presence.contains(user));
                if !here {
                    self.announce_presence(room, user, false);
                }
            }
        }
    }

    /// Re-announces this pod's presence entries so that they do not expire while in use.
    pub async fn refresh_presence(&self) {
        let connected: Vec<UserId> = if self.bus.has_peers() {
            self.users.lock().expect("users lock").users().collect()
        } else {
            Vec::new()
        };
        let entries: Vec<(RoomId, Vec<UserId>)> = self
            .rooms
            .read()
            .expect("rooms lock")
            .iter()
            .map(|(room, s)| {
                (
                    *room,
                    s.lock().expect("room lock").presence.users().collect(),
                )
            })
            .collect();
        self.bus.refresh(&connected, &entries).await;
    }

    // ---- delivery ----------------------------------------------------------------------

    /// A message this pod committed: deliver it here, then tell the other pods. (The target is
    /// `telemetry::PER_MESSAGE`, spelled out: the attribute takes only a literal.)
    #[tracing::instrument(
        name = "publish_message",
        target = "confab::trace",
        skip_all,
        fields(room = %m.room_id, seq = m.seq)
    )]
    pub fn publish_message(self: &Arc<Self>, m: &MessageRecord) {
        let text = message_frame(m);
        self.deliver_message(m.room_id, m.seq, text.clone(), m.created_at);
        self.forward(Kind::Message, m.room_id, m.seq, None, m.created_at, || {
            text.into()
        });
    }

    /// After a commit: the `notification`s a new message causes, to the sockets (on every
    /// pod) of users it concerns that are not subscribed to its room. Runs on its own task: it
    /// reads the store and must not hold up the writer.
    pub fn notify_for(self: &Arc<Self>, m: &MessageRecord, direct: bool) {
        let hub = self.clone();
        let m = m.clone();
        tokio::spawn(async move {
            if let Err(e) = hub.notify(&m, direct).await {
                tracing::warn!(error = %e, room = %m.room_id, seq = m.seq, "notifications not sent");
            }
        });
    }

    async fn notify(&self, m: &MessageRecord, direct: bool) -> crate::store::StoreResult<()> {
        let mut reasons: Vec<(NotificationReason, Vec<UserId>)> = Vec::new();
        let mut told: Vec<UserId> = vec![m.user_id];
        let mut add = |reason, candidates: Vec<UserId>, told: &mut Vec<UserId>| {
            let fresh: Vec<UserId> = candidates
                .into_iter()
                .filter(|u| !told.contains(u))
                .collect();
            told.extend(&fresh);
            if !fresh.is_empty() {
                reasons.push((reason, fresh));
            }
        };
        let message = Message::from(m);
        let mut mentioned = message.mentions.clone();
        if m.mentions_room {
            let members = self.store.members(m.room_id).await?;
            mentioned.extend(members.iter().map(|x| x.user.id));
        }
        add(NotificationReason::Mention, mentioned, &mut told);
        // The sender's send rules knew the room's kind: no need to read the room again.
        if direct {
            let members = self.store.members(m.room_id).await?;
            add(
                NotificationReason::Dm,
                members.iter().map(|x| x.user.id).collect(),
                &mut told,
            );
        }
        if let Some(root) = m.thread
            && let Some(root) = self.store.message(m.room_id, root).await?
        {
            let mut thread = vec![root.user_id];
            if let Some(summary) = Message::from(&root).thread_summary {
                thread.extend(summary.participants);
            }
            add(NotificationReason::ThreadReply, thread, &mut told);
        }
        // Nobody hears of a message from someone they block.
        let everyone: Vec<UserId> = reasons
            .iter()
            .flat_map(|(_, u)| u.iter().copied())
            .collect();
        let blockers = self.store.blockers_of(m.user_id, &everyone).await?;
        for (reason, mut users) in reasons {
            users.retain(|u| !blockers.contains(u));
            if users.is_empty() {
                continue;
            }
            // Those with no socket anywhere get a `notification` webhook event instead, for
            // a push (only looked up when a webhook wants it).
            if self.store.webhook_routes().wants("notification") {
                let connected = self.connected(&users).await;
                let events: Vec<(&'static str, serde_json::Value)> = users
                    .iter()
                    .filter(|u| !connected.contains(u))
                    .map(|u| {
                        let data = serde_json::json!({
                            "user": u,
                            "reason": reason,
                            "room": m.room_id,
                            "message": &message,
                        });
                        ("notification", data)
                    })
                    .collect();
                if !events.is_empty() {
                    self.store.enqueue_webhook_events(events).await?;
                }
            }
            let frame = ServerFrame::Notification {
                reason,
                room: m.room_id,
                message: std::borrow::Cow::Borrowed(&message),
            }
            .encode();
            self.control(ControlEvent::Notify {
                users,
                room: m.room_id,
                frame: frame.as_str().to_owned(),
            });
        }
        Ok(())
    }

    /// Any other room event made on this pod: deliver here, then tell the other pods.
    pub fn publish_event(&self, room: RoomId, text: Utf8Bytes, except: Option<UserId>) {
        self.broadcast(room, &text, except);
        self.forward(Kind::RoomEvent, room, 0, except, crate::now_ms(), || {
            text.into()
        });
    }

    /// Sends an event made here to the other pods. The frame's bytes are shared, not copied,
    /// and with no other pods (the in-process bus) nothing is built at all.
    fn forward(
        &self,
        kind: Kind,
        room: RoomId,
        seq: i64,
        except: Option<UserId>,
        created_ms: i64,
        text: impl FnOnce() -> Bytes,
    ) {
        if !self.bus.has_peers() {
            return;
        }
        self.bus.publish(Envelope {
            kind,
            origin: self.pod,
            room,
            seq,
            except,
            created_ms,
            sent_ms: crate::now_ms(),
            trace: crate::telemetry::current_traceparent(),
            text: text(),
        });
    }

    fn broadcast(&self, room: RoomId, text: &Utf8Bytes, except: Option<UserId>) {
        if let Some(state) = self.room(room) {
            let s = state.lock().expect("room lock");
            let n = fan_out(&s.subscribers, text, room, 0, except, crate::now_ms());
            self.metrics.deliveries.inc_by(n as u64);
        }
    }

    fn deliver_message(self: &Arc<Self>, room: RoomId, seq: i64, text: Utf8Bytes, created_ms: i64) {
        let Some(state) = self.room(room) else { return };
        let fill = {
            let mut guard = state.lock().expect("room lock");
            let s = &mut *guard;
            s.order
                .offer(seq, (text, created_ms), |seq, (text, created_ms)| {
                    let n = fan_out(&s.subscribers, &text, room, seq, None, created_ms);
                    self.metrics.deliveries.inc_by(n as u64);
                })
        };
        if let Some(upto) = fill {
            self.schedule_gap_fill(room, upto);
        }
    }

    fn schedule_gap_fill(self: &Arc<Self>, room: RoomId, upto: i64) {
        let hub = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GAP_WAIT).await;
            hub.fill_gap(room, upto).await;
        });
    }

    /// Reads messages that never arrived over the bus from the store and delivers them.
    async fn fill_gap(self: &Arc<Self>, room: RoomId, upto: i64) {
        loop {
            let Some(state) = self.room(room) else { return };
            let Some(from) = state.lock().expect("room lock").order.missing_after(upto) else {
                break;
            };
            match self
                .store
                .messages_after(room, from, (upto - from).min(500))
                .await
            {
                Ok(rows) if !rows.is_empty() => {
                    self.metrics.gap_fills.inc();
                    for m in &rows {
                        self.deliver_message(room, m.seq, message_frame(m), m.created_at);
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, %room, "gap fill failed; retrying");
                    tokio::time::sleep(GAP_WAIT).await;
                }
            }
        }
        let next = self
            .room(room)
            .and_then(|state| state.lock().expect("room lock").order.fill_ended());
        if let Some(upto) = next {
            self.schedule_gap_fill(room, upto);
        }
    }

    /// Compares every local room's delivered seq with the store's and fills what the bus lost
    /// (a Redis outage, a dropped publish). One query for all rooms.
    pub async fn resync(self: &Arc<Self>) {
        let tracked: Vec<(RoomId, i64)> = self
            .rooms
            .read()
            .expect("rooms lock")
            .iter()
            .filter_map(|(room, s)| {
                let point = s.lock().expect("room lock").order.resync_point();
                point.map(|d| (*room, d))
            })
            .collect();
        if tracked.is_empty() {
            return;
        }
        let ids: Vec<RoomId> = tracked.iter().map(|(r, _)| *r).collect();
        let last = match self.store.last_seqs(&ids).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "resync skipped: store unavailable");
                return;
            }
        };
        let bus_up = !self.bus_down.load(std::sync::atomic::Ordering::SeqCst);
        for (room, last_seq, rev) in last {
            let Some(state) = self.room(room) else {
                continue;
            };
            let behind = {
                let mut s = state.lock().expect("room lock");
                if bus_up {
                    s.revs = Some(s.revs.map_or((rev, rev), |(_, latest)| (latest, rev)));
                }
                s.order.behind(last_seq)
            };
            if behind {
                self.schedule_gap_fill(room, last_seq);
            }
        }
    }

    /// The bus lost its connection: until it is back, what the store says is not what this pod
    /// has delivered.
    pub fn bus_lost(&self) {
        self.bus_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// After a bus outage: every change to an existing message made since the older of the
    /// last two revs read while the bus was up is sent again, as `message_updated`, to this
    /// pod's subscribers (a reaction, an edit or a pin made on another pod meanwhile was lost
    /// with the bus). Duplicates are harmless: clients apply an update only when its rev is
    /// newer than their copy's.
    pub async fn refill_changes(&self) {
        let rooms: Vec<(RoomId, i64, i64)> = self
            .rooms
            .read()
            .expect("rooms lock")
            .iter()
            .filter_map(|(room, s)| {
                let s = s.lock().expect("room lock");
                Some((*room, s.revs?.0, s.order.delivered()?))
            })
            .collect();
        for (room, since, delivered) in rooms {
            // Messages this pod has delivered that changed since: new ones come by seq (the
            // resync's gap fill), and a message nobody changed is not sent twice.
            let changed = match self.store.changes(room, since, delivered, REFILL_MAX).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, %room, "changes after the bus outage not refilled");
                    continue;
                }
            };
            if changed.len() as i64 == REFILL_MAX {
                tracing::warn!(%room, "more than {REFILL_MAX} changes during the bus outage; clients resync on reconnect");
            }
            let touched = |m: &&MessageRecord| {
                m.edited_at.is_some()
                    || m.deleted
                    || m.reactions.is_some()
                    || m.pinned_at.is_some()
                    || m.thread_summary.is_some()
            };
            for m in changed.iter().filter(touched) {
                let frame =
                    ServerFrame::MessageUpdated(std::borrow::Cow::Borrowed(&Message::from(m)))
                        .encode();
                self.broadcast(room, &frame, None);
            }
        }
        self.bus_down
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    // ---- control ----------------------------------------------------------------------

    /// Applies a control event on this pod and sends it to the others.
    pub fn control(&self, event: ControlEvent) {
        self.apply_control(&event);
        self.forward_control(&event);
    }

    /// The webhooks changed on this pod: its routes are read again before this returns (so the
    /// change applies from the next commit on), and every other pod is told to read them.
    pub async fn webhooks_changed(&self) -> crate::store::StoreResult<()> {
        self.store.reload_webhooks().await?;
        self.forward_control(&ControlEvent::WebhooksChanged);
        Ok(())
    }

    fn forward_control(&self, event: &ControlEvent) {
        let nobody = RoomId(uuid::Uuid::nil());
        self.forward(Kind::Control, nobody, 0, None, crate::now_ms(), || {
            Bytes::from(serde_json::to_vec(&event).expect("control serializes"))
        });
    }

    /// A user became a member of a room: its sockets on every pod are told (`room_joined`).
    pub fn member_added(&self, room: RoomId, user: UserId) {
        self.control(ControlEvent::MemberAdded { room, user });
    }

    /// A user lost membership of a room (left, or was kicked): its sockets on every pod forget
    /// the membership; `drop_subscription` also stops them receiving the room.
    pub fn member_removed(
        &self,
        room: RoomId,
        user: UserId,
        kicked: bool,
        drop_subscription: bool,
    ) {
        self.control(ControlEvent::MemberRemoved {
            room,
            user,
            kicked,
            drop_subscription,
        });
    }

    fn apply_control(&self, event: &ControlEvent) {
        let recipients: Vec<Outbox> = match event {
            ControlEvent::UserDeleted { user } => {
                for o in self.outboxes_of(*user) {
                    o.close(Close::UNAUTHENTICATED);
                }
                return;
            }
            ControlEvent::WebhooksChanged => {
                let store = self.store.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.reload_webhooks().await {
                        tracing::warn!(error = %e, "reloading webhooks failed");
                    }
                });
                return;
            }
            ControlEvent::KeyRevoked { key } => {
                let keyed = self.keyed.lock().expect("keyed lock");
                for (k, o) in keyed.values() {
                    if k == key {
                        o.close(Close::UNAUTHENTICATED);
                    }
                }
                return;
            }
            ControlEvent::UserBanned { user } => {
                for o in self.outboxes_of(*user) {
                    o.close(Close::BANNED);
                }
                return;
            }
            ControlEvent::RoomChanged { .. } => self
                .users
                .lock()
                .expect("users lock")
                .all()
                .cloned()
                .collect(),
            ControlEvent::MemberAdded { user, .. }
            | ControlEvent::MemberRemoved { user, .. }
            | ControlEvent::MemberMuted { user, .. }
            | ControlEvent::UserMuted { user, .. } => self.outboxes_of(*user),
            ControlEvent::Blocked { user, .. } => self.outboxes_of(*user),
            ControlEvent::Notify { users, .. } => {
                users.iter().flat_map(|u| self.outboxes_of(*u)).collect()
            }
        };
        // One copy for all the sockets it concerns, as for room events.
        let shared = Arc::new(event.clone());
        for o in recipients {
            o.push(Outbound::Control(shared.clone()));
        }
    }

    // ---- stats -----------------------------------------------------------------------

    /// Publishes this pod's stats for the admin API on other pods.
    pub async fn announce(&self) {
        self.bus.announce(&self.pod_stats()).await;
    }

    /// Sets the gauges that are sums over connections and rooms (called every few seconds).
    pub fn record_gauges(&self) {
        let (total, longest) = self
            .users
            .lock()
            .expect("users lock")
            .all()
            .map(Outbox::queued)
            .fold((0usize, 0usize), |(t, m), q| (t + q, m.max(q)));
        self.metrics.outbound_queue_frames.set(total as i64);
        self.metrics.outbound_queue_max_frames.set(longest as i64);
        let online: usize = self
            .rooms
            .read()
            .expect("rooms lock")
            .values()
            .map(|s| s.lock().expect("room lock").presence.len())
            .sum();
        self.metrics.presence_users.set(online as i64);
    }

    /// This pod's numbers for the admin stats.
    pub fn pod_stats(&self) -> PodStats {
        PodStats {
            id: self.pod,
            connections: self.connection_count() as u64,
            started_ms: self.started_ms,
        }
    }

    /// An envelope from another pod.
    pub fn on_bus(self: &Arc<Self>, env: Envelope) {
        if env.origin == self.pod {
            return;
        }
        let lag = (crate::now_ms() - env.sent_ms).max(0) as f64 / 1000.0;
        self.metrics.bus_lag.observe(lag);
        // The event's trace continues here, on this pod.
        let span = tracing::info_span!(
            target: crate::telemetry::PER_MESSAGE,
            "deliver",
            room = %env.room,
            seq = env.seq,
            lag_ms = lag * 1000.0
        );
        crate::telemetry::continue_trace(&span, &env.trace);
        let _entered = span.enter();
        match env.kind {
            Kind::Message => {
                if let Some(text) = from_bytes(env.text) {
                    self.deliver_message(env.room, env.seq, text, env.created_ms);
                }
            }
            Kind::RoomEvent => {
                if let Some(text) = from_bytes(env.text) {
                    self.broadcast(env.room, &text, env.except);
                }
            }
            Kind::Control => match serde_json::from_slice::<ControlEvent>(&env.text) {
                Ok(c) => self.apply_control(&c),
                Err(e) => tracing::warn!(error = %e, "unknown control event"),
            },
        }
    }
}

/// Events that change what connections may do; every pod applies them to its sockets.
#[derive(Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlEvent {
    /// A user became a member (joined, was invited, a DM was opened with them, a `ChatRoom`
    /// named them): their sockets get `room_joined`.
    MemberAdded {
        room: RoomId,
        user: UserId,
    },
    MemberRemoved {
        room: RoomId,
        user: UserId,
        kicked: bool,
        drop_subscription: bool,
    },
    MemberMuted {
        room: RoomId,
        user: UserId,
        until: Option<i64>,
    },
    UserMuted {
        user: UserId,
        until: Option<i64>,
    },
    UserBanned {
        user: UserId,
    },
    /// The account was deleted: its sockets close with 4001.
    UserDeleted {
        user: UserId,
    },
    /// A bot's API key was revoked: the sockets opened with it close with 4001.
    KeyRevoked {
        key: String,
    },
    /// Webhooks were added or removed: every pod reloads which events its outbox records.
    WebhooksChanged,
    RoomChanged {
        room: RoomId,
    },
    /// `user` blocked or unblocked `other`: the blocker's sockets re-read whose typing to hide.
    Blocked {
        user: UserId,
        other: UserId,
    },
    /// A `notification` frame for these users' sockets that are not subscribed to `room`.
    Notify {
        users: Vec<UserId>,
        room: RoomId,
        frame: String,
    },
}
