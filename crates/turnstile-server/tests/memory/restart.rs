//! The restart and recovery states of the memory backend (docs/design.md,
//! "The restart states"), each transition tested in-process: a "process" is
//! a `MemoryBackend` on the shared data dir, a crash drops it without the
//! shutdown snapshot (every state write is fsync'd and atomic, so the disk
//! then holds what a SIGKILL leaves), a stop closes it and writes the
//! snapshot. Time is tokio's paused clock, and each process gets a virtual
//! wall clock that moves with it, so "restart 60 s later" is exact.

use std::time::Duration;

use tokio::time::Instant;
use turnstile_core::CoreError;
use turnstile_server::backend::memory::MemoryBackend;
use turnstile_server::backend::{AcquireOutcome, Backend, Grant};
use turnstile_server::clock::Clock;
use turnstile_server::error::BackendError;
use turnstile_testkit::TempDir;

use crate::{backend, must_acquire, req};

const WALL_AT_START_MS: u64 = 1_800_000_000_000;
const STEP: &str = "2s";
const NONE: Duration = Duration::ZERO;

/// One data dir and one simulated wall clock, across process lifetimes.
pub(crate) struct World {
    pub(crate) dir: TempDir,
    t0: Instant,
    args: Vec<String>,
}

impl World {
    /// Every lease up to an hour shares the horizon (no long-lease log).
    pub(crate) fn new() -> World {
        World::with(&["--long-lease", "1h"])
    }

    /// With more flags of turnstiled for every start.
    pub(crate) fn with(args: &[&str]) -> World {
        let args = args.iter().map(|a| a.to_string()).collect();
        World { dir: TempDir::in_memory("restart"), t0: Instant::now(), args }
    }

    /// Starts a process on the data dir, with the wall clock where it is now.
    pub(crate) fn try_start(&self) -> std::io::Result<MemoryBackend> {
        let wall = WALL_AT_START_MS + (Instant::now() - self.t0).as_millis() as u64;
        let dir = self.dir.path().to_str().expect("utf-8").to_owned();
        let mut args = vec!["--data-dir", &dir, "--horizon-step", STEP, "--token-block", "10", "--shards", "4"];
        args.extend(self.args.iter().map(String::as_str));
        backend(&args, Clock::with_virtual_wall(wall))
    }

    pub(crate) fn start(&self) -> MemoryBackend {
        self.try_start().expect("start on the data dir")
    }
}

/// A graceful stop: new calls refused, waiters answered, snapshot written.
pub(crate) async fn stop(b: MemoryBackend) {
    b.close();
    b.shutdown().await.expect("shutdown snapshot");
}

/// A crash: the process is gone; only what it wrote to disk remains.
pub(crate) fn crash(b: MemoryBackend) {
    drop(b);
}

/// A try-lock that must be refused because the server is recovering.
async fn assert_recovering(b: &MemoryBackend, key: &str) {
    match b.acquire(req(key, "newcomer", Duration::from_secs(1), NONE)).await {
        Err(BackendError::Core(CoreError::Recovering { .. })) => {}
        other => panic!("G1: a try-lock of {key} during recovery must be refused, got {other:?}"),
    }
}

async fn try_lock(b: &MemoryBackend, key: &str, owner: &str) -> Option<Grant> {
    match b.acquire(req(key, owner, Duration::from_secs(1), NONE)).await {
        Ok(AcquireOutcome::Acquired(g)) => Some(g),
        _ => None,
    }
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
}

/// Fresh → Running: tokens start at 1 and nothing is held back.
#[tokio::test(start_paused = true)]
async fn fresh_start_grants_at_once_from_token_one() {
    let w = World::new();
    let b = w.start();
    assert!(b.degraded().is_none());
    let g = must_acquire(&b, req("k", "a", Duration::from_secs(5), NONE)).await;
    assert_eq!(g.token, 1);
}

/// Running → stop → snapshot → start: leases carry on, same token, no hold;
/// a newcomer is refused while the lease lives and tokens go on above it.
#[tokio::test(start_paused = true)]
async fn stop_then_start_restores_leases_without_a_hold() {
    let w = World::new();
    let b = w.start();
    let a = must_acquire(&b, req("k", "a", Duration::from_secs(60), NONE)).await;
    stop(b).await;
    advance(Duration::from_secs(5)).await;
    let b = w.start();
    assert!(b.degraded().is_none(), "no recovery hold after a graceful stop");
    assert!(try_lock(&b, "k", "b").await.is_none(), "G1: the restored lease still holds k");
    let again = must_acquire(&b, req("k", "a", Duration::from_secs(60), NONE)).await;
    assert_eq!(again.token, a.token, "G5 across a graceful restart");
    let other = must_acquire(&b, req("other", "b", Duration::from_secs(1), NONE)).await;
    assert!(other.token > a.token, "G2: {} after {}", other.token, a.token);
}

/// Running → crash → start: Recovering until the horizon. Try-locks are
/// refused, renews find no lease, waiters wait and are served at the end.
#[tokio::test(start_paused = true)]
async fn crash_then_start_holds_grants_until_the_horizon() {
    let w = World::new();
    let b = w.start();
    let a = must_acquire(&b, req("k", "a", Duration::from_secs(30), NONE)).await;
    crash(b);
    let b = std::sync::Arc::new(w.start());
    let started = Instant::now();
    assert!(b.degraded().is_some());
    assert_recovering(&b, "k").await;
    assert_recovering(&b, "never-held").await;
    let renew = b.renew("k".into(), a.token, None).await;
    assert!(matches!(renew, Err(BackendError::Core(CoreError::LeaseNotFound { .. }))), "{renew:?}");
    let got = b.acquire(req("k", "b", Duration::from_secs(1), Duration::from_secs(120))).await;
    let Ok(AcquireOutcome::Acquired(g)) = got else { panic!("the waiter is served after recovery: {got:?}") };
    let held_back = Instant::now() - started;
    assert!(
        held_back >= Duration::from_secs(30),
        "G1: granted {held_back:?} after the crash, before A's lease ran out"
    );
    assert!(g.token > a.token, "G2");
    assert!(b.degraded().is_none());
}

/// Recovering → horizon passes → Running, in the same process.
#[tokio::test(start_paused = true)]
async fn recovery_ends_at_the_horizon_in_the_same_process() {
    let w = World::new();
    let b = w.start();
    must_acquire(&b, req("k", "a", Duration::from_secs(10), NONE)).await;
    crash(b);
    let b = w.start();
    assert_recovering(&b, "k").await;
    advance(Duration::from_secs(13)).await;
    assert!(b.degraded().is_none());
    assert!(try_lock(&b, "k", "b").await.is_some());
}

/// Recovering → stop → start (issue 9, defect 3): a rolling deploy right
/// after a crash. The hold still owed goes on in the next process.
#[tokio::test(start_paused = true)]
async fn g1_a_stop_during_crash_recovery_keeps_the_hold() {
    let w = World::new();
    let b = w.start();
    let a = must_acquire(&b, req("k", "a", Duration::from_secs(60), NONE)).await;
    crash(b);
    let b = w.start();
    assert_recovering(&b, "k").await;
    advance(Duration::from_secs(1)).await;
    stop(b).await;
    advance(Duration::from_secs(1)).await;
    let b = w.start();
    assert!(b.degraded().is_some(), "the next start is still recovering");
    assert_recovering(&b, "k").await;
    advance(Duration::from_secs(57)).await;
    assert_recovering(&b, "k").await;
    advance(Duration::from_secs(4)).await;
    let g = try_lock(&b, "k", "b").await.expect("granted once A's lease and the step have passed");
    assert!(g.token > a.token, "G2");
}

/// Recovering → crash → start: the same horizon is owed again.
#[tokio::test(start_paused = true)]
async fn a_crash_during_recovery_keeps_the_hold() {
    let w = World::new();
    let b = w.start();
    must_acquire(&b, req("k", "a", Duration::from_secs(60), NONE)).await;
    crash(b);
    let b = w.start();
    advance(Duration::from_secs(30)).await;
    crash(b);
    let b = w.start();
    assert_recovering(&b, "k").await;
    advance(Duration::from_secs(29)).await;
    assert_recovering(&b, "k").await;
    advance(Duration::from_secs(4)).await;
    assert!(try_lock(&b, "k", "b").await.is_some());
}

/// Stopping → crash (a SIGKILL while draining, before the snapshot): the
/// next start recovers as after any crash.
#[tokio::test(start_paused = true)]
async fn a_crash_while_stopping_recovers_as_after_a_crash() {
    let w = World::new();
    let b = w.start();
    must_acquire(&b, req("k", "a", Duration::from_secs(20), NONE)).await;
    b.close();
    crash(b);
    let b = w.start();
    assert_recovering(&b, "k").await;
}

/// Snapshot written → start → crash → start: the snapshot counted once; the
/// crash after it recovers until the horizon, and never restores it again.
#[tokio::test(start_paused = true)]
async fn a_snapshot_counts_once() {
    let w = World::new();
    let b = w.start();
    must_acquire(&b, req("k", "a", Duration::from_secs(20), NONE)).await;
    stop(b).await;
    let b = w.start();
    assert!(b.degraded().is_none());
    crash(b);
    let b = w.start();
    assert_recovering(&b, "k").await;
    assert!(b.get("k".into()).await.expect("get").holder.is_none(), "the consumed snapshot is not restored again");
}

/// A lost `state.json` beside a snapshot (issue 9, defect 4) is refused at
/// start-up, naming the file, and changes nothing on disk.
#[tokio::test(start_paused = true)]
async fn g1_g2_a_snapshot_without_its_state_file_is_refused() {
    let w = World::new();
    let b = w.start();
    must_acquire(&b, req("k", "a", Duration::from_secs(60), NONE)).await;
    stop(b).await;
    std::fs::remove_file(w.dir.path().join("state.json")).expect("lose state.json");
    let err = w.try_start().err().expect("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("state.json") && err.to_string().contains("snapshot.jsonl"), "{err}");
    assert!(w.dir.path().join("snapshot.jsonl").exists(), "the snapshot is kept for the operator");
}

/// `state.json` as a dangling symlink is refused too, not read as "fresh".
#[tokio::test(start_paused = true)]
async fn g1_g2_a_dangling_state_symlink_is_refused() {
    let w = World::new();
    let b = w.start();
    must_acquire(&b, req("k", "a", Duration::from_secs(60), NONE)).await;
    stop(b).await;
    let state = w.dir.path().join("state.json");
    std::fs::remove_file(&state).expect("remove");
    std::os::unix::fs::symlink(w.dir.path().join("elsewhere.json"), &state).expect("symlink");
    let err = w.try_start().err().expect("refused");
    assert!(err.to_string().contains("dangling symlink"), "{err}");
}

/// A renew or refresh whose state write fails (issue 9, defect 5) is
/// refused and changes nothing; `/readyz` reports it until a write works.
/// The write is made to fail with a directory where the temporary file
/// goes, which stops root too (unlike a read-only mode bit).
#[tokio::test(start_paused = true)]
async fn a_renew_whose_state_write_fails_changes_nothing() {
    let w = World::new();
    let b = w.start();
    let a = must_acquire(&b, req("k", "a", Duration::from_secs(1), NONE)).await;
    let before = b.get("k".into()).await.expect("get").holder.expect("held").expires_in;
    let blocker = w.dir.path().join("state.json.tmp");
    std::fs::create_dir(&blocker).expect("block the state write");

    let renew = b.renew("k".into(), a.token, Some(Duration::from_secs(600))).await;
    assert!(matches!(renew, Err(BackendError::Persist(_))), "{renew:?}");
    let refresh = b.acquire(req("k", "a", Duration::from_secs(600), NONE)).await;
    assert!(matches!(refresh, Err(BackendError::Persist(_))), "{refresh:?}");
    let after = b.get("k".into()).await.expect("get").holder.expect("still held").expires_in;
    assert_eq!(after, before, "G8: the failed extension was not applied");
    let why = b.unready().expect("not ready while the state cannot be written");
    assert!(why.contains("state.json"), "{why}");
    // A renew the persisted horizon covers needs no write and works.
    b.renew("k".into(), a.token, Some(Duration::from_secs(1))).await.expect("covered renew");

    std::fs::remove_dir(&blocker).expect("unblock");
    let g = b.renew("k".into(), a.token, Some(Duration::from_secs(600))).await.expect("renew once writable");
    assert_eq!(g.token, a.token);
    assert!(b.unready().is_none(), "ready again after a write succeeded");
    let held = b.get("k".into()).await.expect("get").holder.expect("held").expires_in;
    assert_eq!(held, Duration::from_secs(600));
}

/// Recovery's blast radius (issue 10 §3): a crash with a one-hour lease held
/// holds back that key for the hour, and every other key only for the
/// shared horizon (short leases plus one step).
#[tokio::test(start_paused = true)]
async fn a_crash_holds_back_only_the_keys_of_long_leases_for_long() {
    let w = World::with(&["--long-lease", "10s"]);
    let b = w.start();
    let long = must_acquire(&b, req("long", "a", Duration::from_secs(3600), NONE)).await;
    let short = must_acquire(&b, req("short", "a", Duration::from_secs(3), NONE)).await;
    crash(b);
    let b = w.start();
    assert_recovering(&b, "other").await;
    assert_recovering(&b, "short").await;
    advance(Duration::from_secs(6)).await;
    assert!(try_lock(&b, "other", "b").await.is_some(), "other keys wait only for the shared horizon");
    let g = try_lock(&b, "short", "b").await.expect("the short lease has ended");
    assert!(g.token > short.token);
    assert_recovering(&b, "long").await;
    let info = b.get("long".into()).await.expect("get");
    let holder = info.holder.expect("shown as held while held back");
    assert_eq!((&*holder.owner, holder.token), ("", 0), "held back, not by a client");
    assert!(holder.expires_in > Duration::from_secs(3590), "{:?}", holder.expires_in);
    // A waiter queues behind the hold and is granted when it ends: the
    // lease's end, rounded up to its log entry (a third of its TTL later).
    let got = b.acquire(req("long", "b", Duration::from_secs(1), Duration::from_secs(6000))).await;
    let Ok(AcquireOutcome::Acquired(g)) = got else { panic!("{got:?}") };
    assert!(g.token > long.token, "G2");
    let held = Instant::now() - w.t0;
    assert!(held >= Duration::from_secs(3600), "G1: not before the hour is over");
    assert!(held <= Duration::from_secs(4800), "held back {held:?}, more than 4/3 of the TTL");
}

/// A force release writes nothing, and loses nothing: after a crash tokens
/// go on above the lease granted after it (G2), and the key of the
/// force-released long lease is still held back until that lease's logged
/// end, since its old holder may still believe it holds the key (G1); a
/// force release does not end that hold.
#[tokio::test(start_paused = true)]
async fn a_force_release_then_a_crash_keeps_g1_and_g2() {
    let w = World::with(&["--long-lease", "10s"]);
    let b = w.start();
    let long = must_acquire(&b, req("long", "a", Duration::from_secs(600), NONE)).await;
    let writes = b.state_writes();
    let out = b.force_release("long".into(), None).await.expect("force release");
    assert!(out.released && out.previous.holder.is_some_and(|h| h.token == long.token));
    assert_eq!(b.state_writes(), writes, "a force release writes no state");
    let next = must_acquire(&b, req("long", "b", Duration::from_secs(3), NONE)).await;
    assert!(next.token > long.token, "G2");
    crash(b);
    let b = w.start();
    advance(Duration::from_secs(6)).await;
    let other = try_lock(&b, "other", "c").await.expect("other keys wait only for the shared horizon");
    assert!(other.token > next.token, "G2 across the crash: {} after {}", other.token, next.token);
    assert_recovering(&b, "long").await;
    let out = b.force_release("long".into(), None).await.expect("force release");
    assert!(!out.released, "a crash hold is not force-released: {out:?}");
    assert_recovering(&b, "long").await;
}

/// A key hold survives a graceful stop and a second crash.
#[tokio::test(start_paused = true)]
async fn a_key_hold_survives_a_stop_and_a_second_crash() {
    let w = World::with(&["--long-lease", "10s"]);
    let b = w.start();
    must_acquire(&b, req("long", "a", Duration::from_secs(600), NONE)).await;
    crash(b);
    let b = w.start();
    advance(Duration::from_secs(10)).await;
    stop(b).await;
    let b = w.start();
    assert_recovering(&b, "long").await;
    assert!(try_lock(&b, "other", "b").await.is_some());
    crash(b);
    let b = w.start();
    advance(Duration::from_secs(10)).await;
    assert_recovering(&b, "long").await;
    advance(Duration::from_secs(800)).await;
    assert!(try_lock(&b, "long", "b").await.is_some());
}

/// --override-recovery grants at once after a crash, and tokens still go on
/// above every token issued before.
#[tokio::test(start_paused = true)]
async fn the_recovery_override_grants_at_once_and_never_reuses_a_token() {
    let w = World::with(&["--long-lease", "10s", "--override-recovery"]);
    let b = w.start();
    let a = must_acquire(&b, req("long", "a", Duration::from_secs(600), NONE)).await;
    let s = must_acquire(&b, req("short", "a", Duration::from_secs(5), NONE)).await;
    crash(b);
    let b = w.start();
    assert!(b.degraded().is_none());
    let g1 = try_lock(&b, "long", "b").await.expect("granted at once");
    let g2 = try_lock(&b, "short", "b").await.expect("granted at once");
    assert!(g1.token > a.token.max(s.token) && g2.token > a.token.max(s.token), "G2 even when overridden");
}

/// The state file is written about once per horizon step under steady load,
/// not per grant; long leases add a write per key about every other renew.
#[tokio::test(start_paused = true)]
async fn state_writes_follow_the_step_not_the_grants() {
    let w = World::with(&["--long-lease", "10s", "--token-block", "1000000"]);
    let b = w.start();
    let before = b.state_writes();
    // 20 s of load: 100 grant/release cycles per virtual second on 50 keys.
    for i in 0..2_000u32 {
        let g = must_acquire(&b, req(&format!("k{}", i % 50), "a", Duration::from_secs(5), NONE)).await;
        b.release(g.key.to_string(), g.token, None).await.expect("release");
        advance(Duration::from_millis(10)).await;
    }
    let short_writes = b.state_writes() - before;
    // A 2 s step over 20 s: about 10 writes.
    assert!(short_writes <= 12, "{short_writes} writes for 2,000 grants");
    // A one-hour lease renewed every 20 minutes by its guard, for 10 hours.
    let before = b.state_writes();
    let l = must_acquire(&b, req("long", "a", Duration::from_secs(3600), NONE)).await;
    for _ in 0..30 {
        advance(Duration::from_secs(1200)).await;
        b.renew("long".into(), l.token, None).await.expect("renew");
    }
    let long_writes = b.state_writes() - before;
    assert!((10..=20).contains(&long_writes), "{long_writes} writes for a grant and 30 renews");
}

/// The long-lease log is bounded: past --max-long-leases keys, a long lease
/// is covered by the shared horizon, as before the log existed.
#[tokio::test(start_paused = true)]
async fn the_long_lease_log_is_bounded() {
    let w = World::with(&["--long-lease", "10s", "--max-long-leases", "2"]);
    let b = w.start();
    for k in ["l1", "l2", "l3"] {
        must_acquire(&b, req(k, "a", Duration::from_secs(600), NONE)).await;
    }
    let state = std::fs::read_to_string(w.dir.path().join("state.json")).expect("state.json");
    assert!(state.contains("\"l1\"") && state.contains("\"l2\"") && !state.contains("\"l3\""), "{state}");
    crash(b);
    let b = w.start();
    advance(Duration::from_secs(30)).await;
    assert_recovering(&b, "other").await; // the horizon now covers l3's 600 s
}

/// A `state.json` lost after a crash (nothing else left in the dir but the
/// marker written at the first start) is refused too, not taken for a fresh
/// dir that would start again from token 1.
#[tokio::test(start_paused = true)]
async fn g1_g2_a_state_file_lost_after_a_crash_is_refused() {
    let w = World::new();
    let b = w.start();
    must_acquire(&b, req("k", "a", Duration::from_secs(60), NONE)).await;
    crash(b);
    std::fs::remove_file(w.dir.path().join("state.json")).expect("lose state.json");
    let err = w.try_start().err().expect("refused");
    assert!(err.to_string().contains("state.json") && err.to_string().contains("turnstile-data-dir"), "{err}");
}
