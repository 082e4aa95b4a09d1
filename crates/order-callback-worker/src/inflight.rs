//! The orders this process holds a lease on right now, with their fencing
//! tokens (`GET /leases`): to watch a slow worker, and for the tests to know
//! when a worker is mid-work.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// One held lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Held {
    /// The order.
    pub(crate) order_id: i64,
    /// The lease's fencing token.
    pub(crate) fencing_token: u64,
}

/// The registry. A plain mutex: entries change twice per delivery and the
/// lock is never held across an `.await`.
#[derive(Clone, Default)]
pub(crate) struct Inflight {
    held: Arc<Mutex<BTreeMap<i64, u64>>>,
}

/// Removes its entry when dropped, however the delivery ends.
pub(crate) struct Entry {
    inflight: Inflight,
    order_id: i64,
    token: u64,
}

impl Inflight {
    /// Records that `order_id` is held with `token` until the entry drops.
    pub(crate) fn enter(&self, order_id: i64, token: u64) -> Entry {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).insert(order_id, token);
        Entry { inflight: self.clone(), order_id, token }
    }

    /// What is held now, by order id.
    pub(crate) fn snapshot(&self) -> Vec<Held> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.iter().map(|(&order_id, &fencing_token)| Held { order_id, fencing_token }).collect()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut held = self.inflight.held.lock().unwrap_or_else(PoisonError::into_inner);
        // Only our own entry: if our lease expired mid-work, a later delivery
        // in this process may hold the order now under a newer token.
        if held.get(&self.order_id) == Some(&self.token) {
            held.remove(&self.order_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_leave_when_dropped() {
        let inflight = Inflight::default();
        let a = inflight.enter(2, 10);
        let _b = inflight.enter(1, 11);
        assert_eq!(
            inflight.snapshot(),
            vec![Held { order_id: 1, fencing_token: 11 }, Held { order_id: 2, fencing_token: 10 }]
        );
        drop(a);
        assert_eq!(inflight.snapshot(), vec![Held { order_id: 1, fencing_token: 11 }]);
    }

    #[test]
    fn a_stale_entry_does_not_remove_the_newer_one() {
        let inflight = Inflight::default();
        let old = inflight.enter(5, 1);
        let _new = inflight.enter(5, 2);
        drop(old);
        assert_eq!(inflight.snapshot(), vec![Held { order_id: 5, fencing_token: 2 }]);
    }
}
