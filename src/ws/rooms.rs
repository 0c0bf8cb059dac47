//! What a connection keeps per room ([`Rooms`]: its cursor while subscribed, and the send
//! rules once checked), in a vector sorted by room ([`RoomMap`]).

use crate::ids::RoomId;
use crate::moderation::SendRules;

/// A small map keyed by room. A socket is in few rooms (at most `--max-subscriptions`), and
/// every idle socket holds its maps for its whole life: a sorted vector holds its entries in
/// their own size, where a hash table keeps spare buckets and 48 bytes of its own (per socket
/// with 20 rooms, ~2.4 KB against ~1.4 KB: docs/BENCHMARKS.md, "Many rooms per socket").
/// Lookups are a binary search over at most a few hundred ids.
pub(super) struct RoomMap<V> {
    entries: Vec<(RoomId, V)>,
}

impl<V> RoomMap<V> {
    pub const fn new() -> Self {
        RoomMap {
            entries: Vec::new(),
        }
    }

    fn find(&self, room: &RoomId) -> Result<usize, usize> {
        self.entries.binary_search_by(|(r, _)| r.cmp(room))
    }

    pub fn get(&self, room: &RoomId) -> Option<&V> {
        self.find(room).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, room: &RoomId) -> Option<&mut V> {
        self.find(room).ok().map(|i| &mut self.entries[i].1)
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, room: RoomId, value: V) -> Option<V> {
        match self.find(&room) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                // Grown one entry at a time: no spare room is kept for entries that may never
                // come.
                self.entries.reserve_exact(1);
                self.entries.insert(i, (room, value));
                None
            }
        }
    }

    pub fn remove(&mut self, room: &RoomId) -> Option<V> {
        let i = self.find(room).ok()?;
        let (_, value) = self.entries.remove(i);
        if self.entries.len() <= self.entries.capacity() / 2 {
            self.entries.shrink_to_fit();
        }
        Some(value)
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }
}

/// A room's entry in [`Rooms`].
struct Entry {
    /// The last message seq this socket was sent in the room; [`Entry::UNSUBSCRIBED`] when
    /// the socket is not subscribed (an `Option` would take 8 bytes more).
    cursor: i64,
    /// The send rules, once the membership was checked; cleared when a control event says
    /// they changed.
    rules: Option<SendRules>,
}

impl Entry {
    const UNSUBSCRIBED: i64 = i64::MIN;

    fn subscribed(&self) -> bool {
        self.cursor != Self::UNSUBSCRIBED
    }
}

/// The rooms a socket is subscribed to, with its cursor in each, and the send rules of the
/// rooms it sends to, in one entry per room: a subscribed socket keeps both for every room,
/// and one map holds them in 40 bytes a room where two held them in 56, with one vector less.
pub(super) struct Rooms {
    map: RoomMap<Entry>,
}

const _: () = assert!(std::mem::size_of::<(RoomId, Entry)>() <= 40);

impl Rooms {
    pub const fn new() -> Self {
        Rooms {
            map: RoomMap::new(),
        }
    }

    /// The socket's cursor in `room`, if it is subscribed.
    pub fn cursor(&self, room: &RoomId) -> Option<i64> {
        self.map
            .get(room)
            .filter(|e| e.subscribed())
            .map(|e| e.cursor)
    }

    /// The socket's cursor in `room`, to move, if it is subscribed.
    pub fn cursor_mut(&mut self, room: &RoomId) -> Option<&mut i64> {
        self.map
            .get_mut(room)
            .filter(|e| e.subscribed())
            .map(|e| &mut e.cursor)
    }

    pub fn is_subscribed(&self, room: &RoomId) -> bool {
        self.cursor(room).is_some()
    }

    pub fn subscriptions(&self) -> usize {
        self.map.values().filter(|e| e.subscribed()).count()
    }

    /// Subscribes the socket to `room` with `cursor` (at least 0).
    pub fn subscribe(&mut self, room: RoomId, cursor: i64) {
        debug_assert!(cursor != Entry::UNSUBSCRIBED);
        match self.map.get_mut(&room) {
            Some(e) => e.cursor = cursor,
            None => {
                self.map.insert(
                    room,
                    Entry {
                        cursor,
                        rules: None,
                    },
                );
            }
        }
    }

    /// Unsubscribes the socket from `room`; false if it was not subscribed.
    pub fn unsubscribe(&mut self, room: &RoomId) -> bool {
        let Some(e) = self.map.get_mut(room).filter(|e| e.subscribed()) else {
            return false;
        };
        e.cursor = Entry::UNSUBSCRIBED;
        if e.rules.is_none() {
            self.map.remove(room);
        }
        true
    }

    /// Empties the map; returns the rooms the socket was subscribed to.
    pub fn take_subscribed(&mut self) -> Vec<RoomId> {
        let subscribed: Vec<RoomId> = self
            .map
            .entries
            .iter()
            .filter(|(_, e)| e.subscribed())
            .map(|(room, _)| *room)
            .collect();
        self.map = RoomMap::new();
        subscribed
    }

    pub fn rules(&self, room: &RoomId) -> Option<&SendRules> {
        self.map.get(room).and_then(|e| e.rules.as_ref())
    }

    pub fn rules_mut(&mut self, room: &RoomId) -> Option<&mut SendRules> {
        self.map.get_mut(room).and_then(|e| e.rules.as_mut())
    }

    pub fn set_rules(&mut self, room: RoomId, rules: SendRules) {
        match self.map.get_mut(&room) {
            Some(e) => e.rules = Some(rules),
            None => {
                self.map.insert(
                    room,
                    Entry {
                        cursor: Entry::UNSUBSCRIBED,
                        rules: Some(rules),
                    },
                );
            }
        }
    }

    /// Forgets the send rules of `room` (they are read again when next needed).
    pub fn forget_rules(&mut self, room: &RoomId) {
        let Some(e) = self.map.get_mut(room) else {
            return;
        };
        e.rules = None;
        if !e.subscribed() {
            self.map.remove(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_value_per_room_and_finds_each() {
        let rooms: Vec<RoomId> = (0..40).map(|_| RoomId::new()).collect();
        let mut map = RoomMap::new();
        for (i, room) in rooms.iter().enumerate() {
            assert_eq!(map.insert(*room, i), None);
        }
        assert_eq!(map.insert(rooms[7], 70), Some(7));
        assert_eq!(map.entries.len(), 40);
        for (i, room) in rooms.iter().enumerate() {
            let want = if i == 7 { 70 } else { i };
            assert_eq!(map.get(room), Some(&want));
        }
        *map.get_mut(&rooms[3]).unwrap() += 100;
        assert_eq!(map.get(&rooms[3]), Some(&103));
        assert_eq!(map.remove(&rooms[5]), Some(5));
        assert_eq!(map.remove(&rooms[5]), None);
        assert!(map.get(&rooms[5]).is_none());
        assert!(map.get(&rooms[6]).is_some());
        assert_eq!(map.get(&RoomId::new()), None);
        assert_eq!(map.entries.len(), 39);
    }

    fn rules(slow_mode_seconds: i64) -> SendRules {
        let room = crate::store::RoomGate {
            kind: crate::store::RoomKind::Public,
            archived: false,
            read_only: false,
            slow_mode_seconds,
            last_seq: 0,
            rev: 0,
        };
        let member = crate::store::MemberRecord {
            room_id: RoomId::new(),
            user_id: crate::ids::UserId::new(),
            role: crate::store::Role::Member,
            last_read_seq: 0,
            last_delivered_seq: 0,
            muted_until: None,
        };
        SendRules::of(&room, &member)
    }

    #[test]
    fn a_room_keeps_its_cursor_and_its_rules_apart() {
        let (a, b) = (RoomId::new(), RoomId::new());
        let mut rooms = Rooms::new();
        rooms.subscribe(a, 0);
        rooms.set_rules(a, rules(5));
        rooms.set_rules(b, rules(0));
        assert_eq!(rooms.cursor(&a), Some(0));
        assert!(
            !rooms.is_subscribed(&b),
            "rules alone are not a subscription"
        );
        assert_eq!(rooms.subscriptions(), 1);
        *rooms.cursor_mut(&a).unwrap() = 42;
        assert!(rooms.cursor_mut(&b).is_none());

        // Forgetting the rules keeps the subscription and its cursor, and the other way round.
        rooms.forget_rules(&a);
        assert_eq!(rooms.cursor(&a), Some(42));
        assert!(rooms.rules(&a).is_none());
        rooms.set_rules(a, rules(5));
        assert!(rooms.unsubscribe(&a));
        assert!(!rooms.unsubscribe(&a));
        assert!(rooms.rules(&a).is_some_and(|r| r.slow_mode().is_some()));
        assert_eq!(rooms.subscriptions(), 0);

        // An entry with neither is gone; subscribing again starts from the new cursor.
        rooms.forget_rules(&a);
        assert_eq!(rooms.map.entries.len(), 1);
        rooms.subscribe(a, 7);
        rooms.subscribe(b, 3);
        let mut left = rooms.take_subscribed();
        left.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(left, want);
        assert!(rooms.rules(&b).is_none());
        assert_eq!(rooms.map.entries.len(), 0);
    }
}
