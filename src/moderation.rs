//! What a user may do in a room right now, decided from records alone (no I/O): archived and
//! read-only rooms, room and global mutes, slow mode. Callers load the records (or keep them
//! cached, refreshed by control events) and ask here.

use crate::error::ApiError;
use crate::store::{MemberRecord, RoomRecord};

/// The parts of a room and a membership that decide whether a member may send.
#[derive(Clone, Debug)]
pub struct SendRules {
    pub role: String,
    pub archived: bool,
    pub read_only: bool,
    pub slow_mode_seconds: i64,
    pub member_muted_until: Option<i64>,
}

impl SendRules {
    pub fn new(room: &RoomRecord, member: &MemberRecord) -> Self {
        SendRules {
            role: member.role.clone(),
            archived: room.archived,
            read_only: room.read_only,
            slow_mode_seconds: room.slow_mode_seconds,
            member_muted_until: member.muted_until,
        }
    }

    pub fn is_moderator(&self) -> bool {
        matches!(self.role.as_str(), "owner" | "moderator")
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
        if self.member_muted_until.is_some_and(|t| t > now) {
            return Err(ApiError::Muted("you are muted in this room".into()));
        }
        Ok(())
    }

    /// The slow-mode interval that applies to this member, if any.
    pub fn slow_mode(&self) -> Option<std::time::Duration> {
        (self.slow_mode_seconds > 0 && !self.is_moderator())
            .then(|| std::time::Duration::from_secs(self.slow_mode_seconds as u64))
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

    fn rules(role: &str) -> SendRules {
        SendRules {
            role: role.into(),
            archived: false,
            read_only: false,
            slow_mode_seconds: 0,
            member_muted_until: None,
        }
    }

    #[test]
    fn read_only_rooms_let_moderators_speak() {
        let r = SendRules {
            read_only: true,
            ..rules("member")
        };
        assert_eq!(r.check(None, 0).unwrap_err().code(), "forbidden");
        assert!(
            SendRules {
                read_only: true,
                ..rules("moderator")
            }
            .check(None, 0)
            .is_ok()
        );
    }

    #[test]
    fn mutes_expire_by_themselves() {
        let r = SendRules {
            member_muted_until: Some(1_000),
            ..rules("member")
        };
        assert_eq!(r.check(None, 999).unwrap_err().code(), "muted");
        assert!(r.check(None, 1_000).is_ok());
        assert_eq!(
            rules("member").check(Some(5), 4).unwrap_err().code(),
            "muted"
        );
        assert!(rules("member").check(Some(5), 5).is_ok());
    }

    #[test]
    fn slow_mode_spares_moderators() {
        let r = SendRules {
            slow_mode_seconds: 5,
            ..rules("member")
        };
        assert_eq!(r.slow_mode(), Some(std::time::Duration::from_secs(5)));
        assert_eq!(
            SendRules {
                slow_mode_seconds: 5,
                ..rules("owner")
            }
            .slow_mode(),
            None
        );
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(until(1_000, Some(2)), 3_000);
        assert_eq!(until(1_000, None), i64::MAX);
        assert_eq!(until(1_000, Some(u64::MAX)), i64::MAX);
    }
}
