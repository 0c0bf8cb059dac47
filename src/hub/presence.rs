//! Who is online in one room on this pod, as plain data: how many of each user's sockets are
//! subscribed there. A user comes online with the first and goes offline with the last; the hub
//! announces those changes and records them on the bus, so that other pods know too.

use std::collections::HashMap;

use crate::ids::UserId;

#[derive(Default, Debug)]
pub struct Presence {
    sockets: HashMap<UserId, u32>,
}

impl Presence {
    /// A socket of `user` subscribed: true when the user just came online here.
    pub fn join(&mut self, user: UserId) -> bool {
        let count = self.sockets.entry(user).or_default();
        *count += 1;
        *count == 1
    }

    /// A socket of `user` left: true when it was the user's last one here.
    pub fn leave(&mut self, user: UserId) -> bool {
        let Some(count) = self.sockets.get_mut(&user) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.sockets.remove(&user);
            return true;
        }
        false
    }

    pub fn contains(&self, user: UserId) -> bool {
        self.sockets.contains_key(&user)
    }

    /// The users online here.
    pub fn users(&self) -> impl Iterator<Item = UserId> + '_ {
        self.sockets.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_online_from_the_first_socket_to_the_last() {
        let mut p = Presence::default();
        let (alice, bob) = (UserId::new(), UserId::new());
        assert!(p.join(alice), "first socket: online");
        assert!(!p.join(alice), "a second socket changes nothing");
        assert!(p.join(bob));
        assert_eq!(p.len(), 2);
        assert!(!p.leave(alice), "one socket left: still online");
        assert!(p.contains(alice));
        assert!(p.leave(alice), "the last socket: offline");
        assert!(!p.contains(alice));
        assert!(!p.leave(alice), "leaving again changes nothing");
        assert_eq!(p.users().collect::<Vec<_>>(), vec![bob]);
        assert!(p.leave(bob) && p.is_empty());
    }
}
