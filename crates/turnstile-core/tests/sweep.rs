//! Scenario tests of how the table reclaims emptied keys: swept out of its
//! index in bulk, their slots reused by other keys while timers set for the
//! old ones are still pending.

use std::sync::Arc;
use std::time::Duration;

use turnstile_core::{
    AcquireArgs, Acquired, CoreError, Counters, Effect, Lease, LockTable, TableConfig, Time, Wait, WaiterId,
};

const SEC: Duration = Duration::from_secs(1);

fn table() -> LockTable<u64> {
    LockTable::new(TableConfig::default(), Arc::new(Counters::new(1)), Time::ZERO)
}

fn args<'a>(key: &'a str, owner: &'a str, ttl: Duration) -> AcquireArgs<'a> {
    AcquireArgs { key, owner, ttl, share_result: false }
}

fn wait(until: Time, payload: u64) -> Option<Wait<u64>> {
    Some(Wait { until, payload })
}

fn granted(r: Result<Acquired, CoreError>) -> Lease {
    match r {
        Ok(Acquired::Granted(l)) => l,
        other => panic!("expected Granted, got {other:?}"),
    }
}

fn queued(r: Result<Acquired, CoreError>) -> WaiterId {
    match r {
        Ok(Acquired::Queued(id)) => id,
        other => panic!("expected Queued, got {other:?}"),
    }
}

/// Effects as (kind, waiter or token).
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
fn g3_g6_emptied_keys_are_swept_and_their_slots_reused_without_stale_timers_firing_on_new_keys() {
    let mut t = table();
    let ms = Time::from_millis;
    let old: Vec<String> = (0..100).map(|i| format!("old:{i:03}")).collect();
    let new: Vec<String> = (0..100).map(|i| format!("new:{i:03}")).collect();
    let mut waiter = 0;
    for key in &old {
        let lease = granted(t.acquire(&args(key, "a", 10 * SEC), None, Time::ZERO));
        waiter += 1;
        let id = queued(t.acquire(&args(key, "b", SEC), wait(ms(300), waiter), Time::ZERO));
        assert!(t.cancel(key, id, ms(5)));
        assert!(t.release(key, lease.token, None, ms(6)));
    }
    assert_eq!(t.key_count(), 0);
    // Their lease and waiter timers are still in the wheel; the new keys take their slots.
    for key in &new {
        granted(t.acquire(&args(key, "c", Duration::from_millis(350)), None, ms(7)));
        waiter += 1;
        queued(t.acquire(&args(key, "d", SEC), wait(ms(400), waiter), ms(7)));
    }
    assert_eq!(t.key_count(), 100);
    t.tick(ms(300)); // the old waiters' deadlines
    assert!(drain(&mut t).is_empty(), "a stale timer acted on a new key");
    assert!(t.list("new:", None, 1000, ms(300)).iter().all(|i| i.holder.is_some() && i.waiters == 1));
    assert!(t.list("old:", None, 1000, ms(300)).is_empty());
    t.tick(ms(357));
    let effects = drain(&mut t);
    assert_eq!(effects.iter().filter(|(kind, _)| *kind == "expired").count(), 100);
    assert_eq!(effects.iter().filter(|(kind, _)| *kind == "granted").count(), 100);
    t.tick(ms(1_357));
    assert_eq!(drain(&mut t).len(), 100, "the granted waiters' leases run out");
    t.tick(ms(10_000)); // the old leases' timers
    assert!(drain(&mut t).is_empty());
    while let Some(d) = t.next_deadline() {
        t.tick(d);
        assert!(drain(&mut t).is_empty());
    }
    assert_eq!((t.key_count(), t.timer_count()), (0, 0));
    for key in old.iter().chain(&new) {
        assert_eq!(
            t.get(key, ms(10_000)),
            turnstile_core::LockInfo { key: Arc::from(key.as_str()), holder: None, waiters: 0 }
        );
    }
}

#[test]
fn g1_a_key_that_comes_back_after_its_tombstone_was_swept_starts_clean() {
    let mut t = table();
    let keys: Vec<String> = (0..200).map(|i| format!("k:{i:03}")).collect();
    let leases: Vec<Lease> = keys.iter().map(|k| granted(t.acquire(&args(k, "a", SEC), None, Time::ZERO))).collect();
    // Keep the even keys; empty the odd ones (more than half the live keys: swept).
    for (k, l) in keys.iter().zip(&leases).skip(1).step_by(2) {
        assert!(t.release(k, l.token, None, Time::from_millis(1)));
    }
    let back = granted(t.acquire(&args(&keys[1], "b", SEC), None, Time::from_millis(2)));
    assert!(back.token > leases[199].token, "G2: a swept key's tokens go on increasing");
    assert_eq!(t.key_count(), 101);
    let names: Vec<String> =
        t.list("k:", None, 1000, Time::from_millis(2)).into_iter().map(|i| i.key.to_string()).collect();
    let expected: Vec<String> =
        keys.iter().enumerate().filter(|(i, _)| i % 2 == 0 || *i == 1).map(|(_, k)| k.clone()).collect();
    assert_eq!(names, expected);
    let held = t.get(&keys[1], Time::from_millis(2)).holder.map(|h| (h.owner.to_string(), h.token));
    assert_eq!(held, Some(("b".to_owned(), back.token)));
    // The even keys' original timers expire them; the comeback has its own.
    t.tick(Time::from_millis(1_000));
    assert_eq!(drain(&mut t).len(), 100);
    t.tick(Time::from_millis(1_002));
    assert_eq!(drain(&mut t), vec![("expired", back.token)]);
    assert_eq!(t.key_count(), 0);
}
