//! A hashed timing wheel for lease expiries and waiter deadlines, intrusive:
//! every timer is a node of one slab with a free list, and each slot of the
//! wheel is a linked list of nodes threaded through that slab (a `u32` head
//! and tail per slot), so a timer costs one 24-byte node and no allocation of
//! its own.
//!
//! Inserting a timer is O(1); advancing the clock visits each elapsed slot
//! once and each timer once per revolution, so the cost per timer does not
//! grow with the number of timers. A timer names a key by its handle in the
//! table's key store and says what to check there; the table checks each
//! fired timer against the live state (lazy deletion), so a stale timer is
//! harmless, and decides whether the node is freed or put back in the wheel.

use crate::Time;

/// Width of one slot.
const SLOT_NANOS: u64 = 1_000_000; // 1 ms
/// Number of slots (a power of two): one revolution is about 4.2 s.
const SLOTS: usize = 4096;
/// The null link.
pub(crate) const NIL: u32 = u32::MAX;
/// Above this many nodes, an emptied slab gives its memory back.
const KEEP_NODES: usize = 1024;

/// What a timer refers to; checked against live state when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// The lease of the key may have expired.
    Lease,
    /// The waiter with this id may have reached its deadline.
    Waiter(u64),
}

impl TimerKind {
    /// Packs the kind into one word: tag bit 0 clear for a lease, set for a
    /// waiter with the id in the upper 63 bits.
    fn pack(self) -> u64 {
        match self {
            TimerKind::Lease => 0,
            TimerKind::Waiter(id) => (id << 1) | 1,
        }
    }

    fn unpack(word: u64) -> TimerKind {
        if word & 1 == 0 {
            TimerKind::Lease
        } else {
            TimerKind::Waiter(word >> 1)
        }
    }
}

/// One timer: when it is due, the key handle it concerns, what to check,
/// and the next node of its slot's list (or of the free list).
#[derive(Debug, Clone, Copy)]
struct Node {
    at: u64,
    kind: u64,
    key: u32,
    next: u32,
}

/// The wheel itself.
#[derive(Debug)]
pub(crate) struct Wheel {
    nodes: Vec<Node>,
    /// Head of the free list of `nodes`.
    free: u32,
    /// Nodes allocated (in the wheel, or fired and not yet freed or put back).
    used: usize,
    heads: Box<[u32]>,
    tails: Box<[u32]>,
    /// Absolute index of the first slot not yet fully processed.
    cursor: u64,
    /// Nodes linked into slots.
    len: usize,
    /// The earliest wake hint (nanos) of any linked node, `u64::MAX` when
    /// none: kept by every insert in O(1), recomputed once per advance.
    wake: u64,
}

impl Wheel {
    pub(crate) fn new(now: Time) -> Self {
        Wheel {
            nodes: Vec::new(),
            free: NIL,
            used: 0,
            heads: vec![NIL; SLOTS].into_boxed_slice(),
            tails: vec![NIL; SLOTS].into_boxed_slice(),
            cursor: now.as_nanos() / SLOT_NANOS,
            len: 0,
            wake: u64::MAX,
        }
    }

    /// Timers scheduled and not yet fired (including lazily cancelled ones).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Schedules a check of `kind` on key handle `key` at `at`; returns the node.
    pub(crate) fn insert(&mut self, at: Time, key: u32, kind: TimerKind) -> u32 {
        let node = Node { at: at.as_nanos(), kind: kind.pack(), key, next: NIL };
        let id = if self.free != NIL {
            let id = self.free;
            self.free = self.nodes[id as usize].next;
            self.nodes[id as usize] = node;
            id
        } else {
            // Handles are u32 and NIL is reserved; a table never holds 2^32 timers.
            let id = u32::try_from(self.nodes.len()).unwrap_or(NIL - 1);
            self.nodes.push(node);
            id
        };
        self.used += 1;
        self.link(id);
        id
    }

    /// When node `id` is (or was, if fired) due; `None` for [`NIL`].
    pub(crate) fn at(&self, id: u32) -> Option<Time> {
        self.nodes.get(id as usize).map(|n| Time::from_nanos(n.at))
    }

    /// The key handle and the check of node `id`.
    pub(crate) fn target(&self, id: u32) -> (u32, TimerKind) {
        let n = &self.nodes[id as usize];
        (n.key, TimerKind::unpack(n.kind))
    }

    /// Puts a fired node back in the wheel, due at `at`.
    pub(crate) fn reinsert(&mut self, id: u32, at: Time) {
        self.nodes[id as usize].at = at.as_nanos();
        self.link(id);
    }

    /// Returns a fired node to the free list.
    pub(crate) fn free(&mut self, id: u32) {
        self.nodes[id as usize].next = self.free;
        self.free = id;
        self.used -= 1;
        if self.used == 0 {
            // Nothing refers to any node: start over, so new nodes are laid out
            // in order again, and give back the memory of a burst.
            self.free = NIL;
            if self.nodes.capacity() > KEEP_NODES {
                self.nodes = Vec::new();
            } else {
                self.nodes.clear();
            }
        }
    }

    fn link(&mut self, id: u32) {
        let abs = (self.nodes[id as usize].at / SLOT_NANOS).max(self.cursor);
        let slot = slot_index(abs);
        self.nodes[id as usize].next = NIL;
        match self.tails[slot] {
            NIL => self.heads[slot] = id,
            tail => self.nodes[tail as usize].next = id,
        }
        self.tails[slot] = id;
        self.len += 1;
        self.wake = self.wake.min(self.hint(self.nodes[id as usize].at));
    }

    /// The earliest instant at which [`Wheel::advance_slot`] may fire a timer
    /// due at `at`, given the cursor: `at` itself if it falls within the
    /// revolution ahead, else the start of its slot's next visit (the timer
    /// is then met early, once per revolution, and left in place). The cursor's
    /// own slot has started already, so a later revolution of it is met one
    /// revolution on. Depends only on `at` and the cursor, which moves only in
    /// an advance: between advances, the minimum over timers is kept exactly
    /// by taking the minimum at each insert.
    fn hint(&self, at: u64) -> u64 {
        let rel = (at / SLOT_NANOS).max(self.cursor) - self.cursor;
        if rel < SLOTS as u64 {
            return at;
        }
        let first = match rel % SLOTS as u64 {
            0 => SLOTS as u64,
            i => i,
        };
        (self.cursor + first).saturating_mul(SLOT_NANOS)
    }

    /// Visits the next slot that elapsed by `now`: unlinks its timers due at
    /// or before `now` and appends their nodes to `fired`. Returns false once
    /// the slot of `now` itself was visited, which is last: call until then.
    /// Each fired node must be [`Wheel::reinsert`]ed or [`Wheel::free`]d.
    ///
    /// One slot at a time, so the host handles each fired node while it is
    /// still in cache.
    pub(crate) fn advance_slot(&mut self, now: Time, fired: &mut Vec<u32>) -> bool {
        let target = now.as_nanos() / SLOT_NANOS;
        if target > self.cursor {
            // Slots strictly before `target` are wholly in the past; however
            // far we jump, one revolution of them holds every timer.
            self.cursor = self.cursor.max(target.saturating_sub(SLOTS as u64));
            self.drain_due(slot_index(self.cursor), now.as_nanos(), fired);
            self.cursor += 1;
            true
        } else {
            // The current slot may hold timers due later within it.
            self.drain_due(slot_index(self.cursor), now.as_nanos(), fired);
            // The cursor stays here until the next advance: hints are final.
            self.refresh_deadline();
            false
        }
    }

    /// Every slot up to `now` at once (tests).
    #[cfg(test)]
    fn advance(&mut self, now: Time, fired: &mut Vec<u32>) {
        while self.advance_slot(now, fired) {}
    }

    /// Unlinks the nodes of `slot` due at or before `now` into `fired`.
    fn drain_due(&mut self, slot: usize, now: u64, fired: &mut Vec<u32>) {
        let mut kept = NIL;
        let mut cur = self.heads[slot];
        while cur != NIL {
            let Node { at, next, .. } = self.nodes[cur as usize];
            if at <= now {
                match kept {
                    NIL => self.heads[slot] = next,
                    k => self.nodes[k as usize].next = next,
                }
                fired.push(cur);
                self.len -= 1;
            } else {
                kept = cur;
            }
            cur = next;
        }
        self.tails[slot] = kept;
    }

    /// The earliest instant at which [`Wheel::advance_slot`] may fire a
    /// timer, in O(1): the least [`Wheel::hint`] of any timer (`None` when
    /// none is scheduled). A host that wakes at it and advances either fires
    /// a timer or moves the cursor past a slot that held only later
    /// revolutions, so it always makes progress and is never late.
    pub(crate) fn next_deadline(&self) -> Option<Time> {
        (self.wake != u64::MAX).then(|| Time::from_nanos(self.wake))
    }

    /// Recomputes [`Wheel::next_deadline`] after an advance moved the cursor.
    /// Hints of a slot's timers lie within that slot's visit (or, for a later
    /// revolution of the cursor's own slot, one revolution on), so the first
    /// slot holding a timer of this revolution has the least: the scan stops
    /// there, at a cost of one look per empty slot, as any advance pays.
    fn refresh_deadline(&mut self) {
        self.wake = u64::MAX;
        if self.len == 0 {
            return;
        }
        for i in 0..SLOTS as u64 {
            let mut cur = self.heads[slot_index(self.cursor + i)];
            let found = cur != NIL;
            while cur != NIL {
                let n = self.nodes[cur as usize];
                self.wake = self.wake.min(self.hint(n.at));
                cur = n.next;
            }
            // Slot 0's later revolutions hint one revolution on: look further.
            if found && (i > 0 || self.wake < (self.cursor + 1).saturating_mul(SLOT_NANOS)) {
                return;
            }
        }
    }

    /// The least hint over every linked timer, by a full scan (tests).
    #[cfg(test)]
    pub(crate) fn scan_deadline(&self) -> Option<Time> {
        let mut least = None::<u64>;
        for &head in self.heads.iter() {
            let mut cur = head;
            while cur != NIL {
                let n = self.nodes[cur as usize];
                least = Some(least.map_or(self.hint(n.at), |l| l.min(self.hint(n.at))));
                cur = n.next;
            }
        }
        least.map(Time::from_nanos)
    }
}

fn slot_index(abs: u64) -> usize {
    (abs % SLOTS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wheel whose timers are all waiter timers named by `id`.
    fn insert(w: &mut Wheel, at: Time, id: u64) -> u32 {
        w.insert(at, 0, TimerKind::Waiter(id))
    }

    /// Advances to `ms` and frees what fired; returns the ids, sorted.
    fn fire(w: &mut Wheel, ms: u64) -> Vec<u64> {
        fire_at(w, Time::from_millis(ms))
    }

    fn fire_at(w: &mut Wheel, now: Time) -> Vec<u64> {
        let mut out = Vec::new();
        w.advance(now, &mut out);
        let mut ids: Vec<u64> = out
            .iter()
            .map(|&n| {
                let id = match w.target(n).1 {
                    TimerKind::Waiter(x) => x,
                    TimerKind::Lease => u64::MAX,
                };
                w.free(n);
                id
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn fires_exactly_at_due_time_not_before() {
        let mut w = Wheel::new(Time::ZERO);
        insert(&mut w, Time::from_nanos(5_500_000), 1);
        assert!(fire(&mut w, 5).is_empty());
        assert!(fire(&mut w, 5).is_empty());
        assert!(fire_at(&mut w, Time::from_nanos(5_499_999)).is_empty());
        assert_eq!(fire_at(&mut w, Time::from_nanos(5_500_000)), vec![1]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn timers_beyond_one_revolution_wait_for_their_round() {
        let mut w = Wheel::new(Time::ZERO);
        insert(&mut w, Time::from_millis(10), 1);
        insert(&mut w, Time::from_millis(10 + SLOTS as u64), 2); // same slot, next revolution
        assert_eq!(fire(&mut w, 11), vec![1]);
        assert_eq!(w.next_deadline(), Some(Time::from_millis(10 + SLOTS as u64)));
        assert!(fire(&mut w, 9 + SLOTS as u64).is_empty());
        assert_eq!(fire(&mut w, 10 + SLOTS as u64), vec![2]);
    }

    #[test]
    fn a_long_jump_fires_everything_due_in_one_pass() {
        let mut w = Wheel::new(Time::ZERO);
        for i in 0..100 {
            insert(&mut w, Time::from_millis(i * 997), i);
        }
        assert_eq!(fire(&mut w, 1_000_000).len(), 100);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn past_timers_fire_on_the_next_advance() {
        let mut w = Wheel::new(Time::from_millis(100));
        insert(&mut w, Time::from_millis(50), 7);
        assert_eq!(w.next_deadline(), Some(Time::from_millis(50)));
        assert_eq!(fire(&mut w, 100), vec![7]);
    }

    #[test]
    fn next_deadline_moves_past_the_current_slot_when_it_only_holds_later_rounds() {
        let mut w = Wheel::new(Time::ZERO);
        insert(&mut w, Time::from_millis(10 + 2 * SLOTS as u64), 1); // slot 10, two revolutions on
        let mut wakes = Vec::new();
        while let Some(d) = w.next_deadline() {
            assert!(wakes.last().is_none_or(|last| d > *last), "no progress at {d:?}");
            wakes.push(d);
            if !fire_at(&mut w, d).is_empty() {
                break;
            }
        }
        let ms: Vec<u64> = wakes.iter().map(|t| t.as_nanos() / SLOT_NANOS).collect();
        assert_eq!(ms, vec![10, 10 + SLOTS as u64, 10 + 2 * SLOTS as u64]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn next_deadline_is_the_earliest_timer_of_the_first_slot() {
        let mut w = Wheel::new(Time::ZERO);
        insert(&mut w, Time::from_millis(30), 1);
        insert(&mut w, Time::from_nanos(20_700_000), 2);
        insert(&mut w, Time::from_nanos(20_200_000), 3);
        assert_eq!(w.next_deadline(), Some(Time::from_nanos(20_200_000)));
    }

    #[test]
    fn freed_nodes_are_reused_before_the_slab_grows() {
        let mut w = Wheel::new(Time::ZERO);
        let keep = insert(&mut w, Time::from_millis(100), 1);
        let a = insert(&mut w, Time::from_millis(5), 2);
        let b = insert(&mut w, Time::from_millis(6), 3);
        assert_eq!(fire(&mut w, 10), vec![2, 3]);
        let c = insert(&mut w, Time::from_millis(20), 4);
        let d = insert(&mut w, Time::from_millis(20), 5);
        assert_eq!([c, d].iter().copied().collect::<std::collections::BTreeSet<_>>(), [a, b].into());
        assert_eq!(w.nodes.len(), 3, "no new node while freed ones remain");
        let e = insert(&mut w, Time::from_millis(20), 6);
        assert_eq!((e, w.nodes.len()), (3, 4));
        assert_ne!(keep, e);
        assert_eq!(fire(&mut w, 20), vec![4, 5, 6]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn a_fired_node_can_be_put_back_and_keeps_its_target() {
        let mut w = Wheel::new(Time::ZERO);
        let n = w.insert(Time::from_millis(5), 42, TimerKind::Lease);
        let mut out = Vec::new();
        w.advance(Time::from_millis(5), &mut out);
        assert_eq!(out, vec![n]);
        assert_eq!((w.len(), w.at(n)), (0, Some(Time::from_millis(5))));
        w.reinsert(n, Time::from_millis(3_000));
        assert_eq!(w.next_deadline(), Some(Time::from_millis(3_000)));
        out.clear();
        w.advance(Time::from_millis(2_999), &mut out);
        assert!(out.is_empty());
        w.advance(Time::from_millis(3_000), &mut out);
        assert_eq!(out, vec![n]);
        assert_eq!(w.target(n), (42, TimerKind::Lease));
        w.free(n);
        assert_eq!((w.used, w.nodes.len(), w.free), (0, 0, NIL), "an emptied slab starts over");
    }

    #[test]
    fn unlinking_from_the_middle_and_end_of_a_slot_keeps_the_list_whole() {
        let mut w = Wheel::new(Time::ZERO);
        // All in slot 7: due now, later round, due now, later round, due now.
        let round = SLOTS as u64;
        for (i, ms) in [7, 7 + round, 7, 7 + 2 * round, 7].into_iter().enumerate() {
            insert(&mut w, Time::from_millis(ms), i as u64);
        }
        assert_eq!(fire(&mut w, 7), vec![0, 2, 4]);
        insert(&mut w, Time::from_millis(7 + round), 5); // appended after the kept tail
        assert_eq!(fire(&mut w, 7 + round), vec![1, 5]);
        assert_eq!(fire(&mut w, 7 + 2 * round), vec![3]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn kinds_round_trip_through_the_packed_word() {
        for kind in [TimerKind::Lease, TimerKind::Waiter(1), TimerKind::Waiter(u64::MAX >> 1)] {
            assert_eq!(TimerKind::unpack(kind.pack()), kind);
        }
    }
}
