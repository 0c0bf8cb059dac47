//! Who is connected to this pod: each user's connections, as plain data (`&mut self`, no
//! locks, no I/O). The hub holds it under one short lock; what the registry must always be is
//! written down in `check_invariants`, which the tests call after every change.

use std::collections::HashMap;

use super::outbox::{ConnId, Outbox};
use crate::ids::UserId;

#[derive(Default)]
pub struct Registry {
    users: HashMap<UserId, HashMap<ConnId, Outbox>>,
    connections: usize,
}

impl Registry {
    /// Adds a connection; false if it was already there.
    pub fn insert(&mut self, outbox: &Outbox) -> bool {
        let fresh = self
            .users
            .entry(outbox.user())
            .or_default()
            .insert(outbox.conn, outbox.clone())
            .is_none();
        self.connections += usize::from(fresh);
        fresh
    }

    /// Removes a connection; false if it was not there.
    pub fn remove(&mut self, outbox: &Outbox) -> bool {
        let Some(conns) = self.users.get_mut(&outbox.user()) else {
            return false;
        };
        let removed = conns.remove(&outbox.conn).is_some();
        if conns.is_empty() {
            self.users.remove(&outbox.user());
        }
        self.connections -= usize::from(removed);
        removed
    }

    /// The connections of one user.
    pub fn of(&self, user: UserId) -> impl Iterator<Item = &Outbox> {
        self.users.get(&user).into_iter().flat_map(HashMap::values)
    }

    pub fn connections_of(&self, user: UserId) -> usize {
        self.users.get(&user).map_or(0, HashMap::len)
    }

    pub fn len(&self) -> usize {
        self.connections
    }

    pub fn is_empty(&self) -> bool {
        self.connections == 0
    }

    /// The users with at least one connection here.
    pub fn users(&self) -> impl Iterator<Item = UserId> + '_ {
        self.users.keys().copied()
    }

    pub fn all(&self) -> impl Iterator<Item = &Outbox> {
        self.users.values().flat_map(HashMap::values)
    }

    /// Panics unless: no user is listed without connections, every connection is filed under
    /// its own user and id, and the count is the number of connections.
    #[cfg(test)]
    pub fn check_invariants(&self) {
        let mut total = 0;
        for (user, conns) in &self.users {
            assert!(!conns.is_empty(), "user {user} listed with no connection");
            for (conn, outbox) in conns {
                assert_eq!(
                    (outbox.user(), outbox.conn),
                    (*user, *conn),
                    "misfiled connection"
                );
            }
            total += conns.len();
        }
        assert_eq!(self.connections, total, "connection count");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Metrics;

    #[test]
    fn connections_are_counted_per_user_and_forgotten_entirely() {
        let metrics = Metrics::new();
        let (alice, bob) = (UserId::new(), UserId::new());
        let (a1, _i1) = Outbox::new(alice, 16, metrics.clone());
        let (a2, _i2) = Outbox::new(alice, 16, metrics.clone());
        let (b1, _i3) = Outbox::new(bob, 16, metrics);
        let mut r = Registry::default();
        r.check_invariants();
        assert!(r.insert(&a1) && r.insert(&a2) && r.insert(&b1));
        assert!(!r.insert(&a1), "a connection is registered once");
        r.check_invariants();
        assert_eq!(
            (r.len(), r.connections_of(alice), r.connections_of(bob)),
            (3, 2, 1)
        );
        assert_eq!(r.of(alice).count(), 2);
        assert!(r.remove(&a1));
        assert!(!r.remove(&a1), "removing twice changes nothing");
        r.check_invariants();
        assert!(r.remove(&a2));
        r.check_invariants();
        assert_eq!(
            (r.len(), r.connections_of(alice), r.of(alice).count()),
            (1, 0, 0)
        );
        assert!(r.remove(&b1));
        r.check_invariants();
        assert!(r.is_empty() && r.all().next().is_none());
    }
}
