//! [`KeyStore`]: the state of every key in one slab, reached by a `u32`
//! handle, plus the ordered index from key to handle that lookups by name
//! and listing by prefix use.
//!
//! Timers carry handles, so expiring a lease needs no lookup by name. A key
//! that empties (no holder, no waiters) stays in the slab and in the index
//! as a *tombstone*: lookups find it and reuse it when the key comes back,
//! and every reader treats it as absent. Tombstones are swept out of the
//! index in one sequential pass once there are [`SWEEP_MIN`] of them and
//! they outnumber half the live keys, so removal costs O(1) amortized, the
//! index stays within 1.5 times the live keys (plus [`SWEEP_MIN`]), and a
//! key taken and released again and again rarely touches the index.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use crate::key::Key;
use crate::wheel::NIL;
use crate::{HolderInfo, Lease, LockInfo, Time};

/// Sweep no fewer tombstones than this at once.
const SWEEP_MIN: usize = 64;
/// Above this many slots, an emptied slab gives its memory back.
const KEEP_SLOTS: usize = 1024;

/// A live lease.
#[derive(Debug)]
pub(crate) struct Holder {
    pub(crate) owner: Arc<str>,
    pub(crate) token: u64,
    /// The time to live granted or last renewed with, in nanoseconds.
    pub(crate) ttl: u64,
    pub(crate) expires_at: Time,
    pub(crate) granted_at: Time,
}

/// A queued acquire.
#[derive(Debug)]
pub(crate) struct Waiter<W> {
    pub(crate) id: u64,
    pub(crate) owner: Arc<str>,
    /// In nanoseconds.
    pub(crate) ttl: u64,
    pub(crate) until: Time,
    pub(crate) share_result: bool,
    pub(crate) payload: W,
}

/// The state of one key.
#[derive(Debug)]
pub(crate) struct Entry<W> {
    pub(crate) key: Key,
    pub(crate) holder: Option<Holder>,
    /// Boxed so that a key without waiters (the common case) costs one word.
    #[allow(clippy::box_collection, reason = "one word instead of four for every key without waiters")]
    pub(crate) waiters: Option<Box<VecDeque<Waiter<W>>>>,
    /// The wheel node that checks this key's lease ([`NIL`]: none). While
    /// the key is held, it is due no later than the holder's expiry.
    pub(crate) timer: u32,
    /// Counted as a tombstone.
    tomb: bool,
}

impl<W> Entry<W> {
    pub(crate) fn waiter_count(&self) -> usize {
        self.waiters.as_ref().map_or(0, |w| w.len())
    }

    fn is_empty(&self) -> bool {
        self.holder.is_none() && self.waiter_count() == 0
    }

    /// The key's state at `now`; an expired holder is reported as not held.
    pub(crate) fn info(&self, now: Time) -> LockInfo {
        LockInfo {
            key: self.key.to_arc(),
            holder: self.holder.as_ref().filter(|h| h.expires_at > now).map(|h| HolderInfo {
                owner: h.owner.clone(),
                token: h.token,
                expires_in: h.expires_at.saturating_since(now),
            }),
            waiters: u32::try_from(self.waiter_count()).unwrap_or(u32::MAX),
        }
    }

    /// The holder's lease, if any.
    pub(crate) fn lease(&self) -> Option<Lease> {
        self.holder.as_ref().map(|h| lease_of(&self.key, h))
    }
}

/// The lease `h` holds on `key`.
pub(crate) fn lease_of(key: &Key, h: &Holder) -> Lease {
    Lease {
        key: key.to_arc(),
        owner: h.owner.clone(),
        token: h.token,
        ttl: Duration::from_nanos(h.ttl),
        expires_at: h.expires_at,
        granted_at: h.granted_at,
    }
}

/// A duration in nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
enum Slot<W> {
    Live(Entry<W>),
    Free { next: u32 },
}

/// Every key of one table.
#[derive(Debug)]
pub(crate) struct KeyStore<W> {
    slots: Vec<Slot<W>>,
    /// Head of the free list of `slots`.
    free: u32,
    index: BTreeMap<Key, u32>,
    tombs: usize,
}

impl<W> KeyStore<W> {
    pub(crate) fn new() -> Self {
        KeyStore { slots: Vec::new(), free: NIL, index: BTreeMap::new(), tombs: 0 }
    }

    /// Keys held or with waiters (tombstones not counted).
    pub(crate) fn live(&self) -> usize {
        self.index.len() - self.tombs
    }

    /// The handle of `key`, if it is in the index (maybe as a tombstone).
    pub(crate) fn find(&self, key: &str) -> Option<u32> {
        self.index.get(key.as_bytes()).copied()
    }

    /// Adds `key`, not in the index yet, as an empty entry (a tombstone
    /// until filled: call [`KeyStore::reconcile`] then); returns its handle.
    pub(crate) fn insert(&mut self, key: &str) -> u32 {
        let key = Key::new(key);
        let (slots, free) = (&mut self.slots, &mut self.free);
        let h = *self.index.entry(key).or_insert_with_key(|key| {
            let entry = Entry { key: key.clone(), holder: None, waiters: None, timer: NIL, tomb: true };
            self.tombs += 1;
            match *free {
                NIL => {
                    // Handles are u32 and NIL is reserved; the lease limit keeps
                    // a table far below 2^32 keys.
                    let h = u32::try_from(slots.len()).unwrap_or(NIL - 1);
                    slots.push(Slot::Live(entry));
                    h
                }
                h => {
                    if let Some(Slot::Free { next }) = slots.get(h as usize) {
                        *free = *next;
                    }
                    slots[h as usize] = Slot::Live(entry);
                    h
                }
            }
        });
        h
    }

    /// The entry of handle `h`; `None` for a handle swept away meanwhile.
    pub(crate) fn get(&self, h: u32) -> Option<&Entry<W>> {
        match self.slots.get(h as usize) {
            Some(Slot::Live(e)) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, h: u32) -> Option<&mut Entry<W>> {
        match self.slots.get_mut(h as usize) {
            Some(Slot::Live(e)) => Some(e),
            _ => None,
        }
    }

    /// Counts `h` as a tombstone or a live key, whichever it now is. Call
    /// after every change that may fill or empty an entry.
    pub(crate) fn reconcile(&mut self, h: u32) {
        if let Some(Slot::Live(e)) = self.slots.get_mut(h as usize) {
            let empty = e.is_empty();
            if empty != e.tomb {
                e.tomb = empty;
                if empty {
                    self.tombs += 1;
                } else {
                    self.tombs -= 1;
                }
            }
        }
    }

    /// Sweeps tombstones out when they outnumber half the live keys. Handles
    /// of tombstones are invalid afterwards: call between operations.
    pub(crate) fn maybe_sweep(&mut self) {
        if self.tombs >= SWEEP_MIN && self.tombs * 2 > self.live() {
            self.sweep();
        }
    }

    fn sweep(&mut self) {
        if self.tombs == self.index.len() {
            // Nothing live: start over, laying new keys out in order again.
            self.index.clear();
            self.free = NIL;
            if self.slots.capacity() > KEEP_SLOTS {
                self.slots = Vec::new();
            } else {
                self.slots.clear();
            }
        } else {
            let (slots, free) = (&mut self.slots, &mut self.free);
            self.index.retain(|_, &mut h| match slots.get_mut(h as usize) {
                Some(slot @ Slot::Live(Entry { tomb: true, .. })) => {
                    *slot = Slot::Free { next: *free };
                    *free = h;
                    false
                }
                _ => true,
            });
        }
        self.tombs = 0;
    }

    /// Every entry, live or tombstone, in slab order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry<W>> {
        self.slots.iter().filter_map(|s| match s {
            Slot::Live(e) => Some(e),
            Slot::Free { .. } => None,
        })
    }

    /// One past the greatest handle in use.
    pub(crate) fn handle_end(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(NIL)
    }

    /// Entries whose key is at or after `start` (or after it, excluded), in key order.
    pub(crate) fn range<'a>(&'a self, start: Bound<&'a str>) -> impl Iterator<Item = &'a Entry<W>> + 'a {
        self.index.range::<[u8], _>((start.map(str::as_bytes), Bound::Unbounded)).filter_map(|(_, &h)| self.get(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(s: &mut KeyStore<()>, key: &str) -> u32 {
        let h = s.find(key).unwrap_or_else(|| s.insert(key));
        let e = s.get_mut(h).expect("live");
        e.holder = Some(Holder {
            owner: Arc::from("o"),
            token: 1,
            ttl: 1,
            expires_at: Time::from_millis(1),
            granted_at: Time::ZERO,
        });
        s.reconcile(h);
        h
    }

    fn empty(s: &mut KeyStore<()>, h: u32) {
        s.get_mut(h).expect("live").holder = None;
        s.reconcile(h);
    }

    #[test]
    fn entries_stay_small() {
        // 88: the key inline up to 22 bytes, the holder (owner, token, TTL,
        // expiry, grant time for the hold-time histogram), the waiters box,
        // the timer node. The README's 1 M-lease figure (~210 B/lease) rests on it.
        assert!(std::mem::size_of::<Slot<()>>() <= 88, "{}", std::mem::size_of::<Slot<()>>());
    }

    #[test]
    fn an_emptied_key_is_a_tombstone_reused_when_the_key_comes_back() {
        let mut s = KeyStore::new();
        let a = hold(&mut s, "a");
        hold(&mut s, "b");
        assert_eq!((s.live(), s.tombs), (2, 0));
        empty(&mut s, a);
        assert_eq!((s.live(), s.tombs), (1, 1));
        assert_eq!(s.find("a"), Some(a), "the tombstone stays indexed");
        assert_eq!(hold(&mut s, "a"), a, "and is reused");
        assert_eq!((s.live(), s.tombs, s.slots.len()), (2, 0, 2));
    }

    #[test]
    fn tombstones_are_swept_once_they_outnumber_half_the_live_keys() {
        let mut s = KeyStore::new();
        let hs: Vec<u32> = (0..3 * SWEEP_MIN).map(|i| hold(&mut s, &format!("k{i:04}"))).collect();
        for &h in &hs[..SWEEP_MIN] {
            empty(&mut s, h);
        }
        s.maybe_sweep();
        assert_eq!(s.tombs, SWEEP_MIN, "64 tombstones against 128 live keys stay");
        empty(&mut s, hs[SWEEP_MIN]);
        s.maybe_sweep();
        assert_eq!((s.tombs, s.live(), s.index.len()), (0, 2 * SWEEP_MIN - 1, 2 * SWEEP_MIN - 1));
        assert_eq!(s.find("k0000"), None);
        assert!(s.get(hs[0]).is_none(), "a swept handle finds nothing");
        assert_eq!(s.find("k0100"), Some(hs[100]), "live keys keep their handles");
        assert!(s.range(Bound::Included("")).all(|e| e.holder.is_some()));
    }

    #[test]
    fn swept_slots_are_reused_before_the_slab_grows() {
        let mut s = KeyStore::new();
        let hs: Vec<u32> = (0..2 * SWEEP_MIN).map(|i| hold(&mut s, &format!("k{i:04}"))).collect();
        for &h in &hs[..SWEEP_MIN] {
            empty(&mut s, h);
        }
        s.maybe_sweep();
        assert_eq!(s.tombs, 0);
        let len = s.slots.len();
        let again: std::collections::BTreeSet<u32> = (0..SWEEP_MIN).map(|i| hold(&mut s, &format!("n{i}"))).collect();
        assert_eq!(again, hs[..SWEEP_MIN].iter().copied().collect(), "freed slots reused");
        assert_eq!(s.slots.len(), len);
        let e = s.get(s.find("n3").expect("indexed")).expect("live");
        assert_eq!(&*e.key.to_arc(), "n3");
    }

    #[test]
    fn a_store_with_nothing_live_starts_over() {
        let mut s = KeyStore::new();
        let hs: Vec<u32> = (0..SWEEP_MIN).map(|i| hold(&mut s, &format!("k{i}"))).collect();
        for &h in &hs {
            empty(&mut s, h);
        }
        s.maybe_sweep();
        assert_eq!((s.index.len(), s.slots.len(), s.free, s.tombs), (0, 0, NIL, 0));
        assert_eq!(hold(&mut s, "x"), 0);
    }

    #[test]
    fn an_inserted_key_is_a_tombstone_until_filled() {
        let mut s: KeyStore<()> = KeyStore::new();
        let h = s.insert("k");
        assert_eq!((s.live(), s.tombs), (0, 1));
        assert_eq!(s.get(h).map(|e| e.info(Time::ZERO).holder), Some(None));
    }
}
