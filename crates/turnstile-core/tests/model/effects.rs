//! The model's bookkeeping of what the table did: recording grants and
//! applying the effects it reports, each checked against G1–G8, and the
//! whole-model checks run after every operation.

use super::*;

impl Harness {
    /// G1 and G2 for a new lease on `key`, then records it as the holder.
    pub(super) fn record_grant(&mut self, key: usize, lease: &Lease) {
        let now = self.now;
        if let Some(t) = self.resume_at {
            assert!(now >= t, "recovery barrier: {} granted at {now:?}, before grants resume at {t:?}", KEYS[key]);
        }
        let km = &mut self.keys[key];
        for l in &km.history {
            assert!(
                l.ended || l.expires_at <= now,
                "G1 mutual exclusion: {} granted to {} (token {}) while {} still holds token {} until {:?} (now {now:?})",
                KEYS[key],
                lease.owner,
                lease.token,
                OWNERS[l.owner],
                l.token,
                l.expires_at
            );
        }
        if let Some(last) = km.history.last() {
            assert!(
                lease.token > last.token,
                "G2 fencing: token {} on {} not above {}",
                lease.token,
                KEYS[key],
                last.token
            );
        }
        assert!(
            lease.token > self.last_token,
            "G2 fencing: token {} reissued or below {}",
            lease.token,
            self.last_token
        );
        if let Some(i) = km.holder {
            km.history[i].ended = true; // expired: G1 allowed it above
        }
        km.history.push(LeaseRec {
            owner: lease.owner_idx(),
            token: lease.token,
            ttl: lease.ttl,
            expires_at: lease.expires_at,
            ended: false,
        });
        km.holder = Some(km.history.len() - 1);
        self.last_token = lease.token;
        self.tokens.push((key, lease.token));
        self.grants += 1;
    }

    pub(super) fn apply(&mut self, effect: Effect<u64>, cause: Cause) {
        let now = self.now;
        let mid = match &effect {
            Effect::Granted { waiter, .. }
            | Effect::SharedResult { waiter, .. }
            | Effect::WaitTimedOut { waiter, .. }
            | Effect::Closed { waiter } => Some(*waiter),
            Effect::Expired { .. } => None,
        };
        if let Some(mid) = mid {
            assert!(!self.cancelled.contains(&mid), "G6 cancellation: cancelled waiter {mid} appears in {effect:?}");
            assert!(self.answered.insert(mid), "G6 cancellation: waiter {mid} answered twice: {effect:?}");
        }
        match effect {
            Effect::Granted { waiter, lease } => {
                let key = key_of(&lease.key);
                let q = &mut self.keys[key].queue;
                let pos = q.iter().position(|w| w.mid == waiter);
                assert_eq!(
                    pos,
                    Some(0),
                    "G4 FIFO: waiter {waiter} granted {} from position {pos:?} of {:?}",
                    KEYS[key],
                    q.iter().map(|w| w.mid).collect::<Vec<_>>()
                );
                let w = q.pop_front().unwrap_or_else(|| unreachable!());
                assert!(w.until > now, "G6 cancellation: waiter {waiter} granted past its deadline {:?}", w.until);
                assert_eq!(lease.owner_idx(), w.owner, "grant went to the wrong owner");
                assert_eq!((lease.ttl, lease.expires_at), (w.ttl, now + w.ttl), "granted lease must run ttl from now");
                self.record_grant(key, &lease);
            }
            Effect::SharedResult { waiter, result } => {
                let Cause::ReleaseWithResult { key, result_tag } = cause else {
                    panic!("shared results: waiter {waiter} got a result outside a release with a result")
                };
                let q = &mut self.keys[key].queue;
                let pos = q
                    .iter()
                    .position(|w| w.mid == waiter)
                    .unwrap_or_else(|| panic!("shared results: waiter {waiter} is not queued on {}", KEYS[key]));
                let w = q.remove(pos).unwrap_or_else(|| unreachable!());
                assert!(w.share, "shared results: waiter {waiter} did not ask for a result");
                assert_eq!(&*result, &[result_tag, 0xAB][..], "shared results: wrong bytes delivered");
            }
            Effect::WaitTimedOut { waiter, current } => {
                let key = key_of(&current.key);
                let q = &mut self.keys[key].queue;
                let pos = q
                    .iter()
                    .position(|w| w.mid == waiter)
                    .unwrap_or_else(|| panic!("WaitTimedOut for waiter {waiter} not queued on {}", KEYS[key]));
                let w = q.remove(pos).unwrap_or_else(|| unreachable!());
                assert!(w.until <= now, "waiter {waiter} timed out at {now:?} before its deadline {:?}", w.until);
            }
            Effect::Closed { waiter } => panic!("unexpected Closed for waiter {waiter}"),
            Effect::Expired { lease } => {
                let key = key_of(&lease.key);
                let km = &mut self.keys[key];
                let i =
                    km.holder.take().unwrap_or_else(|| panic!("G3 expiry: Expired for {} with no holder", KEYS[key]));
                let h = &mut km.history[i];
                assert_eq!(lease.token, h.token, "G3 expiry: Expired names the wrong lease");
                assert_eq!(lease.expires_at, h.expires_at, "G3 expiry: Expired lease has another expiry");
                assert!(
                    h.expires_at <= now,
                    "G3 expiry: lease {} expired early ({:?} > {now:?})",
                    h.token,
                    h.expires_at
                );
                h.ended = true;
            }
        }
    }

    /// What get() and list() report agrees with what the model learned, and
    /// the lease count matches. This is where G3 (an expired lease is not
    /// reported held), G7 (a stale call left the holder as it was) and
    /// no-half-applied are seen in the table's state.
    pub(super) fn check_model_matches_table(&self, op: &str) {
        let now = self.now;
        let mut listed = Vec::new();
        for (k, km) in self.keys.iter().enumerate().take(self.span) {
            let info = self.table.get(KEYS[k], now);
            let expected = km.live_holder(now).map(|h| (OWNERS[h.owner], h.token, h.expires_at.saturating_since(now)));
            let actual = info.holder.as_ref().map(|h| (&*h.owner, h.token, h.expires_in));
            assert_eq!(actual, expected, "model vs get({}) after {op}: holder differs", KEYS[k]);
            assert_eq!(info.waiters as usize, km.queue.len(), "model vs get({}) after {op}: waiters differ", KEYS[k]);
            if info.holder.is_some() || info.waiters > 0 {
                listed.push(info);
            }
        }
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(self.table.list("", None, usize::MAX, now), listed, "list() disagrees with get() after {op}");
        let held = self.keys.iter().filter(|k| k.holder.is_some()).count();
        assert_eq!(self.counters.held_leases(), held, "lease count after {op}");
    }

    /// G3: the host can drive every expiry and timeout by ticking at
    /// `next_deadline()`: it is never later than any lease end or wait deadline.
    pub(super) fn check_g3_next_deadline_covers_every_deadline(&self) {
        let earliest = self
            .keys
            .iter()
            .flat_map(|k| k.holder().map(|h| h.expires_at).into_iter().chain(k.queue.iter().map(|w| w.until)))
            .chain(self.resume_at.filter(|_| !self.resumed))
            .min();
        if let Some(earliest) = earliest {
            let next = self.table.next_deadline();
            assert!(
                next.is_some_and(|n| n <= earliest),
                "G3 expiry: next_deadline {next:?} is later than the earliest deadline {earliest:?}"
            );
        }
    }

    /// G3/G4 liveness: a key nobody holds does not keep a live waiter queued,
    /// unless grants are held back or every lease allowed is in use.
    pub(super) fn check_queues_are_served(&self) {
        let now = self.now;
        if self.resume_at.is_some() && !self.resumed {
            return;
        }
        if self.counters.held_leases() >= self.config.max_leases {
            return;
        }
        for (k, km) in self.keys.iter().enumerate() {
            if km.holder.is_none() {
                if let Some(w) = km.queue.iter().find(|w| w.until > now) {
                    panic!(
                        "G4 FIFO: {} is free with {} leases held of {}, but waiter {} (until {:?}) is still queued at {now:?}",
                        KEYS[k],
                        self.counters.held_leases(),
                        self.config.max_leases,
                        w.mid,
                        w.until
                    );
                }
            }
        }
    }
}
