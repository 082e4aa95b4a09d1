//! The etcd backend: lock state lives in an etcd cluster, so any number of
//! `turnstiled` sidecars can front it and hold no state of their own.
//!
//! Each turnstile lease is an etcd lease, and each holder or waiter is a
//! queue entry under the key, created with its own lease, in the pattern of
//! etcd's own lock (v3 concurrency `Mutex`): the entry with the lowest create
//! revision holds the lock, each waiter watches only the entry just ahead of
//! it, and the fencing token is the holder entry's create revision, so it only
//! grows, across sidecar restarts, etcd restarts and leader failover.
//!
//! # Layout
//! - this file: [`EtcdBackend`], the connection, and the one place etcd
//!   calls get their timeout and their mapping to [`BackendError`]. Every
//!   time the backend reads or sleeps until comes from one [`Clock`], given
//!   at construction ([`EtcdBackend::connect_with_clock`]).
//! - [`proto`]: etcd's gRPC API, generated from `proto/etcd/` by `build.rs`.
//! - `layout`: the etcd key layout and the value of a queue entry.
//! - `acquire`: Acquire: enqueue, G5 refresh, the wait behind the entry ahead,
//!   the grant-time lease check (etcd issue 11456), cancellation (G6).
//! - `holders`: Renew and Release, and the leases this sidecar granted or
//!   renewed, which it ends itself the moment they run out (see below).
//! - `leases`: a lease with its keep-alive stream, and the pool of released
//!   leases that makes a lock cycle cost two etcd commits, as etcd's own lock.
//! - `batch`: concurrent write transactions on different keys sent to etcd
//!   as one (group commit).
//! - `inspect`: GetLock and ListLocks.
//!
//! # Expiry
//! A grant or renew promises its TTL counted from the moment the call began
//! here, never later than the client sent it. The etcd lease under it is
//! granted `HEADROOM_SECS` longer and was (re)started at most that long
//! before the call, so etcd keeps it at least as long as promised. The sidecar
//! that granted or last renewed a lease deletes its entry itself the moment
//! the promise runs out, so the next waiter is granted at once: a transaction
//! that succeeds only while the entry's mod revision is the one this sidecar
//! wrote, so a renew through any other sidecar (which rewrites the entry)
//! disarms it. If that sidecar is gone, etcd's TTL ends the lease: later by
//! at most the headroom plus etcd's reaping delay (its lessor looks for
//! expired leases twice a second).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchFilterType, WatchOptions, WatchStream,
};
use tokio::sync::Notify;

use super::{AcquireOutcome, AcquireRequest, Backend, Grant, LockInfo, TtlBounds};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::BackendError;
use crate::telemetry::Metrics;

mod acquire;
mod batch;
mod holders;
mod inspect;
mod layout;
mod leases;
pub mod proto;

use batch::Batcher;
use holders::LocalLeases;
use layout::Layout;
use leases::LeasePool;

/// etcd's minimum lease TTL with its default election timeout (1 s): it
/// raises shorter TTLs to `ceil(1.5 × election timeout)`. Used when etcd
/// cannot be asked at start-up.
const ETCD_DEFAULT_MIN_TTL_SECS: i64 = 2;

/// Interval of HTTP/2 pings on the etcd connection. etcd refuses clients
/// that ping more often than its `--grpc-keepalive-min-time` (5 s default).
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(10);

/// The etcd backend. Cloning is cheap; clones share one connection.
#[derive(Clone)]
pub struct EtcdBackend {
    inner: Arc<Inner>,
}

/// Everything the backend's operations share.
struct Inner {
    client: Client,
    batcher: Batcher,
    layout: Layout,
    /// Longest wait for one etcd call.
    timeout: Duration,
    min_ttl_secs: i64,
    max_ttl_secs: i64,
    max_waiters: usize,
    /// How long a shared result is kept for the sharing waiters queued at its
    /// release before its lease is revoked.
    result_retention: Duration,
    metrics: Arc<Metrics>,
    /// The one clock every time-dependent step reads: lease deadlines, wait
    /// deadlines, keep-alive intervals, lease freshness in the pool.
    clock: Clock,
    /// True once [`Backend::close`] ran; waiters watch it.
    closed: tokio::sync::watch::Sender<bool>,
    local: LocalLeases,
    pool: LeasePool,
    tasks: Tasks,
    /// Why the last etcd call failed, while no call has succeeded since.
    trouble: Mutex<Option<String>>,
    troubled: AtomicBool,
}

/// Seconds an etcd lease is granted beyond the turnstile lease it carries.
///
/// A grant promises `ttl` from the moment before the etcd call that started or
/// restarted the lease's TTL. With this headroom, a lease restarted at most
/// this long before an acquire still covers the acquire's full TTL, so a
/// pooled lease in steady use needs no keep-alive per acquire (each costs
/// etcd as much as a write). The holder's sidecar ends the lease at its TTL
/// exactly (see "Expiry"); only if that sidecar is gone does etcd's TTL end
/// it, at most this much later.
const HEADROOM_SECS: i64 = 1;

/// A lease granted by etcd.
#[derive(Debug, Clone, Copy)]
struct EtcdLease {
    id: i64,
    /// The turnstile TTL it carries, in seconds: etcd's TTL less the headroom
    /// (etcd may raise a short request to its minimum).
    ttl: i64,
}

impl EtcdBackend {
    /// Connects to the etcd endpoints of `config` and learns etcd's minimum
    /// lease TTL. An unreachable etcd is not an error here: calls answer
    /// UNAVAILABLE until it is reachable, and the connection recovers by itself.
    pub async fn connect(config: &Config, metrics: Arc<Metrics>) -> Result<Self, BackendError> {
        Self::connect_with_clock(config, metrics, Clock::new()).await
    }

    /// [`EtcdBackend::connect`] on a given clock (tests drive it with tokio's
    /// paused time).
    pub async fn connect_with_clock(
        config: &Config,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Result<Self, BackendError> {
        let endpoints: Vec<&str> = config.etcd_endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(config.etcd_timeout)
            .with_keep_alive(HTTP2_PING_INTERVAL, config.etcd_timeout)
            .with_keep_alive_while_idle(true);
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|e| BackendError::Unavailable { reason: format!("etcd connect to {endpoints:?}: {e}") })?;
        let config_min = ceil_secs(config.min_ttl).max(1);
        let etcd_min = match probe_min_ttl(&client, config.etcd_timeout).await {
            Ok(min) => min,
            Err(e) => {
                tracing::warn!(
                    "cannot ask etcd for its minimum lease TTL ({e}); assuming {ETCD_DEFAULT_MIN_TTL_SECS} s, etcd's default"
                );
                ETCD_DEFAULT_MIN_TTL_SECS
            }
        };
        let min_ttl_secs = config_min.max(etcd_min);
        let inner = Inner {
            batcher: Batcher::start(client.clone(), config.etcd_timeout),
            client,
            layout: Layout::new(&config.etcd_prefix),
            timeout: config.etcd_timeout,
            min_ttl_secs,
            max_ttl_secs: i64::try_from(config.max_ttl.as_secs()).unwrap_or(i64::MAX).max(min_ttl_secs),
            max_waiters: config.max_waiters_per_key,
            result_retention: config.etcd_timeout * 4,
            metrics,
            clock,
            closed: tokio::sync::watch::channel(false).0,
            local: LocalLeases::new(clock),
            pool: LeasePool::default(),
            tasks: Tasks::default(),
            trouble: Mutex::new(None),
            troubled: AtomicBool::new(false),
        };
        tracing::info!(
            endpoints = ?endpoints,
            prefix = %config.etcd_prefix,
            min_ttl_secs = inner.min_ttl_secs,
            "etcd backend ready"
        );
        Ok(EtcdBackend { inner: Arc::new(inner) })
    }
}

impl Inner {
    fn check_open(&self) -> Result<(), BackendError> {
        if *self.closed.borrow() {
            return Err(BackendError::ShuttingDown);
        }
        Ok(())
    }

    /// Runs one etcd call with the call timeout, mapping failure to
    /// [`BackendError::Unavailable`] and keeping track of etcd's health.
    async fn call<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, BackendError> {
        let res = match tokio::time::timeout(self.timeout, fut).await {
            Ok(res) => res.map_err(CallError::Etcd),
            Err(_) => Err(CallError::TimedOut),
        };
        self.settle(what, res)
    }

    /// Maps the outcome of a timed etcd call.
    fn settle<T>(&self, what: &'static str, res: Result<T, CallError>) -> Result<T, BackendError> {
        match res {
            Ok(v) => {
                if self.troubled.load(Ordering::Relaxed) {
                    self.troubled.store(false, Ordering::Relaxed);
                    *self.trouble.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    tracing::info!("etcd answers again");
                }
                Ok(v)
            }
            Err(CallError::Etcd(e)) => Err(self.unavailable(what, &e)),
            Err(CallError::TimedOut) => Err(self.unavailable(what, &format!("no answer within {:?}", self.timeout))),
        }
    }

    fn unavailable(&self, what: &str, e: &dyn std::fmt::Display) -> BackendError {
        let reason = format!("etcd {what}: {e}");
        if !self.troubled.swap(true, Ordering::Relaxed) {
            tracing::warn!("{reason}");
        }
        *self.trouble.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        BackendError::Unavailable { reason }
    }

    /// The whole seconds of etcd lease TTL that cover `ttl`, within bounds.
    fn ttl_secs(&self, ttl: Duration) -> i64 {
        ceil_secs(ttl).clamp(self.min_ttl_secs, self.max_ttl_secs)
    }

    async fn grant_lease(&self, ttl: i64) -> Result<EtcdLease, BackendError> {
        let resp = self.call("lease grant", self.client.lease_client().grant(ttl + HEADROOM_SECS, None)).await?;
        if !resp.error().is_empty() {
            return Err(self.unavailable("lease grant", &resp.error()));
        }
        Ok(EtcdLease { id: resp.id(), ttl: (resp.ttl() - HEADROOM_SECS).max(ttl) })
    }

    /// Revokes a lease, deleting every key attached to it. False when it had
    /// already ended.
    async fn revoke(&self, id: i64) -> Result<bool, BackendError> {
        let res = match tokio::time::timeout(self.timeout, self.client.lease_client().revoke(id)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.code() == tonic::Code::NotFound => Ok(false),
            Ok(Err(e)) => Err(CallError::Etcd(e)),
            Err(_) => Err(CallError::TimedOut),
        };
        self.settle("lease revoke", res)
    }

    /// The remaining TTL of lease `id` carrying a turnstile lease of `ttl`
    /// seconds, in whole seconds rounded down (etcd's headroom taken off), or
    /// `None` when it has ended.
    async fn lease_ttl(&self, id: i64, ttl: i64) -> Result<Option<i64>, BackendError> {
        let resp = self.call("lease time-to-live", self.client.lease_client().time_to_live(id, None)).await?;
        let headroom = (resp.granted_ttl() - ttl).max(0);
        Ok((resp.ttl() >= 0).then_some((resp.ttl() - headroom).max(0)))
    }

    /// Revokes a lease off the reply path; failures leave it to expire by TTL.
    fn revoke_later(self: &Arc<Self>, id: i64) {
        let inner = self.clone();
        self.tasks.spawn(async move {
            if let Err(e) = inner.revoke(id).await {
                tracing::debug!(lease = id, "revoke failed, the lease will expire by its TTL: {e}");
            }
        });
    }

    /// Opens a watch on `key` (or every key under it) from revision `from`.
    async fn watch(
        &self,
        key: &[u8],
        prefix: bool,
        from: i64,
        skip: WatchFilterType,
    ) -> Result<WatchStream, BackendError> {
        let mut options = WatchOptions::new().with_start_revision(from).with_filters([skip]);
        if prefix {
            options = options.with_prefix();
        }
        self.call("watch", self.client.watch_client().watch(key.to_vec(), Some(options))).await
    }

    /// A transaction sent alone (reads; writes too large to share a request).
    async fn txn(&self, what: &'static str, txn: Txn) -> Result<TxnOutcome, BackendError> {
        self.call(what, self.client.kv_client().txn(txn)).await.map(TxnOutcome::from)
    }

    /// A write transaction touching only `key`'s etcd keys, sent with other
    /// calls' writes when etcd is busy (see `batch`).
    async fn write(&self, key: &str, what: &'static str, txn: Txn) -> Result<TxnOutcome, BackendError> {
        let res = self.batcher.run(key, txn, self.timeout).await;
        self.settle(what, res)
    }

    /// The holder entry of `key` (lowest create revision) and the number of
    /// entries, read in one linearizable transaction.
    async fn head(&self, key: &str) -> Result<(Option<KeyValue>, usize, i64), BackendError> {
        let queue = self.layout.queue(key);
        let resp = self.txn("read queue", Txn::new().and_then([first_op(&queue), count_op(&queue)])).await?;
        let (first, count) = head_of(&resp, 0);
        Ok((first, count, resp.revision))
    }
}

/// etcd's shortest lease TTL: it raises a 1 s request to it.
async fn probe_min_ttl(client: &Client, timeout: Duration) -> Result<i64, String> {
    let probe = async {
        let mut leases = client.lease_client();
        let lease = leases.grant(1, None).await?;
        leases.revoke(lease.id()).await?;
        Ok::<_, etcd_client::Error>(lease.ttl())
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(ttl)) => Ok(ttl),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Reads the holder entry of `queue`, sorted by create revision, first only.
fn first_op(queue: &[u8]) -> TxnOp {
    TxnOp::get(
        queue.to_vec(),
        Some(GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1)),
    )
}

/// Counts the entries of `queue`.
fn count_op(queue: &[u8]) -> TxnOp {
    TxnOp::get(queue.to_vec(), Some(GetOptions::new().with_prefix().with_count_only()))
}

/// Why an etcd call failed.
#[derive(Debug)]
enum CallError {
    /// etcd or the connection answered with an error.
    Etcd(etcd_client::Error),
    /// No answer within the call timeout.
    TimedOut,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Etcd(e) => e.fmt(f),
            CallError::TimedOut => f.write_str("no answer in time"),
        }
    }
}

/// A transaction's answer.
#[derive(Debug)]
struct TxnOutcome {
    /// Whether its compares held.
    succeeded: bool,
    /// The answers of the operations of the branch taken.
    ops: Vec<TxnOpResponse>,
    /// The store revision it ran at: for one that wrote, the revision of its
    /// writes (the create revision of the keys it created).
    revision: i64,
}

impl From<TxnResponse> for TxnOutcome {
    fn from(resp: TxnResponse) -> Self {
        TxnOutcome {
            succeeded: resp.succeeded(),
            ops: resp.op_responses(),
            revision: resp.header().map_or(0, |h| h.revision()),
        }
    }
}

/// The `(first entry, entry count)` answered by [`first_op`] and [`count_op`]
/// at op index `at` and `at + 1` of a transaction.
fn head_of(resp: &TxnOutcome, at: usize) -> (Option<KeyValue>, usize) {
    let ops = &resp.ops;
    let first = match ops.get(at) {
        Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
        _ => None,
    };
    let count = match ops.get(at + 1) {
        Some(TxnOpResponse::Get(g)) => usize::try_from(g.count()).unwrap_or(0),
        _ => 0,
    };
    (first, count)
}

/// The conditions under which an entry is still the one we know: same
/// create revision (token) and same lease.
fn entry_is(entry: &[u8], token: u64, lease: i64) -> [Compare; 2] {
    [
        Compare::create_revision(entry.to_vec(), CompareOp::Equal, token_rev(token)),
        Compare::lease(entry.to_vec(), CompareOp::Equal, lease),
    ]
}

/// A fencing token as the create revision it is.
fn token_rev(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(i64::MAX)
}

/// A create revision as a fencing token (revisions start at 1).
fn rev_token(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

/// Whole seconds as a duration.
fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> i64 {
    i64::try_from(crate::error::ceil_secs(d)).unwrap_or(i64::MAX)
}

/// Background tasks (lease revokes, result retention) that graceful
/// shutdown waits for.
#[derive(Default)]
struct Tasks {
    running: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

impl Tasks {
    /// Spawns `fut` on the current runtime, if there is one (a drop guard may
    /// run without one; then the lease expires by its TTL).
    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        self.running.fetch_add(1, Ordering::AcqRel);
        let (running, idle) = (self.running.clone(), self.idle.clone());
        handle.spawn(async move {
            fut.await;
            if running.fetch_sub(1, Ordering::AcqRel) == 1 {
                idle.notify_waiters();
            }
        });
    }

    /// Completes once no task is running.
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Backend for EtcdBackend {
    async fn acquire(&self, req: AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        acquire::acquire(&self.inner, req).await
    }

    async fn renew(&self, key: String, token: u64, ttl: Option<Duration>) -> Result<Grant, BackendError> {
        holders::renew(&self.inner, key, token, ttl).await
    }

    async fn release(&self, key: String, token: u64, result: Option<Vec<u8>>) -> Result<bool, BackendError> {
        holders::release(&self.inner, key, token, result).await
    }

    async fn get(&self, key: String) -> Result<LockInfo, BackendError> {
        inspect::get(&self.inner, &key).await
    }

    async fn list(&self, prefix: String, after: Option<String>, limit: usize) -> Result<Vec<LockInfo>, BackendError> {
        inspect::list(&self.inner, &prefix, after.as_deref(), limit).await
    }

    fn ttl_bounds(&self) -> TtlBounds {
        let secs = |s: i64| Duration::from_secs(u64::try_from(s).unwrap_or(0));
        TtlBounds { min: secs(self.inner.min_ttl_secs), max: secs(self.inner.max_ttl_secs) }
    }

    fn degraded(&self) -> Option<String> {
        self.inner.trouble.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|t| format!("etcd unreachable: {t}"))
    }

    fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    async fn shutdown(&self) -> Result<(), BackendError> {
        // Leases of holders are kept: a restarted or another sidecar serves them.
        // Waiters' entries were revoked as their calls ended; let those finish,
        // with the revokes of the pooled leases (which carry no key).
        for id in self.inner.pool.drain() {
            self.inner.revoke_later(id);
        }
        if tokio::time::timeout(self.inner.timeout * 2, self.inner.tasks.idle()).await.is_err() {
            tracing::warn!("some etcd lease revokes did not finish; those leases expire by their TTL");
        }
        Ok(())
    }
}
