//! confab: a real-time multi-room chat server.
//!
//! The path of a message, and where each step lives:
//!
//! - [`ws`]: a connection task per socket; reads client frames and writes queued server
//!   frames. [`protocol`] holds every frame's shape, both ways.
//! - [`http`]: the REST API and operations endpoints; [`app`] assembles it with the WebSocket
//!   route and the middleware.
//! - [`chat`]: the chat operations every entry point calls (one send path, edits, deletes,
//!   markers, membership), over [`state::AppState`], the cheap handles everything shares.
//! - [`commit`]: the group-commit writer; allocates each room's `seq` inside one transaction per
//!   batch and answers senders only after the commit.
//! - [`hub`]: local fan-out of once-encoded events to subscribers, in `seq` order with gaps
//!   filled from the store; presence counts; per-user connection registry.
//! - [`bus`]: how events reach the other pods (in-process or Redis Pub/Sub).
//! - [`store`]: durable state (SQLite or PostgreSQL) behind one trait.
//! - [`auth`]: passwords, access tokens and refresh-token families.
//! - [`moderation`]: what a user may do in a room right now (mutes, bans, slow mode).
//! - [`policy`]: the installation-wide limits in force; [`operator`]: `ChatRoom` and
//!   `ChatPolicy` resources and the reconcile code that applies them.
//! - [`telemetry`]: logging and Prometheus metrics.
//! - [`server`]: wiring it all together, startup and graceful shutdown.

pub mod app;
pub mod asyncapi;
pub mod auth;
pub mod bus;
pub mod chat;
pub mod commit;
pub mod config;
pub mod error;
pub mod http;
pub mod hub;
pub mod ids;
pub mod model;
pub mod moderation;
pub mod operator;
pub mod policy;
pub mod protocol;
pub mod resume;
pub mod selftest;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod validate;
pub mod webhooks;
pub mod ws;

/// Milliseconds since the Unix epoch: the unit of every stored time.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A place counted in a queue (password hashes waiting, store reads not answered yet), given
/// back however the wait ends: answered, refused or dropped half-way.
pub struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    /// Takes a place; also returns how many were waiting before it.
    pub fn enter(count: &'a std::sync::atomic::AtomicUsize) -> (Self, usize) {
        let ahead = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        (Waiting(count), ahead)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Seconds since the Unix epoch: the unit of token lifetimes (`exp`, `iat`).
pub fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default()
}
