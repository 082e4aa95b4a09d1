//! Property tests of the lock table: random operation sequences on a few keys
//! and owners, with explicit instants, checked against the guarantees G1–G8
//! by the model in `model/`; plus scenario tests, each named after its rule.

mod model;

use std::sync::Arc;
use std::time::Duration;

use model::{Harness, Op, TokenPick, MANY_KEYS, OWNERS};
use proptest::prelude::*;
use turnstile_core::{
    AcquireArgs, Acquired, CoreError, Counters, Effect, LockTable, TableConfig, Time, Wait, WaiterId,
};

/// How the generated operations are weighted and which limits apply.
#[derive(Debug, Clone, Copy)]
struct Profile {
    keys: usize,
    acquire: u32,
    wait: f64,
    share: f64,
    renew: u32,
    release: u32,
    result: f64,
    cancel: u32,
    time: u32,
}

const MIXED: Profile =
    Profile { keys: 4, acquire: 10, wait: 0.6, share: 0.3, renew: 3, release: 5, result: 0.3, cancel: 2, time: 6 };

fn ms(lo: u64, hi: u64) -> impl Strategy<Value = Duration> {
    // Nanosecond resolution, so deadlines fall anywhere inside a timer slot.
    (lo * 1_000_000..hi * 1_000_000).prop_map(Duration::from_nanos)
}

/// Mostly short; now and then longer than a revolution of the timing wheel (about 4.2 s).
fn span(hi: u64) -> impl Strategy<Value = Duration> {
    prop_oneof![9 => ms(1, hi), 1 => ms(4_000, 10_000)]
}

fn token_pick() -> impl Strategy<Value = TokenPick> {
    prop_oneof![3 => Just(TokenPick::Current), 1 => any::<prop::sample::Index>().prop_map(TokenPick::Any)]
}

fn op(p: Profile) -> impl Strategy<Value = Op> {
    let key = 0..p.keys;
    prop_oneof![
        p.acquire => (key.clone(), 0..OWNERS.len(), span(400), prop::option::weighted(p.wait, span(600)), prop::bool::weighted(p.share))
            .prop_map(|(key, owner, ttl, wait, share)| Op::Acquire { key, owner, ttl, wait, share }),
        p.renew => (key.clone(), token_pick(), prop::option::of(span(400)))
            .prop_map(|(key, token, ttl)| Op::Renew { key, token, ttl }),
        p.release => (key, token_pick(), prop::bool::weighted(p.result))
            .prop_map(|(key, token, result)| Op::Release { key, token, result }),
        p.cancel => any::<prop::sample::Index>().prop_map(Op::Cancel),
        p.time => prop_oneof![
            4 => ms(0, 150).prop_map(Op::Tick),
            2 => ms(0, 150).prop_map(Op::Advance),
            2 => Just(Op::TickAtDeadline),
            1 => Just(Op::TickJustBeforeDeadline),
            // Past one revolution of the timing wheel (about 4.2 s).
            1 => ms(4_000, 9_000).prop_map(Op::Tick),
        ],
    ]
}

fn ops(p: Profile) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(p), 1..80)
}

fn start() -> impl Strategy<Value = Time> {
    // Start anywhere, not only at a slot boundary of the wheel.
    (0u64..10_000_000_000).prop_map(Time::from_nanos)
}

fn run(config: TableConfig, start: Time, ops: &[Op]) -> Harness {
    let mut h = Harness::new(config, start);
    h.run(ops);
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// G1, G2, G3, G4, G5, G6 and G7 together, with limits out of reach.
    #[test]
    fn g1_to_g7_hold_over_random_operation_sequences(start in start(), ops in ops(MIXED)) {
        run(TableConfig::default(), start, &ops);
    }

    /// G1: never two unexpired leases on one key, the model's history is
    /// checked at every grant; one key and three owners maximise contention.
    #[test]
    fn g1_mutual_exclusion_on_one_hot_key(start in start(), ops in ops(Profile { keys: 1, ..MIXED })) {
        run(TableConfig::default(), start, &ops);
    }

    /// G2: tokens strictly increase per key and across keys sharing one Counters.
    #[test]
    fn g2_fencing_tokens_strictly_increase(ops in ops(Profile { release: 8, renew: 1, ..MIXED })) {
        let h = run(TableConfig::default(), Time::ZERO, &ops);
        prop_assert!(h.grants <= ops.len());
    }

    /// G3 and G4: leases run out with nobody renewing; waiters are granted
    /// in arrival order at the expiry tick, or time out at their deadline.
    #[test]
    fn g3_expiry_and_g4_fifo_with_waiters_and_no_releases(
        start in start(),
        ops in ops(Profile { release: 0, renew: 1, cancel: 1, wait: 0.9, time: 8, ..MIXED }),
    ) {
        run(TableConfig::default(), start, &ops);
    }

    /// G6: cancelled waiters never appear in an effect; cancel returning
    /// false means the waiter had been answered.
    #[test]
    fn g6_cancelled_waiters_never_answered(start in start(), ops in ops(Profile { cancel: 8, wait: 0.9, ..MIXED })) {
        run(TableConfig::default(), start, &ops);
    }

    /// no-half-applied (G8): TooManyWaiters and TooManyLeases change nothing,
    /// and a waiter left queued for want of a lease is served when one frees.
    #[test]
    fn no_half_applied_limit_errors_leave_state_unchanged(
        start in start(),
        max_waiters in 1usize..4,
        max_leases in 1usize..4,
        ops in ops(Profile { wait: 0.8, ..MIXED }),
    ) {
        run(TableConfig { max_waiters_per_key: max_waiters, max_leases }, start, &ops);
    }

    /// Shared results: a release with a result answers every sharing waiter
    /// queued then and grants the next non-sharing one; a release without a
    /// result, or an expiry, goes on in FIFO order.
    #[test]
    fn shared_results_go_to_sharers_and_the_lock_to_the_next_non_sharer(
        start in start(),
        ops in ops(Profile { keys: 2, wait: 0.9, share: 0.5, release: 8, result: 0.5, ..MIXED }),
    ) {
        run(TableConfig::default(), start, &ops);
    }

    /// Recovery barrier: from hold_grants_until(t), no grant before t; try-locks
    /// of free keys get Recovering; waiters are granted in FIFO order at tick(t),
    /// also behind leases restored from a snapshot that end during the barrier.
    #[test]
    fn recovery_barrier_grants_nothing_before_t_then_fifo(
        start in start(),
        hold in ms(1, 500),
        restored in prop::collection::vec((0..MIXED.keys, 0..OWNERS.len(), ms(1, 400)), 0..3),
        max_leases in prop_oneof![Just(10_000_000usize), 1usize..4],
        ops in ops(Profile { wait: 0.8, ..MIXED }),
    ) {
        let mut h = Harness::new(TableConfig { max_leases, ..TableConfig::default() }, start);
        for (i, (key, owner, ttl)) in restored.into_iter().enumerate() {
            h.restore(key, owner, 1_000 + i as u64, ttl);
        }
        h.hold_grants_for(hold);
        h.run(&ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// G1 to G7 with enough keys that emptied ones are swept out of the
    /// table's index mid-run, and their slots and timers reused by other keys.
    #[test]
    fn g1_to_g7_hold_while_emptied_keys_are_swept_and_reused(
        start in start(),
        ops in prop::collection::vec(op(Profile { keys: MANY_KEYS, time: 10, ..MIXED }), 600..1500),
    ) {
        run(TableConfig::default(), start, &ops);
    }
}

// ---- scenarios ----

const SEC: Duration = Duration::from_secs(1);

fn table() -> LockTable<u64> {
    LockTable::new(TableConfig::default(), Arc::new(Counters::new(1)), Time::ZERO)
}

fn args<'a>(key: &'a str, owner: &'a str, ttl: Duration) -> AcquireArgs<'a> {
    AcquireArgs { key, owner, ttl, share_result: false }
}

fn sharing<'a>(key: &'a str, owner: &'a str, ttl: Duration) -> AcquireArgs<'a> {
    AcquireArgs { share_result: true, ..args(key, owner, ttl) }
}

fn wait(until: Time, payload: u64) -> Option<Wait<u64>> {
    Some(Wait { until, payload })
}

fn granted(r: Result<Acquired, CoreError>) -> turnstile_core::Lease {
    match r {
        Ok(Acquired::Granted(l)) => l,
        other => panic!("expected Granted, got {other:?}"),
    }
}

fn refreshed(r: Result<Acquired, CoreError>) -> turnstile_core::Lease {
    match r {
        Ok(Acquired::Refreshed(l)) => l,
        other => panic!("expected Refreshed, got {other:?}"),
    }
}

fn queued(r: Result<Acquired, CoreError>) -> WaiterId {
    match r {
        Ok(Acquired::Queued(id)) => id,
        other => panic!("expected Queued, got {other:?}"),
    }
}

/// Effects in a comparable shape: (kind, waiter or token).
fn drain(t: &mut LockTable<u64>) -> Vec<(&'static str, u64)> {
    t.drain_effects()
        .map(|e| match e {
            Effect::Granted { waiter, .. } => ("granted", waiter),
            Effect::SharedResult { waiter, .. } => ("result", waiter),
            Effect::WaitTimedOut { waiter, .. } => ("timed_out", waiter),
            Effect::Closed { waiter } => ("closed", waiter),
            Effect::Expired { lease } => ("expired", lease.token),
        })
        .collect()
}

#[test]
fn g3_lease_of_200ms_passes_to_waiter_at_its_expiry_not_1ns_before() {
    let mut t = table();
    let lease = granted(t.acquire(&args("k", "a", Duration::from_millis(200)), None, Time::ZERO));
    queued(t.acquire(&args("k", "b", SEC), wait(Time::from_millis(900), 7), Time::from_millis(10)));
    let expiry = Time::from_millis(200);
    assert_eq!(t.next_deadline(), Some(expiry));
    t.tick(expiry - Duration::from_nanos(1));
    assert!(drain(&mut t).is_empty());
    assert_eq!(t.get("k", expiry - Duration::from_nanos(1)).holder.map(|h| h.token), Some(lease.token));
    t.tick(expiry);
    let effects: Vec<_> = t.drain_effects().collect();
    match &effects[..] {
        [Effect::Expired { lease: old }, Effect::Granted { waiter: 7, lease: new }] => {
            assert_eq!(old.token, lease.token);
            assert!(new.token > lease.token);
            assert_eq!(new.expires_at, expiry + SEC);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn g3_expired_lease_is_not_reported_held_before_the_tick() {
    let mut t = table();
    granted(t.acquire(&args("k", "a", SEC), None, Time::ZERO));
    assert!(t.get("k", Time::from_millis(999)).holder.is_some());
    assert!(t.get("k", Time::from_millis(1000)).holder.is_none());
    assert!(t.leases(Time::from_millis(1000)).next().is_none());
    // The next operation settles it: a new owner is granted without a tick.
    let next = granted(t.acquire(&args("k", "b", SEC), None, Time::from_millis(1000)));
    assert_eq!(drain(&mut t), vec![("expired", 1)]);
    assert_eq!(next.token, 2);
}

#[test]
fn g3_waiter_deadline_gives_wait_timed_out_at_exactly_the_deadline() {
    let mut t = table();
    granted(t.acquire(&args("k", "a", 10 * SEC), None, Time::ZERO));
    queued(t.acquire(&args("k", "b", SEC), wait(Time::from_millis(300), 1), Time::ZERO));
    queued(t.acquire(&args("k", "c", SEC), wait(Time::from_millis(500), 2), Time::ZERO));
    t.tick(Time::from_nanos(299_999_999));
    assert!(drain(&mut t).is_empty());
    t.tick(Time::from_millis(300));
    let effects: Vec<_> = t.drain_effects().collect();
    match &effects[..] {
        [Effect::WaitTimedOut { waiter: 1, current }] => {
            assert_eq!(current.holder.as_ref().map(|h| &*h.owner), Some("a"));
            assert_eq!(current.waiters, 1);
        }
        other => panic!("{other:?}"),
    }
    t.tick(Time::from_millis(500));
    assert_eq!(drain(&mut t), vec![("timed_out", 2)]);
    assert_eq!(t.get("k", Time::from_millis(500)).waiters, 0);
}

#[test]
fn g4_fifo_waiters_are_granted_in_arrival_order() {
    let mut t = table();
    let mut lease = granted(t.acquire(&args("k", "a", SEC), None, Time::ZERO));
    for (i, owner) in ["b", "c", "d"].into_iter().enumerate() {
        queued(t.acquire(
            &args("k", owner, SEC),
            wait(Time::from_millis(5_000), i as u64),
            Time::from_millis(i as u64),
        ));
    }
    for expected in 0..3 {
        assert!(t.release("k", lease.token, None, Time::from_millis(100)));
        let mut effects = t.drain_effects();
        lease = match effects.next() {
            Some(Effect::Granted { waiter, lease }) if waiter == expected => lease,
            other => panic!("{other:?}"),
        };
    }
}

#[test]
fn g5_reacquire_by_holder_keeps_token_and_refreshes_expiry() {
    let mut t = table();
    let first = granted(t.acquire(&args("k", "a", SEC), None, Time::ZERO));
    let again = refreshed(t.acquire(&args("k", "a", 2 * SEC), wait(Time::from_millis(900), 9), Time::from_millis(900)));
    assert_eq!(again.token, first.token);
    assert_eq!(again.expires_at, Time::from_millis(2_900));
    t.tick(Time::from_millis(1_000));
    assert!(drain(&mut t).is_empty(), "the first expiry no longer applies");
    assert_eq!(t.get("k", Time::from_millis(2_899)).holder.map(|h| h.token), Some(first.token));
}

#[test]
fn g6_cancelled_waiter_is_skipped_and_the_next_one_granted() {
    let mut t = table();
    let lease = granted(t.acquire(&args("k", "a", SEC), None, Time::ZERO));
    let b = queued(t.acquire(&args("k", "b", SEC), wait(Time::from_millis(900), 1), Time::ZERO));
    queued(t.acquire(&args("k", "c", SEC), wait(Time::from_millis(900), 2), Time::ZERO));
    assert!(t.cancel("k", b, Time::from_millis(5)));
    assert!(!t.cancel("k", b, Time::from_millis(6)), "a second cancel finds nothing");
    assert!(t.release("k", lease.token, None, Time::from_millis(10)));
    assert_eq!(drain(&mut t), vec![("granted", 2)]);
}

#[test]
fn g7_stale_release_and_renew_leave_the_new_holder_untouched() {
    let mut t = table();
    let old = granted(t.acquire(&args("k", "a", SEC), None, Time::ZERO));
    let new = granted(t.acquire(&args("k", "b", SEC), None, Time::from_millis(1_500)));
    let before = t.get("k", Time::from_millis(1_600));
    assert!(!t.release("k", old.token, None, Time::from_millis(1_600)));
    assert_eq!(
        t.renew("k", old.token, Some(10 * SEC), Time::from_millis(1_600)),
        Err(CoreError::LeaseNotFound { key: "k".into(), token: old.token })
    );
    assert_eq!(t.get("k", Time::from_millis(1_600)), before);
    assert_eq!(t.leases(Time::from_millis(1_600)).map(|l| l.expires_at).collect::<Vec<_>>(), vec![new.expires_at]);
}

#[test]
fn no_half_applied_too_many_waiters_and_too_many_leases_change_nothing() {
    let counters = Arc::new(Counters::new(1));
    let config = TableConfig { max_waiters_per_key: 1, max_leases: 1 };
    let mut t: LockTable<u64> = LockTable::new(config, counters.clone(), Time::ZERO);
    granted(t.acquire(&args("k", "a", SEC), None, Time::ZERO));
    queued(t.acquire(&args("k", "b", SEC), wait(Time::from_millis(500), 1), Time::ZERO));
    let before = t.get("k", Time::ZERO);
    assert_eq!(
        t.acquire(&args("k", "c", SEC), wait(Time::from_millis(500), 2), Time::ZERO),
        Err(CoreError::TooManyWaiters { key: "k".into(), limit: 1 })
    );
    assert_eq!(t.get("k", Time::ZERO), before);
    assert_eq!(t.acquire(&args("j", "c", SEC), None, Time::ZERO), Err(CoreError::TooManyLeases { limit: 1 }));
    assert_eq!(t.get("j", Time::ZERO).holder, None);
    assert_eq!((counters.held_leases(), t.key_count()), (1, 1));
    assert!(drain(&mut t).is_empty());
}

#[test]
fn shared_result_answers_every_sharer_and_grants_the_first_non_sharer() {
    let mut t = table();
    let lease = granted(t.acquire(&args("k", "a", SEC), None, Time::ZERO));
    queued(t.acquire(&sharing("k", "b", SEC), wait(Time::from_millis(900), 1), Time::ZERO));
    queued(t.acquire(&args("k", "c", SEC), wait(Time::from_millis(900), 2), Time::ZERO));
    queued(t.acquire(&sharing("k", "d", SEC), wait(Time::from_millis(900), 3), Time::ZERO));
    let result: Arc<[u8]> = Arc::from(&b"value"[..]);
    assert!(t.release("k", lease.token, Some(result), Time::from_millis(10)));
    assert_eq!(drain(&mut t), vec![("result", 1), ("result", 3), ("granted", 2)]);
    assert_eq!(t.get("k", Time::from_millis(10)).waiters, 0);
}

#[test]
fn shared_results_none_on_expiry_the_next_sharer_is_granted_in_fifo_order() {
    let mut t = table();
    granted(t.acquire(&args("k", "a", SEC), None, Time::ZERO));
    queued(t.acquire(&sharing("k", "b", SEC), wait(Time::from_millis(2_000), 1), Time::ZERO));
    queued(t.acquire(&args("k", "c", SEC), wait(Time::from_millis(2_000), 2), Time::ZERO));
    t.tick(Time::from_millis(1_000));
    assert_eq!(drain(&mut t), vec![("expired", 1), ("granted", 1)]);
    // A release without a result also just passes the lock on.
    let holder = t.get("k", Time::from_millis(1_000)).holder.map(|h| h.token).unwrap_or_default();
    assert!(t.release("k", holder, None, Time::from_millis(1_100)));
    assert_eq!(drain(&mut t), vec![("granted", 2)]);
}

#[test]
fn recovery_barrier_refuses_try_lock_and_grants_queued_waiters_in_fifo_at_t() {
    let mut t = table();
    let resume = Time::from_millis(10_000);
    t.hold_grants_until(resume);
    assert_eq!(
        t.acquire(&args("k", "a", SEC), None, Time::from_millis(4_000)),
        Err(CoreError::Recovering { remaining: Duration::from_secs(6) })
    );
    queued(t.acquire(&args("k", "a", SEC), wait(Time::from_millis(20_000), 1), Time::from_millis(4_000)));
    queued(t.acquire(&args("k", "b", SEC), wait(Time::from_millis(20_000), 2), Time::from_millis(4_001)));
    assert!(t.next_deadline().is_some_and(|d| d <= resume), "the host is woken for the barrier's end");
    t.tick(resume - Duration::from_nanos(1));
    assert!(drain(&mut t).is_empty());
    t.tick(resume);
    assert_eq!(drain(&mut t), vec![("granted", 1)]);
    assert_eq!(t.get("k", resume).waiters, 1);
}

#[test]
fn recovery_barrier_serves_waiters_behind_a_lease_that_ended_during_it() {
    let mut t = table();
    let restored = turnstile_core::Lease {
        key: Arc::from("k"),
        owner: Arc::from("a"),
        token: 41,
        ttl: SEC,
        expires_at: Time::from_millis(1_000),
        granted_at: Time::ZERO,
    };
    assert!(t.restore(&restored, Time::ZERO));
    t.hold_grants_until(Time::from_millis(5_000));
    queued(t.acquire(&args("k", "b", SEC), wait(Time::from_millis(20_000), 1), Time::ZERO));
    assert!(t.release("k", 41, None, Time::from_millis(500)));
    assert!(drain(&mut t).is_empty(), "no grant before the barrier");
    t.tick(Time::from_millis(5_000));
    match &t.drain_effects().collect::<Vec<_>>()[..] {
        [Effect::Granted { waiter: 1, lease }] => assert_eq!(lease.token, 42, "G2: tokens go on above restored ones"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_key_hold_refuses_try_locks_on_its_key_only_and_serves_waiters_at_its_end() {
    let mut t = table();
    let until = Time::from_millis(10_000);
    assert!(t.hold_key_until("long", until, Time::ZERO));
    assert!(!t.hold_key_until("long", until, Time::ZERO), "a key held back already is not held again");
    assert_eq!(
        t.acquire(&args("long", "a", SEC), None, Time::from_millis(4_000)),
        Err(CoreError::Recovering { remaining: Duration::from_secs(6) })
    );
    let minute = Duration::from_secs(60);
    assert!(matches!(t.acquire(&args("other", "a", minute), None, Time::from_millis(4_000)), Ok(Acquired::Granted(_))));
    let shown = t.get("long", Time::from_millis(4_000)).holder.expect("shown as held");
    assert_eq!((&*shown.owner, shown.token), (turnstile_core::RECOVERY_OWNER, 0));
    assert!(!t.release("long", 0, None, Time::from_millis(4_000)), "nobody can release a hold");
    queued(t.acquire(&args("long", "b", SEC), wait(Time::from_millis(20_000), 1), Time::from_millis(4_000)));
    assert!(t.next_deadline().is_some_and(|d| d <= until), "the host is woken for the hold's end");
    t.tick(until - Duration::from_nanos(1));
    let early = drain(&mut t);
    assert!(early.is_empty(), "{early:?}");
    assert!(t.renew("long", 0, None, Time::from_millis(4_000)).is_err(), "nor renew it");
    t.tick(until);
    assert_eq!(drain(&mut t), vec![("expired", 0), ("granted", 1)]);
}

#[test]
fn close_waiters_answers_every_waiter_with_closed_and_keeps_leases() {
    let mut t = table();
    granted(t.acquire(&args("k", "a", SEC), None, Time::ZERO));
    queued(t.acquire(&args("k", "b", SEC), wait(Time::from_millis(900), 1), Time::ZERO));
    t.close_waiters();
    assert_eq!(drain(&mut t), vec![("closed", 1)]);
    assert_eq!(t.get("k", Time::ZERO).waiters, 0);
    assert!(t.get("k", Time::ZERO).holder.is_some());
}

#[test]
fn list_pages_by_prefix_after_a_key_and_skips_ended_locks() {
    let mut t = table();
    for key in ["pay:1", "pay:2", "pay:3", "pax", "job:1", "pay:4"] {
        granted(t.acquire(&args(key, "a", SEC), None, Time::ZERO));
    }
    granted(t.acquire(&args("pay:5", "a", Duration::from_millis(10)), None, Time::ZERO));
    let now = Time::from_millis(20); // pay:5 has expired, not yet ticked
    let names = |v: Vec<turnstile_core::LockInfo>| v.into_iter().map(|i| i.key.to_string()).collect::<Vec<_>>();
    assert_eq!(names(t.list("pay:", None, 2, now)), ["pay:1", "pay:2"]);
    assert_eq!(names(t.list("pay:", Some("pay:2"), 2, now)), ["pay:3", "pay:4"]);
    assert!(t.list("pay:", Some("pay:4"), 2, now).is_empty());
    assert_eq!(names(t.list("pay:", Some("a"), 1, now)), ["pay:1"], "an `after` before the prefix starts at it");
    assert_eq!(names(t.list("", None, 10, now)).len(), 6);
}

#[test]
fn g3_next_deadline_drives_a_lease_longer_than_one_wheel_revolution() {
    let mut t = table();
    let ttl = Duration::from_secs(10);
    granted(t.acquire(&args("k", "a", ttl), None, Time::ZERO));
    let mut ticks = 0;
    while let Some(d) = t.next_deadline() {
        t.tick(d);
        ticks += 1;
        if !drain(&mut t).is_empty() {
            assert_eq!(d, Time::ZERO + ttl);
            break;
        }
        assert!(ticks < 10, "next_deadline keeps waking without progress");
    }
    assert_eq!(t.key_count(), 0);
}

#[test]
fn g4_waiter_left_queued_at_the_lease_limit_is_granted_when_a_lease_frees() {
    let config = TableConfig { max_waiters_per_key: 10, max_leases: 1 };
    let mut t: LockTable<u64> = LockTable::new(config, Arc::new(Counters::new(1)), Time::ZERO);
    t.hold_grants_until(Time::from_millis(10));
    queued(t.acquire(&args("a", "x", SEC), wait(Time::from_millis(5_000), 1), Time::ZERO));
    queued(t.acquire(&args("b", "y", SEC), wait(Time::from_millis(5_000), 2), Time::ZERO));
    t.tick(Time::from_millis(10));
    let effects: Vec<_> = t.drain_effects().collect();
    let token = match &effects[..] {
        [Effect::Granted { waiter: 1, lease }] => lease.token,
        other => panic!("only one lease is allowed: {other:?}"),
    };
    assert!(t.release("a", token, None, Time::from_millis(20)));
    assert_eq!(drain(&mut t), vec![("granted", 2)], "the freed lease goes to the waiter on b");
}

#[test]
fn a_lease_keeps_its_grant_time_through_renewals_refreshes_and_its_expiry() {
    let mut t = table();
    let at = Time::from_millis(100);
    let lease = granted(t.acquire(&args("k", "a", SEC), None, at));
    assert_eq!(lease.granted_at, at);
    let renewed = t.renew("k", lease.token, None, Time::from_millis(600)).expect("renew");
    assert_eq!(renewed.granted_at, at, "a renewal extends the same hold");
    let again = refreshed(t.acquire(&args("k", "a", SEC), None, Time::from_millis(1_200)));
    assert_eq!(again.granted_at, at, "a G5 refresh extends the same hold");
    queued(t.acquire(&args("k", "b", SEC), wait(Time::from_millis(9_000), 1), Time::from_millis(1_300)));
    t.tick(Time::from_millis(2_200));
    let effects: Vec<_> = t.drain_effects().collect();
    let expired = effects.iter().find_map(|e| match e {
        Effect::Expired { lease } => Some(lease.clone()),
        _ => None,
    });
    assert_eq!(expired.map(|l| (l.granted_at, l.expires_at)), Some((at, Time::from_millis(2_200))));
    let next = effects.iter().find_map(|e| match e {
        Effect::Granted { lease, .. } => Some(lease.granted_at),
        _ => None,
    });
    assert_eq!(next, Some(Time::from_millis(2_200)), "the next holder's hold starts at its grant");
}
