//! The in-process bus of the embedded shape: there are no other pods, so nothing leaves.

use async_trait::async_trait;

use super::PodStats;
use super::{Bus, Envelope};
use crate::ids::{RoomId, UserId};

#[derive(Default)]
pub struct LocalBus;

#[async_trait]
impl Bus for LocalBus {
    fn name(&self) -> &'static str {
        "local"
    }
    fn has_peers(&self) -> bool {
        false
    }
    fn publish(&self, _env: Envelope) {}
    async fn join_room(&self, _room: RoomId) {}
    async fn leave_room(&self, _room: RoomId) {}
    async fn ping(&self) -> Result<(), String> {
        Ok(())
    }
    async fn presence_set(&self, _room: RoomId, _user: UserId, _online: bool) {}
    async fn presence_remote(&self, _room: RoomId) -> Vec<UserId> {
        Vec::new()
    }
    async fn presence_sweep(&self, _room: RoomId) -> Vec<UserId> {
        Vec::new()
    }
    async fn connected_set(&self, _user: UserId, _connected: bool) {}
    async fn connected_remote(&self, _users: &[UserId]) -> Vec<UserId> {
        Vec::new()
    }
    async fn announce(&self, _stats: &PodStats) {}
    async fn pods_remote(&self) -> Vec<PodStats> {
        Vec::new()
    }
}
