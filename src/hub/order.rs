//! A room's delivery order on this pod, as plain data: which `seq` was delivered last, the
//! messages that arrived early, and whether a gap fill from the store is under way. No locks,
//! no I/O, no clock: the hub holds it under the room's lock, does the fan-out and the store
//! reads it asks for, and the rules are unit-tested here.
//!
//! The rule: messages go out in `seq` order with no gap and no duplicate. An early message
//! waits; a gap that does not fill by itself is read back from the store (the hub waits a
//! moment first); a message at or below the delivered `seq` is dropped.

use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Order<T> {
    /// Last seq delivered to local subscribers; `None` until the first subscriber has read
    /// the room's last seq from the store.
    delivered: Option<i64>,
    /// Early messages by seq.
    pending: BTreeMap<i64, T>,
    /// A gap fill is scheduled or running: no second one is asked for.
    filling: bool,
}

impl<T> Default for Order<T> {
    fn default() -> Self {
        Order {
            delivered: None,
            pending: BTreeMap::new(),
            filling: false,
        }
    }
}

impl<T> Order<T> {
    /// A subscriber joins; `last_seq` is the room's last committed seq, read after the bus
    /// joined the room. Returns the subscriber's cursor (events above it reach it through its
    /// queue) and whether a gap fill up to `last_seq` must be scheduled.
    pub fn join(&mut self, last_seq: i64, deliver: impl FnMut(i64, T)) -> (i64, bool) {
        match self.delivered {
            None => {
                self.delivered = Some(last_seq);
                self.flush(deliver);
                (self.delivered.unwrap_or(last_seq), false)
            }
            // Committed messages have not reached this pod yet: fetch them if they do not
            // arrive by themselves.
            Some(d) if d < last_seq && !self.filling => {
                self.filling = true;
                (d, true)
            }
            Some(d) => (d, false),
        }
    }

    /// A committed message: delivered now if it continues the sequence (with any early ones
    /// it unblocks), kept if early, dropped if already delivered. Returns the seq up to which
    /// a gap fill must be scheduled, if one is needed now.
    pub fn offer(&mut self, seq: i64, item: T, deliver: impl FnMut(i64, T)) -> Option<i64> {
        let Some(delivered) = self.delivered else {
            self.pending.insert(seq, item);
            return None;
        };
        if seq <= delivered {
            return None; // a duplicate, or a message already filled from the store
        }
        self.pending.insert(seq, item);
        self.flush(deliver);
        if self.pending.is_empty() || self.filling {
            return None;
        }
        self.filling = true;
        self.pending.keys().next_back().copied()
    }

    /// Delivers every pending message that continues the sequence; drops stale ones.
    fn flush(&mut self, mut deliver: impl FnMut(i64, T)) {
        let Some(mut delivered) = self.delivered else {
            return;
        };
        while let Some(entry) = self.pending.first_entry() {
            let seq = *entry.key();
            if seq <= delivered {
                entry.remove();
            } else if seq == delivered + 1 {
                deliver(seq, entry.remove());
                delivered = seq;
            } else {
                break;
            }
        }
        self.delivered = Some(delivered);
    }

    /// During a gap fill up to `upto`: the seq after which messages must be read from the
    /// store, or `None` when nothing is missing any more.
    pub fn missing_after(&self, upto: i64) -> Option<i64> {
        self.delivered.filter(|d| *d < upto)
    }

    /// A gap fill ended. Returns the seq up to which the next one must be scheduled, when
    /// early messages still wait behind a gap.
    pub fn fill_ended(&mut self) -> Option<i64> {
        let last = self.pending.keys().next_back().copied();
        self.filling = last.is_some();
        last
    }

    /// The last seq delivered here, if any.
    pub fn delivered(&self) -> Option<i64> {
        self.delivered
    }

    /// The delivered seq, for the periodic comparison with the store; `None` while a fill is
    /// under way or before the first subscriber.
    pub fn resync_point(&self) -> Option<i64> {
        self.delivered.filter(|_| !self.filling)
    }

    /// The store says the room's last seq is `last_seq`: true (and a fill is then under way)
    /// when this pod is behind and must fill the gap.
    pub fn behind(&mut self, last_seq: i64) -> bool {
        let behind = self.delivered.is_some_and(|d| d < last_seq) && !self.filling;
        if behind {
            self.filling = true;
        }
        behind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers `seqs` in that order; returns what was delivered and the fills asked for.
    fn run(order: &mut Order<i64>, seqs: &[i64]) -> (Vec<i64>, Vec<i64>) {
        let mut out = Vec::new();
        let mut fills = Vec::new();
        for &seq in seqs {
            if let Some(upto) = order.offer(seq, seq, |s, item| {
                assert_eq!(s, item);
                out.push(s);
            }) {
                fills.push(upto);
            }
        }
        (out, fills)
    }

    fn joined_at(last_seq: i64) -> Order<i64> {
        let mut order = Order::default();
        assert_eq!(
            order.join(last_seq, |_, _| panic!("nothing pending")),
            (last_seq, false)
        );
        order
    }

    #[test]
    fn messages_in_order_go_out_at_once() {
        let mut order = joined_at(0);
        assert_eq!(run(&mut order, &[1, 2, 3]), (vec![1, 2, 3], vec![]));
    }

    #[test]
    fn an_early_message_waits_for_the_ones_before_it() {
        let mut order = joined_at(0);
        let (out, fills) = run(&mut order, &[2, 3]);
        assert_eq!(out, Vec::<i64>::new());
        assert_eq!(
            fills,
            vec![2],
            "one fill is asked for, up to the first early message"
        );
        let (out, fills) = run(&mut order, &[1]);
        assert_eq!((out, fills), (vec![1, 2, 3], vec![]));
        assert_eq!(order.missing_after(3), None);
        assert_eq!(order.fill_ended(), None, "nothing waits: no further fill");
        assert_eq!(order.resync_point(), Some(3));
    }

    #[test]
    fn duplicates_and_stale_messages_are_dropped() {
        let mut order = joined_at(5);
        assert_eq!(run(&mut order, &[3, 5, 6, 6, 4, 7]), (vec![6, 7], vec![]));
    }

    #[test]
    fn a_gap_is_filled_from_the_store_and_refilled_while_messages_wait() {
        let mut order = joined_at(0);
        let (_, fills) = run(&mut order, &[4, 5]);
        assert_eq!(fills, vec![4]);
        // While filling, later early messages ask for no second fill.
        assert_eq!(run(&mut order, &[7]).1, Vec::<i64>::new());
        assert_eq!(order.missing_after(4), Some(0));
        // The store returns 1..=3: delivered, and 4 and 5 with them.
        let (out, _) = run(&mut order, &[1, 2, 3]);
        assert_eq!(out, vec![1, 2, 3, 4, 5]);
        assert_eq!(order.missing_after(4), None);
        // 7 still waits behind 6: the next fill goes up to it.
        assert_eq!(order.fill_ended(), Some(7));
        assert_eq!(order.resync_point(), None, "filling");
        assert_eq!(run(&mut order, &[6]).0, vec![6, 7]);
        assert_eq!(order.fill_ended(), None);
    }

    #[test]
    fn messages_before_the_first_subscriber_wait_for_its_cursor() {
        let mut order = Order::default();
        assert_eq!(run(&mut order, &[3, 4]), (vec![], vec![]));
        assert_eq!(order.resync_point(), None);
        let mut out = Vec::new();
        // The store said 3 was the last: 3 is history, 4 goes out live.
        assert_eq!(order.join(3, |s, _| out.push(s)), (4, false));
        assert_eq!(out, vec![4]);
    }

    #[test]
    fn a_pod_behind_the_store_fills_once() {
        let mut order = joined_at(2);
        // A new subscriber read a later last seq than was delivered here.
        assert_eq!(order.join(5, |_, _| {}), (2, true));
        assert_eq!(
            order.join(6, |_, _| {}),
            (2, false),
            "a fill is already under way"
        );
        assert!(!order.behind(9));
        assert_eq!(order.fill_ended(), None);
        assert!(order.behind(9));
        assert!(!order.behind(9));
        assert_eq!(order.missing_after(9), Some(2));
    }
}
