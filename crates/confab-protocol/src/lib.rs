//! The frames and JSON shapes of confab's chat protocol, shared by the server and its Rust
//! client so that the two cannot drift. `docs/protocol.md` in confab's repository is the
//! reference they implement; `docs/asyncapi.json` is the machine-readable form of the frames.
//!
//! Nothing here does I/O.
#![doc = include_str!("../README.md")]

pub mod frames;
pub mod ids;
pub mod model;

pub use frames::{
    ClientFrame, NotificationReason, PresenceStatus, ReceiptKind, ServerFrame, close,
};
pub use ids::{AttachmentId, FamilyId, MessageId, PodId, RoomId, UserId, WebhookId};
pub use model::{
    Attachment, Message, ReactionCount, Role, Room, RoomKind, ThreadSummary, UnknownValue, User,
};
