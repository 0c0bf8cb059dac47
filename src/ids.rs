//! Newtype identifiers, so a room id can never be passed where a user id is expected.
//! All are UUID v7 (time-ordered); they serialize as plain strings. They live in the protocol
//! crate, which the Rust client shares.

pub use confab_protocol::ids::*;
