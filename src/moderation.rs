//! What a user may do in a room right now, decided from records alone (no I/O): archived and
//! read-only rooms, room and global mutes, slow mode. Callers load the records (or keep them
//! cached, refreshed by control events) and ask here. [`SlowMode`] remembers, per pod, when
//! each member last posted in a slow-mode room.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::ids::{RoomId, UserId};
use crate::store::{MemberRecord, Role, RoomRecord};

/// The parts of a room and a membership that decide whether a member may send. A socket keeps
/// one for every room it sends to or is subscribed to, so it is kept to 16 bytes (it was 32):
/// slow mode is at most a day (`slow_mode_seconds` is checked on the way in), and a mute's
/// end is a time after the epoch, so `0` can stand for none.
#[derive(Clone, Debug)]
pub struct SendRules {
    pub role: Role,
    pub archived: bool,
    pub read_only: bool,
    /// A direct room: every message notifies the other person.
    pub direct: bool,
    slow_mode_seconds: u32,
    member_muted_until: Option<std::num::NonZeroI64>,
}

const _: () = assert!(std::mem::size_of::<SendRules>() <= 16);

impl SendRules {
    pub fn new(room: &RoomRecord, member: &MemberRecord) -> Self {
        Self::of(&crate::store::RoomGate::from(room), member)
    }

    /// The rules from what a subscribe reads of the room.
    pub fn of(room: &crate::store::RoomGate, member: &MemberRecord) -> Self {
        SendRules {
            role: member.role,
            archived: room.archived,
            read_only: room.read_only,
            direct: room.kind == crate::store::RoomKind::Direct,
            slow_mode_seconds: u32::try_from(room.slow_mode_seconds.max(0)).unwrap_or(u32::MAX),
            member_muted_until: member.muted_until.and_then(std::num::NonZeroI64::new),
        }
    }

    /// The member's mute in this room changed (a control event).
    pub fn set_member_muted_until(&mut self, until: Option<i64>) {
        self.member_muted_until = until.and_then(std::num::NonZeroI64::new);
    }

    pub fn is_moderator(&self) -> bool {
        self.role.moderates()
    }

    /// Checks everything but slow mode (which needs the time of the user's last message).
    pub fn check(&self, user_muted_until: Option<i64>, now: i64) -> Result<(), ApiError> {
        if self.archived {
            return Err(ApiError::forbidden("the room is archived"));
        }
        if self.read_only && !self.is_moderator() {
            return Err(ApiError::forbidden("the room is read-only"));
        }
        if user_muted_until.is_some_and(|t| t > now) {
            return Err(ApiError::Muted("you are muted".into()));
        }
        if self.member_muted_until.is_some_and(|t| t.get() > now) {
            return Err(ApiError::Muted("you are muted in this room".into()));
        }
        Ok(())
    }

    /// The slow-mode interval that applies to this member, if any.
    pub fn slow_mode(&self) -> Option<std::time::Duration> {
        (self.slow_mode_seconds > 0 && !self.is_moderator())
            .then(|| std::time::Duration::from_secs(u64::from(self.slow_mode_seconds)))
    }
}

/// When each member last posted in a slow-mode room. Kept per pod: a user on two pods at once
/// could send twice per interval.
#[derive(Default)]
pub struct SlowMode {
    last: Mutex<HashMap<(RoomId, UserId), Instant>>,
}

impl SlowMode {
    /// Takes `user`'s slot in `room` if the rules impose slow mode: the last check before a
    /// message is submitted, so that a message refused for another reason costs no slot.
    pub fn take(&self, rules: &SendRules, room: RoomId, user: UserId) -> Result<(), ApiError> {
        let Some(interval) = rules.slow_mode() else {
            return Ok(());
        };
        self.take_at(room, user, interval, Instant::now())
            .map_err(|ms| ApiError::SlowMode {
                message: format!("slow mode: one message every {} s", interval.as_secs()),
                retry_after_ms: ms,
            })
    }

    /// Records a message at `now`, or says how long the user must still wait (ms).
    fn take_at(
        &self,
        room: RoomId,
        user: UserId,
        interval: Duration,
        now: Instant,
    ) -> Result<(), u64> {
        // A short section with no I/O: a lookup and an insert.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = last.get(&(room, user)) {
            let next = *t + interval;
            if next > now {
                return Err((next - now).as_millis().max(1) as u64);
            }
        }
        if last.len() > 100_000 {
            last.retain(|_, t| now.duration_since(*t) < Duration::from_secs(3600));
        }
        last.insert((room, user), now);
        Ok(())
    }
}

/// `until` for a duration in seconds: `None` duration means for good.
pub fn until(now: i64, duration_seconds: Option<u64>) -> i64 {
    match duration_seconds {
        Some(s) => now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000)),
        None => i64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(role: Role) -> SendRules {
        SendRules {
            role,
            archived: false,
            read_only: false,
            direct: false,
            slow_mode_seconds: 0,
            member_muted_until: None,
        }
    }

    #[test]
    fn read_only_rooms_let_moderators_speak() {
        let r = SendRules {
            read_only: true,
            ..rules(Role::Member)
        };
        assert_eq!(r.check(None, 0).unwrap_err().code(), "forbidden");
        assert!(
            SendRules {
                read_only: true,
                ..rules(Role::Moderator)
            }
            .check(None, 0)
            .is_ok()
        );
    }

    #[test]
    fn mutes_expire_by_themselves() {
        let mut r = rules(Role::Member);
        r.set_member_muted_until(Some(1_000));
        assert_eq!(r.check(None, 999).unwrap_err().code(), "muted");
        assert!(r.check(None, 1_000).is_ok());
        assert_eq!(
            rules(Role::Member).check(Some(5), 4).unwrap_err().code(),
            "muted"
        );
        assert!(rules(Role::Member).check(Some(5), 5).is_ok());
    }

    #[test]
    fn slow_mode_spares_moderators() {
        let r = SendRules {
            slow_mode_seconds: 5,
            ..rules(Role::Member)
        };
        assert_eq!(r.slow_mode(), Some(std::time::Duration::from_secs(5)));
        assert_eq!(
            SendRules {
                slow_mode_seconds: 5,
                ..rules(Role::Owner)
            }
            .slow_mode(),
            None
        );
    }

    #[test]
    fn slow_mode_holds_each_member_to_its_interval() {
        let slow = SlowMode::default();
        let (room, alice, bob) = (RoomId::new(), UserId::new(), UserId::new());
        let t0 = Instant::now();
        let every = Duration::from_secs(5);
        assert_eq!(slow.take_at(room, alice, every, t0), Ok(()));
        assert_eq!(
            slow.take_at(room, alice, every, t0 + Duration::from_secs(2)),
            Err(3_000)
        );
        assert_eq!(slow.take_at(room, bob, every, t0), Ok(()));
        assert_eq!(slow.take_at(room, alice, every, t0 + every), Ok(()));
        // Moderators are not held at all.
        let owner = SendRules {
            slow_mode_seconds: 5,
            ..rules(Role::Owner)
        };
        assert!(slow.take(&owner, room, alice).is_ok());
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(until(1_000, Some(2)), 3_000);
        assert_eq!(until(1_000, None), i64::MAX);
        assert_eq!(until(1_000, Some(u64::MAX)), i64::MAX);
    }
}
