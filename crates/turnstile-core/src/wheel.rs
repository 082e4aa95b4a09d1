//! A hashed timing wheel for lease expiries and waiter deadlines.
//!
//! Inserting a timer is O(1); advancing the clock visits each elapsed slot
//! once and each timer once per revolution, so the cost per timer does not
//! grow with the number of timers. Cancelled timers are not removed: the
//! table checks each fired timer against the live state (lazy deletion), which
//! keeps renew at one push.

use std::sync::Arc;

use crate::Time;

/// Width of one slot.
const SLOT_NANOS: u64 = 1_000_000; // 1 ms
/// Number of slots (a power of two): one revolution is about 4.2 s.
const SLOTS: usize = 4096;

/// What a timer refers to; checked against live state when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// The lease with this fencing token may have expired.
    Lease(u64),
    /// The waiter with this id may have reached its deadline.
    Waiter(u64),
}

/// A scheduled check of one key.
#[derive(Debug, Clone)]
pub(crate) struct Timer {
    pub(crate) at: Time,
    pub(crate) key: Arc<str>,
    pub(crate) kind: TimerKind,
}

/// The wheel itself.
#[derive(Debug)]
pub(crate) struct Wheel {
    slots: Vec<Vec<Timer>>,
    /// Absolute index of the first slot not yet fully processed.
    cursor: u64,
    len: usize,
}

impl Wheel {
    pub(crate) fn new(now: Time) -> Self {
        Wheel { slots: (0..SLOTS).map(|_| Vec::new()).collect(), cursor: now.as_nanos() / SLOT_NANOS, len: 0 }
    }

    /// Timers scheduled and not yet fired (including lazily cancelled ones).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, timer: Timer) {
        let abs = (timer.at.as_nanos() / SLOT_NANOS).max(self.cursor);
        self.slots[slot_index(abs)].push(timer);
        self.len += 1;
    }

    /// Moves every timer due at or before `now` into `fired`.
    pub(crate) fn advance(&mut self, now: Time, fired: &mut Vec<Timer>) {
        let target = now.as_nanos() / SLOT_NANOS;
        if target > self.cursor {
            // Slots strictly before `target` are wholly in the past for this
            // revolution; one pass over the wheel suffices however far we jump.
            let steps = (target - self.cursor).min(SLOTS as u64);
            for i in 0..steps {
                let slot = &mut self.slots[slot_index(self.cursor + i)];
                self.len -= drain_due(slot, now, fired);
            }
            self.cursor = target;
        }
        // The current slot may hold timers due later within it.
        let slot = &mut self.slots[slot_index(self.cursor)];
        self.len -= drain_due(slot, now, fired);
    }

    /// The earliest instant at which [`Wheel::advance`] may fire a timer: the
    /// earliest due time in the first non-empty slot, or that slot's start if
    /// it only holds timers of a later revolution (an early wake-up that
    /// fires nothing, at most once per slot and revolution). The cursor's own
    /// slot has started already, so its later-revolution timers are looked
    /// for one revolution on (`i == SLOTS`): the answer is always after the
    /// last advance, and a host ticking at it makes progress.
    pub(crate) fn next_deadline(&self) -> Option<Time> {
        if self.len == 0 {
            return None;
        }
        for i in 0..=SLOTS as u64 {
            let abs = self.cursor + i;
            let slot = &self.slots[slot_index(abs)];
            if let Some(earliest) = slot.iter().map(|t| t.at).min() {
                let slot_end = Time::from_nanos((abs + 1).saturating_mul(SLOT_NANOS));
                if earliest < slot_end {
                    return Some(earliest);
                }
                if i > 0 {
                    return Some(Time::from_nanos(abs.saturating_mul(SLOT_NANOS)));
                }
            }
        }
        None
    }
}

fn slot_index(abs: u64) -> usize {
    (abs % SLOTS as u64) as usize
}

/// Moves the timers of `slot` due at or before `now` into `fired`; returns how many.
fn drain_due(slot: &mut Vec<Timer>, now: Time, fired: &mut Vec<Timer>) -> usize {
    let before = fired.len();
    let mut i = 0;
    while i < slot.len() {
        if slot[i].at <= now {
            fired.push(slot.swap_remove(i));
        } else {
            i += 1;
        }
    }
    if slot.is_empty() && slot.capacity() > 64 {
        // Give back memory after a burst.
        slot.shrink_to(8);
    }
    fired.len() - before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(ms: u64, token: u64) -> Timer {
        Timer { at: Time::from_millis(ms), key: Arc::from("k"), kind: TimerKind::Lease(token) }
    }

    fn fire(w: &mut Wheel, ms: u64) -> Vec<u64> {
        let mut out = Vec::new();
        w.advance(Time::from_millis(ms), &mut out);
        let mut tokens: Vec<u64> = out
            .iter()
            .map(|t| match t.kind {
                TimerKind::Lease(x) | TimerKind::Waiter(x) => x,
            })
            .collect();
        tokens.sort_unstable();
        tokens
    }

    #[test]
    fn fires_exactly_at_due_time_not_before() {
        let mut w = Wheel::new(Time::ZERO);
        w.insert(Timer { at: Time::from_nanos(5_500_000), ..timer(0, 1) });
        assert!(fire(&mut w, 5).is_empty());
        assert!(fire(&mut w, 5).is_empty());
        let mut out = Vec::new();
        w.advance(Time::from_nanos(5_499_999), &mut out);
        assert!(out.is_empty());
        w.advance(Time::from_nanos(5_500_000), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn timers_beyond_one_revolution_wait_for_their_round() {
        let mut w = Wheel::new(Time::ZERO);
        w.insert(timer(10, 1));
        w.insert(timer(10 + SLOTS as u64, 2)); // same slot, next revolution
        assert_eq!(fire(&mut w, 11), vec![1]);
        assert_eq!(w.next_deadline(), Some(Time::from_millis(10 + SLOTS as u64)));
        assert!(fire(&mut w, 9 + SLOTS as u64).is_empty());
        assert_eq!(fire(&mut w, 10 + SLOTS as u64), vec![2]);
    }

    #[test]
    fn a_long_jump_fires_everything_due_in_one_pass() {
        let mut w = Wheel::new(Time::ZERO);
        for i in 0..100 {
            w.insert(timer(i * 997, i));
        }
        assert_eq!(fire(&mut w, 1_000_000).len(), 100);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn past_timers_fire_on_the_next_advance() {
        let mut w = Wheel::new(Time::from_millis(100));
        w.insert(timer(50, 7));
        assert_eq!(w.next_deadline(), Some(Time::from_millis(50)));
        assert_eq!(fire(&mut w, 100), vec![7]);
    }

    #[test]
    fn next_deadline_moves_past_the_current_slot_when_it_only_holds_later_rounds() {
        let mut w = Wheel::new(Time::ZERO);
        w.insert(timer(10 + 2 * SLOTS as u64, 1)); // slot 10, two revolutions on
        let mut wakes = Vec::new();
        while let Some(d) = w.next_deadline() {
            assert!(wakes.last().is_none_or(|last| d > *last), "no progress at {d:?}");
            wakes.push(d);
            let mut out = Vec::new();
            w.advance(d, &mut out);
            if !out.is_empty() {
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
        w.insert(timer(30, 1));
        w.insert(Timer { at: Time::from_nanos(20_700_000), ..timer(0, 2) });
        w.insert(Timer { at: Time::from_nanos(20_200_000), ..timer(0, 3) });
        assert_eq!(w.next_deadline(), Some(Time::from_nanos(20_200_000)));
    }
}
