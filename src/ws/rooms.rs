//! [`RoomMap`]: what a connection keeps per room, in a vector sorted by room.

use crate::ids::RoomId;

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

    pub fn contains_key(&self, room: &RoomId) -> bool {
        self.find(room).is_ok()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
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

    /// Empties the map; returns its rooms.
    pub fn take_rooms(&mut self) -> Vec<RoomId> {
        std::mem::take(&mut self.entries)
            .into_iter()
            .map(|(room, _)| room)
            .collect()
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
        assert_eq!(map.len(), 40);
        for (i, room) in rooms.iter().enumerate() {
            let want = if i == 7 { 70 } else { i };
            assert_eq!(map.get(room), Some(&want));
        }
        *map.get_mut(&rooms[3]).unwrap() += 100;
        assert_eq!(map.get(&rooms[3]), Some(&103));
        assert_eq!(map.remove(&rooms[5]), Some(5));
        assert_eq!(map.remove(&rooms[5]), None);
        assert!(!map.contains_key(&rooms[5]));
        assert!(map.contains_key(&rooms[6]));
        assert_eq!(map.get(&RoomId::new()), None);
        let mut left = map.take_rooms();
        assert_eq!(map.len(), 0);
        left.sort();
        let mut want: Vec<RoomId> = rooms.iter().copied().filter(|r| *r != rooms[5]).collect();
        want.sort();
        assert_eq!(left, want);
    }
}
