//! Chaos clients: recorded Acquire/Renew/Release calls over gRPC, a fenced
//! storage model they write to, and the loop each background client runs.
//!
//! Shared by the `chaos` binary and `turnstile-server/tests/chaos.rs`; each
//! uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;
use tonic::Code;
use turnstile_proto::v1;
use turnstile_proto::v1::lock_service_client::LockServiceClient;
use turnstile_testkit::history::{GrpcCode, Indeterminacy, Observed, Op, Operation, Outcome, Recorder};

/// A server the clients call: the memory backend's one `turnstiled`, or one
/// of the etcd backend's sidecars.
pub(crate) trait Target: Send + Sync {
    /// A client of the process running now (a restart may have moved it).
    fn client(&self) -> LockServiceClient<Channel>;
}

/// How long past its own wait a call may take before the client gives up
/// (and records it indeterminate).
const CALL_SLACK: Duration = Duration::from_secs(1);

/// The storage the clients protect: per key the largest token it accepted.
/// With `checked` false it skips the token check: the test-only fault that
/// the checker must catch.
pub(crate) struct Storage {
    checked: bool,
    // std Mutex: one map update per write, never held across an await.
    max: Mutex<HashMap<String, u64>>,
}

impl Storage {
    /// A storage model; `checked: false` accepts every write.
    pub(crate) fn new(checked: bool) -> Storage {
        Storage { checked, max: Mutex::default() }
    }

    /// `UPDATE … SET fence = :token WHERE fence <= :token`: accepted iff
    /// no larger token was accepted before.
    fn write(&self, key: &str, token: u64) -> bool {
        let mut max = self.max.lock().expect("storage lock");
        let cur = max.entry(key.to_owned()).or_default();
        let ok = !self.checked || token >= *cur;
        if ok {
            *cur = (*cur).max(token);
        }
        ok
    }
}

/// Prints what happens, stamped on the recorder's clock, and counts it.
pub(crate) struct Log {
    rec: Recorder,
    /// Print every operation as it completes.
    pub(crate) ops: bool,
    /// Operations completed.
    pub(crate) completed: AtomicUsize,
    /// Acquires granted (refreshes included).
    pub(crate) granted: AtomicUsize,
}

impl Log {
    /// A log on `rec`'s clock.
    pub(crate) fn new(rec: Recorder, ops: bool) -> Log {
        Log { rec, ops, completed: AtomicUsize::new(0), granted: AtomicUsize::new(0) }
    }

    /// Prints one event line.
    pub(crate) fn event(&self, what: &str) {
        println!("[{:>9.3} ms] {what}", self.rec.now().as_secs_f64() * 1e3);
    }

    fn op(&self, op: &Operation) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if matches!(op.completed, Some((_, Outcome::Granted { .. }))) {
            self.granted.fetch_add(1, Ordering::Relaxed);
        }
        if self.ops {
            println!("  {op}");
        }
    }
}

/// One client process: an owner string, its calls recorded.
#[derive(Clone)]
pub(crate) struct Client {
    /// Its process id in the history.
    pub(crate) process: u32,
    /// The owner it acquires as.
    pub(crate) owner: String,
    rec: Recorder,
    target: Arc<dyn Target>,
    storage: Arc<Storage>,
    log: Arc<Log>,
}

fn pd(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn sd(d: Option<prost_types::Duration>, asked: Duration) -> Duration {
    d.map_or(asked, |d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// A failed call: a status the server sent, or a transport failure after
/// which the request may or may not have been applied. A backend (etcd)
/// that did not answer may have applied the change all the same: that is
/// indeterminate too, unlike the memory backend's refusals, which change
/// nothing.
fn failure(s: &tonic::Status) -> Outcome {
    let transport = std::error::Error::source(s).is_some()
        || (s.code() == Code::Unknown && s.message().contains("transport"))
        || s.code() == Code::Cancelled;
    if transport {
        Outcome::Indeterminate(Indeterminacy::ConnectionLost)
    } else if s.code() == Code::Unavailable && s.message().starts_with("backend unavailable:") {
        Outcome::Indeterminate(Indeterminacy::BackendUnreachable)
    } else {
        Outcome::Failed { code: GrpcCode(s.code() as i32), message: s.message().to_owned() }
    }
}

impl Client {
    /// Client `process` acquiring as `owner`.
    pub(crate) fn new(
        process: u32,
        owner: &str,
        rec: &Recorder,
        target: Arc<dyn Target>,
        storage: &Arc<Storage>,
        log: &Arc<Log>,
    ) -> Client {
        Client { process, owner: owner.into(), rec: rec.clone(), target, storage: storage.clone(), log: log.clone() }
    }

    /// Now on the recorder's clock.
    pub(crate) fn now(&self) -> Duration {
        self.rec.now()
    }

    /// Acquire `key` for `ttl`, waiting up to `wait`.
    pub(crate) async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Operation {
        let req = v1::AcquireRequest {
            key: key.into(),
            owner: self.owner.clone(),
            ttl: Some(pd(ttl)),
            wait_timeout: Some(pd(wait)),
            share_result: false,
        };
        let mut c = self.target.client();
        let pending = self.rec.invoke(self.process, key, &self.owner, Op::Acquire { ttl, wait });
        let outcome = match tokio::time::timeout(wait + CALL_SLACK, c.acquire(req)).await {
            Err(_) => Outcome::Indeterminate(Indeterminacy::TimedOut),
            Ok(Err(s)) => failure(&s),
            Ok(Ok(r)) => match r.into_inner() {
                v1::AcquireResponse { acquired: true, lease: Some(l), .. } => {
                    Outcome::Granted { token: l.fencing_token, ttl: sd(l.ttl, ttl) }
                }
                _ => Outcome::NotAcquired,
            },
        };
        self.done(pending.complete(outcome))
    }

    /// Renew `key`'s lease `token` for `ttl`.
    pub(crate) async fn renew(&self, key: &str, token: u64, ttl: Duration) -> Operation {
        let req = v1::RenewRequest { key: key.into(), fencing_token: token, ttl: Some(pd(ttl)) };
        let mut c = self.target.client();
        let pending = self.rec.invoke(self.process, key, &self.owner, Op::Renew { token, ttl });
        let outcome = match tokio::time::timeout(CALL_SLACK, c.renew(req)).await {
            Err(_) => Outcome::Indeterminate(Indeterminacy::TimedOut),
            Ok(Err(s)) => failure(&s),
            Ok(Ok(r)) => Outcome::Renewed { ttl: sd(r.into_inner().lease.and_then(|l| l.ttl), ttl) },
        };
        self.done(pending.complete(outcome))
    }

    /// Release `key`'s lease `token`.
    pub(crate) async fn release(&self, key: &str, token: u64) -> Operation {
        let req = v1::ReleaseRequest { key: key.into(), fencing_token: token, result: None };
        let mut c = self.target.client();
        let pending = self.rec.invoke(self.process, key, &self.owner, Op::Release { token });
        let outcome = match tokio::time::timeout(CALL_SLACK, c.release(req)).await {
            Err(_) => Outcome::Indeterminate(Indeterminacy::TimedOut),
            Ok(Err(s)) => failure(&s),
            Ok(Ok(r)) => Outcome::Released { released: r.into_inner().released },
        };
        self.done(pending.complete(outcome))
    }

    /// GetLock `key`: who holds it and for how long still, as an
    /// observation the checker holds against the acknowledged extensions.
    pub(crate) async fn get_lock(&self, key: &str) -> Operation {
        let req = v1::GetLockRequest { key: key.into() };
        let mut c = self.target.client();
        let pending = self.rec.invoke(self.process, key, &self.owner, Op::GetLock);
        let outcome = match tokio::time::timeout(CALL_SLACK, c.get_lock(req)).await {
            Err(_) => Outcome::Indeterminate(Indeterminacy::TimedOut),
            Ok(Err(s)) => failure(&s),
            Ok(Ok(r)) => {
                let info = r.into_inner();
                let holder = info.held.then(|| Observed {
                    owner: info.owner,
                    token: info.fencing_token,
                    expires_in: sd(info.expires_in, Duration::ZERO),
                });
                Outcome::Observed { holder }
            }
        };
        self.done(pending.complete(outcome))
    }

    /// A fenced write of `key` with `token` to the storage model.
    pub(crate) fn write(&self, key: &str, token: u64) -> Operation {
        let pending = self.rec.invoke(self.process, key, &self.owner, Op::FencedWrite { token });
        let outcome = if self.storage.write(key, token) { Outcome::WriteAccepted } else { Outcome::WriteRejected };
        self.done(pending.complete(outcome))
    }

    fn done(&self, op: Operation) -> Operation {
        self.log.op(&op);
        op
    }
}

/// The granted token and TTL of an Acquire, if granted.
pub(crate) fn granted(op: &Operation) -> Option<(u64, Duration)> {
    match op.completed {
        Some((_, Outcome::Granted { token, ttl })) => Some((token, ttl)),
        _ => None,
    }
}

/// A small deterministic generator (splitmix64): no dependency, seedable.
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..hi`.
    pub(crate) fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(self.below(span))
    }
}

/// What the background clients do.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// Keys `k0..k{keys}`.
    pub(crate) keys: u32,
    /// The usual TTL.
    pub(crate) ttl: Duration,
    /// The TTL of one acquire in eight: long enough to live through a restart.
    pub(crate) long_ttl: Duration,
    /// How long an Acquire waits in the queue.
    pub(crate) wait: Duration,
}

/// Shared switches of a run.
#[derive(Default)]
pub(crate) struct Switches {
    /// Set to stop the clients.
    pub(crate) stop: AtomicBool,
    /// Stall requests: the next holders take one each and stop renewing
    /// past their TTL, then still write with their token.
    pub(crate) stalls: AtomicU32,
    /// Stalls done.
    pub(crate) stalled: AtomicU32,
}

/// One background client: acquire, claim with a fenced write, hold a while
/// (renewing sometimes, writing again while valid by the clock rule),
/// release; or, when asked, stall past the TTL and write anyway.
pub(crate) async fn client_loop(c: Client, w: Workload, sw: Arc<Switches>, mut rng: Rng) {
    while !sw.stop.load(Ordering::Relaxed) {
        let key = format!("k{}", rng.below(u64::from(w.keys)));
        let ttl = if rng.below(8) == 0 { w.long_ttl } else { w.ttl };
        let op = c.acquire(&key, ttl, w.wait).await;
        let Some((token, granted_ttl)) = granted(&op) else {
            if !matches!(op.completed, Some((_, Outcome::NotAcquired))) {
                // Server down, recovering or refusing: back off a little.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            continue;
        };
        // Validity by the clock rule: from the send time.
        let mut valid_until = op.invoked + granted_ttl;
        if c.now() < valid_until {
            c.write(&key, token);
        }
        let stall = sw.stalls.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        if stall {
            // A client paused past its TTL: no renew, then the write it had in hand.
            tokio::time::sleep(granted_ttl * 2 + Duration::from_millis(100)).await;
            let late = c.write(&key, token);
            sw.stalled.fetch_add(1, Ordering::Relaxed);
            let verdict = match late.completed {
                Some((_, Outcome::WriteAccepted)) => "accepted (no larger token had written yet)",
                _ => "rejected",
            };
            c.log.event(&format!(
                "fault: client p{} stalled {:?} past its ttl holding {key} token {token}; its late write was {verdict}",
                c.process,
                granted_ttl + Duration::from_millis(100)
            ));
            c.release(&key, token).await;
            continue;
        }
        for _ in 0..rng.below(3) {
            tokio::time::sleep(rng.between(granted_ttl / 4, granted_ttl / 2)).await;
            if c.now() >= valid_until {
                break;
            }
            let renew = c.renew(&key, token, ttl).await;
            match renew.completed {
                Some((_, Outcome::Renewed { ttl })) => valid_until = renew.invoked + ttl,
                Some((_, Outcome::Failed { code, .. })) if code != GrpcCode::NOT_FOUND => {
                    // A refused renew must have changed nothing (defect 5 of
                    // issue 9): look, and let the checker compare.
                    c.get_lock(&key).await;
                    break;
                }
                _ => break,
            }
            if c.now() < valid_until {
                c.write(&key, token);
            }
        }
        c.release(&key, token).await;
    }
}
