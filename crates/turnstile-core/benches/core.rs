//! Benchmarks of the lock table's hot paths: uncontended acquire + release,
//! handing a released key to a queued waiter, and expiring leases by tick.
//!
//! Time is simulated: each operation moves `now` on by a step close to its
//! real cost and the table is ticked about once per simulated millisecond, as
//! a host would at `next_deadline()`. So the wheel's lazily cancelled timers
//! are fired and dropped in the measurement, as in a real server, instead of
//! piling up.
//!
//! Run: `cargo bench -p turnstile-core --bench core`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use turnstile_core::{AcquireArgs, Acquired, Counters, Effect, LockTable, TableConfig, Time, Wait};

/// Simulated time one operation takes; ticks happen every 2048 of them (~1 ms).
const STEP_NANOS: u64 = 500;
const TICK_EVERY: u64 = 2048;
const TTL: Duration = Duration::from_millis(100);

fn table() -> LockTable<u64> {
    LockTable::new(TableConfig::default(), Arc::new(Counters::new(1)), Time::ZERO)
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("bench:key:{i:08}")).collect()
}

/// A simulated clock that ticks the table about once a millisecond.
struct Clock {
    n: u64,
}

impl Clock {
    fn step(&mut self, table: &mut LockTable<u64>) -> Time {
        self.n += 1;
        let now = Time::from_nanos(self.n * STEP_NANOS);
        if self.n.is_multiple_of(TICK_EVERY) {
            table.tick(now);
            table.drain_effects().for_each(drop);
        }
        now
    }
}

fn acquire_release_uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_release_uncontended");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n_keys in [1usize, 1024] {
        let keys = keys(n_keys);
        group.bench_function(format!("{n_keys}_keys"), |b| {
            let mut t = table();
            let mut clock = Clock { n: 0 };
            let mut i = 0usize;
            b.iter(|| {
                let now = clock.step(&mut t);
                let key = &keys[i % n_keys];
                i += 1;
                let args = AcquireArgs { key, owner: "host-1/4242/abcd", ttl: TTL, share_result: false };
                let Ok(Acquired::Granted(lease)) = t.acquire(&args, None, now) else { panic!("not granted") };
                black_box(t.release(key, lease.token, None, now))
            });
        });
    }
    group.finish();
}

/// Steady state: "a" and "b" take turns. Each iteration the holder releases,
/// the queued waiter is granted (its `Granted` effect drained), and the old
/// holder queues again behind it.
fn handoff_to_waiter(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff_to_waiter");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    struct Turns {
        t: LockTable<u64>,
        clock: Clock,
        token: u64,
        owners: [&'static str; 2],
    }
    fn setup() -> Turns {
        let mut t = table();
        let a = AcquireArgs { key: "payment:42", owner: "a", ttl: TTL, share_result: false };
        let Ok(Acquired::Granted(lease)) = t.acquire(&a, None, Time::ZERO) else { panic!("not granted") };
        let b = AcquireArgs { owner: "b", ..a };
        let wait = Some(Wait { until: Time::ZERO + Duration::from_millis(200), payload: 1 });
        assert!(matches!(t.acquire(&b, wait, Time::ZERO), Ok(Acquired::Queued(_))));
        Turns { t, clock: Clock { n: 0 }, token: lease.token, owners: ["a", "b"] }
    }
    /// Release + drain the grant; returns the new holder's token.
    fn hand_off(s: &mut Turns, now: Time) -> u64 {
        assert!(s.t.release("payment:42", s.token, None, now));
        let mut token = 0;
        for e in s.t.drain_effects() {
            if let Effect::Granted { lease, .. } = e {
                token = lease.token;
            }
        }
        token
    }
    fn requeue(s: &mut Turns, now: Time) {
        s.owners.swap(0, 1);
        let args = AcquireArgs { key: "payment:42", owner: s.owners[1], ttl: TTL, share_result: false };
        let wait = Some(Wait { until: now + Duration::from_millis(200), payload: 1 });
        let queued = s.t.acquire(&args, wait, now);
        debug_assert!(matches!(queued, Ok(Acquired::Queued(_))));
        black_box(queued).ok();
    }

    group.bench_function("release_and_grant", |b| {
        let mut s = setup();
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let now = s.clock.step(&mut s.t);
                let start = Instant::now();
                s.token = hand_off(&mut s, now);
                timed += start.elapsed();
                requeue(&mut s, now);
            }
            timed
        });
    });
    group.bench_function("release_grant_requeue", |b| {
        let mut s = setup();
        b.iter(|| {
            let now = s.clock.step(&mut s.t);
            s.token = hand_off(&mut s, now);
            requeue(&mut s, now);
        });
    });
    group.finish();
}

/// `n` leases on distinct keys, granted over `n` simulated microseconds with
/// TTLs spread over a second, all expired by one tick.
fn expiry_per_lease(c: &mut Criterion) {
    let mut group = c.benchmark_group("expiry_per_lease");
    group.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(500));
    for n in [1_000usize, 1_000_000] {
        let keys = keys(n);
        let build = || {
            let mut t = table();
            for (i, key) in keys.iter().enumerate() {
                let now = Time::from_nanos(i as u64 * 1_000);
                let ttl = TTL + Duration::from_micros((i % 1_000) as u64 * 1_000);
                let args = AcquireArgs { key, owner: "host-1/4242/abcd", ttl, share_result: false };
                assert!(matches!(t.acquire(&args, None, now), Ok(Acquired::Granted(_))));
            }
            t
        };
        let end = Time::from_nanos(n as u64 * 1_000) + TTL + Duration::from_secs(1);
        group.throughput(Throughput::Elements(n as u64));
        group.measurement_time(Duration::from_secs(if n > 10_000 { 10 } else { 2 }));
        group.bench_function(format!("{n}"), |b| {
            b.iter_batched(
                build,
                |mut t| {
                    t.tick(end);
                    let expired = t.drain_effects().filter(|e| matches!(e, Effect::Expired { .. })).count();
                    assert_eq!(expired, n);
                    t // dropped outside the measurement
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, acquire_release_uncontended, handoff_to_waiter, expiry_per_lease);
criterion_main!(benches);
