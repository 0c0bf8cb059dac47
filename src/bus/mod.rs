//! How events reach the other pods: [`Bus`], with an in-process implementation ([`LocalBus`],
//! a single pod has no one to tell) and a Redis Pub/Sub one ([`RedisBus`]).
//!
//! The bus only carries [`Envelope`]s; it never interprets a room event. Every pod delivers its
//! own events locally first (see `hub`), so a bus only forwards to *other* pods and drops its
//! own echoes. Presence registration lives here too, because knowing who is online on other
//! pods is a question only the shared bus can answer.

mod local;
mod redis;
pub mod sentinel;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::ids::{PodId, RoomId, UserId};

pub use local::LocalBus;
pub use redis::RedisBus;

/// What an envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A committed message of a room; `seq` orders it.
    Message = 1,
    /// Any other event of a room (typing, receipt, presence, room update); no order.
    RoomEvent = 2,
    /// A control event (membership changes, later bans and policy) as JSON.
    Control = 3,
}

/// One event on the bus: a fixed binary header and the frame text, which is encoded once by the
/// pod that made the event and passed through to sockets unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub kind: Kind,
    pub origin: PodId,
    pub room: RoomId,
    pub seq: i64,
    /// Connections of this user do not receive the event (typing is not echoed to its author).
    pub except: Option<UserId>,
    /// When the server read the message (ms), for the end-to-end latency.
    pub created_ms: i64,
    /// When the origin pod published it (ms), for the bus lag.
    pub sent_ms: i64,
    /// W3C `traceparent` of the span that made the event (empty without tracing).
    pub trace: String,
    pub text: Bytes,
}

const HEADER: usize = 1 + 16 + 16 + 8 + 16 + 8 + 8;

impl Envelope {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER + self.text.len());
        b.put_u8(self.kind as u8);
        b.put_slice(self.origin.0.as_bytes());
        b.put_slice(self.room.0.as_bytes());
        b.put_i64(self.seq);
        b.put_slice(self.except.map(|u| u.0).unwrap_or(Uuid::nil()).as_bytes());
        b.put_i64(self.created_ms);
        b.put_i64(self.sent_ms);
        let trace = &self.trace.as_bytes()[..self.trace.len().min(255)];
        b.put_u8(trace.len() as u8);
        b.put_slice(trace);
        b.put_slice(&self.text);
        b.freeze()
    }

    pub fn decode(b: Bytes) -> Option<Envelope> {
        if b.len() < HEADER + 1 {
            return None;
        }
        let kind = match b[0] {
            1 => Kind::Message,
            2 => Kind::RoomEvent,
            3 => Kind::Control,
            _ => return None,
        };
        let uuid = |at: usize| Uuid::from_slice(&b[at..at + 16]).ok();
        let except = uuid(41)?;
        let trace_len = *b.get(HEADER)? as usize;
        Some(Envelope {
            kind,
            origin: PodId(uuid(1)?),
            room: RoomId(uuid(17)?),
            seq: i64::from_be_bytes(b[33..41].try_into().ok()?),
            except: (!except.is_nil()).then_some(UserId(except)),
            created_ms: i64::from_be_bytes(b[57..65].try_into().ok()?),
            sent_ms: i64::from_be_bytes(b[65..73].try_into().ok()?),
            trace: String::from_utf8(b.get(HEADER + 1..HEADER + 1 + trace_len)?.to_vec()).ok()?,
            text: b.slice(HEADER + 1 + trace_len..),
        })
    }
}

/// What a bus hands to the hub.
#[derive(Debug)]
pub enum Incoming {
    /// An event from another pod.
    Event(Envelope),
    /// The bus lost its connection: events are being missed until `Resubscribed`.
    Disconnected,
    /// The bus reconnected and resubscribed: events may have been missed meanwhile.
    Resubscribed,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// `local` or `redis`.
    fn name(&self) -> &'static str;
    /// Whether there are other pods to reach; when not, the hub builds no envelope at all.
    fn has_peers(&self) -> bool;
    /// Queues an envelope for the other pods. Never waits: a bus that is down drops it, and the
    /// store fills the gap for messages.
    fn publish(&self, env: Envelope);
    /// Start receiving a room's events (called for a pod's first local subscriber).
    async fn join_room(&self, room: RoomId);
    /// Stop receiving a room's events (called when the last local subscriber leaves).
    async fn leave_room(&self, room: RoomId);
    /// Whether the bus answers (readiness).
    async fn ping(&self) -> Result<(), String>;
    /// Records that `user` has (or no longer has) a socket subscribed to `room` on this pod.
    async fn presence_set(&self, room: RoomId, user: UserId, online: bool);
    /// Users online in `room` on other pods.
    async fn presence_remote(&self, room: RoomId) -> Vec<UserId>;
    /// `presence_remote` for many rooms at once (one round trip where the bus allows).
    async fn presence_remote_many(&self, rooms: &[RoomId]) -> Vec<Vec<UserId>> {
        let mut out = Vec::with_capacity(rooms.len());
        for &room in rooms {
            out.push(self.presence_remote(room).await);
        }
        out
    }
    /// Removes the expired presence entries of `room` (left by a pod that died without
    /// cleaning up) and returns the users who are now online nowhere. Of pods sweeping at the
    /// same time, only the one whose delete took effect returns a user, so one offline event
    /// goes out.
    async fn presence_sweep(&self, room: RoomId) -> Vec<UserId>;
    /// Records that `user` has (or no longer has) any socket open on this pod.
    async fn connected_set(&self, user: UserId, connected: bool);
    /// Renews this pod's connection and presence records before they expire (every few
    /// seconds): `connected` users, and the users online in each room. Buses that keep them
    /// remotely send them in as few round trips as they can.
    async fn refresh(&self, connected: &[UserId], presence: &[(RoomId, Vec<UserId>)]) {
        for &user in connected {
            self.connected_set(user, true).await;
        }
        for (room, users) in presence {
            for &user in users {
                self.presence_set(*room, user, true).await;
            }
        }
    }
    /// Which of `users` have a socket open on another pod.
    async fn connected_remote(&self, users: &[UserId]) -> Vec<UserId>;
    /// Publishes this pod's stats for the admin API (refreshed every few seconds).
    async fn announce(&self, stats: &PodStats);
    /// The other live pods' latest stats.
    async fn pods_remote(&self) -> Vec<PodStats>;
}

/// One pod's line in the admin stats.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct PodStats {
    pub id: PodId,
    pub connections: u64,
    pub started_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let env = Envelope {
            kind: Kind::Message,
            origin: PodId::new(),
            room: RoomId::new(),
            seq: 42,
            except: Some(UserId::new()),
            created_ms: 1_700_000_000_000,
            sent_ms: 1_700_000_000_005,
            trace: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            text: Bytes::from_static(b"{\"type\":\"message\"}"),
        };
        assert_eq!(Envelope::decode(env.encode()), Some(env.clone()));
        let none = Envelope {
            except: None,
            ..env
        };
        assert_eq!(Envelope::decode(none.encode()), Some(none));
        assert_eq!(Envelope::decode(Bytes::from_static(b"short")), None);
    }
}
