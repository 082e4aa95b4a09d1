//! Expires `N` leases with one tick, for counting the work per lease with an
//! instruction counter rather than a stopwatch (which also measures how much
//! of the table the caches hold):
//!
//! ```sh
//! cargo build --release -p turnstile-core --example expire
//! valgrind --tool=callgrind --toggle-collect='*LockTable*tick*' target/release/examples/expire 1000
//! valgrind --tool=callgrind --toggle-collect='*LockTable*tick*' target/release/examples/expire 1000000
//! ```
//!
//! Divide each run's `Collected` instruction count by N.

use std::sync::Arc;
use std::time::Duration;

use turnstile_core::{AcquireArgs, Acquired, Counters, Effect, LockTable, TableConfig, Time};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let config = TableConfig { max_leases: n.max(1), ..TableConfig::default() };
    let mut t: LockTable<()> = LockTable::new(config, Arc::new(Counters::new(1)), Time::ZERO);
    let ttl = Duration::from_millis(100);
    for i in 0..n {
        let key = format!("bench:key:{i:08}");
        let now = Time::from_nanos(i as u64 * 1_000);
        let args = AcquireArgs {
            key: &key,
            owner: "host-1/4242/abcd",
            ttl: ttl + Duration::from_micros((i % 1000) as u64 * 1000),
            share_result: false,
        };
        assert!(matches!(t.acquire(&args, None, now), Ok(Acquired::Granted(_))));
    }
    let end = Time::from_nanos(n as u64 * 1_000) + ttl + Duration::from_secs(1);
    t.tick(end);
    let expired = t.drain_effects().filter(|e| matches!(e, Effect::Expired { .. })).count();
    assert_eq!(expired, n);
    println!("expired {expired} leases");
}
