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
//! - this file: [`EtcdBackend`], and the one place etcd calls get their
//!   timeout and their mapping to [`BackendError`]. Every time the backend
//!   reads or sleeps until comes from one [`Clock`], given at construction
//!   ([`EtcdBackend::connect_with_clock`]).
//! - `client`: the connection and the etcd calls, over etcd's generated
//!   clients: a transaction builder whose answers are read through the
//!   handles its reads gave out, never by position; watches; lease
//!   keep-alive streams. The only module that builds etcd requests.
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
//! - `secure`: TLS towards etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`),
//!   the credentials of `--etcd-user`, the start-up handshake check, and
//!   etcd's failures in words. The auth token itself rides on every call
//!   from `client` (an interceptor), fetched again when etcd refuses it.
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

use tokio::sync::Notify;

use super::{AcquireOutcome, AcquireRequest, Backend, ForceReleased, Grant, LockInfo, TtlBounds};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::BackendError;
use crate::telemetry::Metrics;

mod acquire;
mod batch;
mod client;
mod holders;
mod inspect;
mod layout;
mod leases;
pub mod proto;
mod secure;

use batch::Batcher;
use client::{
    Branch, CallError, Cond, ConnectOptions, EtcdClient, Get, KeyValue, Read, Skip, SortOrder, SortTarget, Txn,
    TxnAnswer, Watch,
};
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
    client: EtcdClient,
    batcher: Batcher,
    layout: Layout,
    /// Longest wait for one etcd call.
    timeout: Duration,
    min_ttl_secs: i64,
    max_ttl_secs: i64,
    max_waiters: usize,
    /// Waiters parked in this sidecar across all keys (`--max-waiters`).
    waiter_slots: Arc<crate::backend::WaiterSlots>,
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

/// Why the etcd backend could not start: settings that cannot work (a TLS
/// file that does not load, a certificate etcd does not take or that is not
/// trusted, a wrong password), each named with its endpoint or flag.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(String);

impl ConnectError {
    fn new(reason: String) -> Self {
        ConnectError(reason)
    }
}

/// What a start-up check of one endpoint found wrong.
enum Check {
    /// Settings that will not work until they are changed.
    Fatal(String),
    /// etcd down or slow: calls answer UNAVAILABLE until it is back.
    Transient(String),
}

impl EtcdBackend {
    /// Connects to the etcd endpoints of `config` and learns etcd's minimum
    /// lease TTL. Each endpoint is tried once: a TLS certificate that does
    /// not fit, a wrong password, or an etcd that demands credentials none
    /// were given for is an error naming the endpoint. An unreachable etcd is
    /// not: calls answer UNAVAILABLE until it is reachable, and the
    /// connection recovers by itself.
    pub async fn connect(config: &Config, metrics: Arc<Metrics>) -> Result<Self, ConnectError> {
        Self::connect_with_clock(config, metrics, Clock::new()).await
    }

    /// The leases this sidecar granted or last renewed and still counts as
    /// live: not released, not run out by its own count. A lease renewed
    /// through another sidecar stays counted here until the TTL this sidecar
    /// promised runs out. The `turnstile_leases_held` gauge.
    pub fn leases_held(&self) -> usize {
        self.inner.local.len()
    }

    /// [`EtcdBackend::connect`] on a given clock (tests drive it with tokio's
    /// paused time).
    pub async fn connect_with_clock(
        config: &Config,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Result<Self, ConnectError> {
        let endpoints: Vec<&str> = config.etcd_endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
        let options = ConnectOptions {
            timeout: config.etcd_timeout,
            ping_interval: HTTP2_PING_INTERVAL,
            tls: secure::client_tls(config)?,
            credentials: secure::Credentials::of(config)?,
        };
        if let (Some(c), None) = (&options.credentials, &options.tls) {
            tracing::warn!(user = %c.user, "--etcd-user over http://: the password and etcd's token cross the network in the clear");
        }
        let layout = Layout::new(&config.etcd_prefix);
        check_endpoints(&endpoints, &options, &layout, &config.etcd_prefix).await?;
        let client = EtcdClient::new(&endpoints, &options).map_err(|e| ConnectError::new(e.to_string()))?;
        if let Some(c) = &options.credentials {
            match tokio::time::timeout(config.etcd_timeout, client.authenticate()).await {
                Ok(Ok(())) => {}
                Ok(Err(e @ CallError::Authenticate { .. })) => return Err(ConnectError::new(format!("etcd: {e}"))),
                Ok(Err(e)) => {
                    tracing::warn!(user = %c.user, "cannot authenticate to etcd yet ({e}); retrying at each call")
                }
                Err(_) => {
                    tracing::warn!(user = %c.user, "cannot authenticate to etcd yet (no answer); retrying at each call")
                }
            }
        }
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
            layout,
            timeout: config.etcd_timeout,
            min_ttl_secs,
            max_ttl_secs: i64::try_from(config.max_ttl.as_secs()).unwrap_or(i64::MAX).max(min_ttl_secs),
            max_waiters: config.max_waiters_per_key,
            waiter_slots: crate::backend::WaiterSlots::new(config.max_waiters),
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
        fut: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, BackendError> {
        let res = tokio::time::timeout(self.timeout, fut).await.unwrap_or(Err(CallError::TimedOut));
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
            Err(CallError::TimedOut) => Err(self.unavailable(what, &format!("no answer within {:?}", self.timeout))),
            Err(e) => Err(self.unavailable(what, &e)),
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
        let resp = self.call("lease grant", self.client.grant(ttl + HEADROOM_SECS)).await?;
        if !resp.error.is_empty() {
            return Err(self.unavailable("lease grant", &resp.error));
        }
        Ok(EtcdLease { id: resp.id, ttl: (resp.ttl - HEADROOM_SECS).max(ttl) })
    }

    /// Revokes a lease, deleting every key attached to it. False when it had
    /// already ended.
    async fn revoke(&self, id: i64) -> Result<bool, BackendError> {
        let res = match tokio::time::timeout(self.timeout, self.client.revoke(id)).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(CallError::Status(s))) if s.code() == tonic::Code::NotFound => Ok(false),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CallError::TimedOut),
        };
        self.settle("lease revoke", res)
    }

    /// The remaining TTL of lease `id` carrying a turnstile lease of `ttl`
    /// seconds, in whole seconds rounded down (etcd's headroom taken off), or
    /// `None` when it has ended.
    async fn lease_ttl(&self, id: i64, ttl: i64) -> Result<Option<i64>, BackendError> {
        let resp = self.call("lease time-to-live", self.client.time_to_live(id)).await?;
        let headroom = (resp.granted_ttl - ttl).max(0);
        Ok((resp.ttl >= 0).then_some((resp.ttl - headroom).max(0)))
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
    async fn watch(&self, key: &[u8], prefix: bool, from: i64, skip: Skip) -> Result<Watch, BackendError> {
        self.call("watch", self.client.watch(key, prefix, from, skip)).await
    }

    /// A transaction sent alone (reads; writes too large to share a request).
    async fn txn(&self, what: &'static str, txn: Txn) -> Result<TxnAnswer, BackendError> {
        self.call(what, self.client.txn(&txn)).await
    }

    /// A write transaction touching only `key`'s etcd keys, sent with other
    /// calls' writes when etcd is busy (see `batch`).
    async fn write(&self, key: &str, what: &'static str, txn: Txn) -> Result<TxnAnswer, BackendError> {
        let res = self.batcher.run(key, txn, self.timeout).await;
        self.settle(what, res)
    }

    /// The holder entry of `key` (lowest create revision) and the number of
    /// entries, read in one linearizable transaction.
    async fn head(&self, key: &str) -> Result<(Option<KeyValue>, usize, i64), BackendError> {
        let mut txn = Txn::new();
        let head = Head::read(&mut txn, Branch::Then, &self.layout.queue(key));
        let resp = self.txn("read queue", txn).await?;
        let (first, count) = head.of(&resp);
        Ok((first, count, resp.revision))
    }
}

/// Tries each endpoint once, on a connection of its own: authenticates
/// (with credentials) and reads the prefix. Settings that cannot work are an
/// error naming the endpoint; an endpoint that does not answer is logged.
async fn check_endpoints(
    endpoints: &[&str],
    options: &ConnectOptions,
    layout: &Layout,
    prefix: &str,
) -> Result<(), ConnectError> {
    let (start, end) = layout.list_range("", None);
    let checks: Vec<_> = endpoints
        .iter()
        .map(|&e| {
            let (e, options, prefix) = (e.to_owned(), options.clone(), prefix.to_owned());
            let probe = Get::range(start.clone(), end.clone()).count_only();
            tokio::spawn(async move {
                let check = check_endpoint(&e, &options, probe, &prefix).await;
                (e, check)
            })
        })
        .collect();
    for check in checks {
        match check.await {
            Ok((_, Ok(()))) => {}
            Ok((e, Err(Check::Fatal(reason)))) => return Err(ConnectError::new(format!("etcd {e}: {reason}"))),
            Ok((e, Err(Check::Transient(reason)))) => {
                tracing::warn!(endpoint = %e, "etcd does not answer yet: {reason}; calls answer UNAVAILABLE until it does")
            }
            Err(join) => return Err(ConnectError::new(format!("checking the etcd endpoints: {join}"))),
        }
    }
    Ok(())
}

async fn check_endpoint(endpoint: &str, options: &ConnectOptions, probe: Get, prefix: &str) -> Result<(), Check> {
    if let (Some(tls), true) = (&options.tls, endpoint.to_ascii_lowercase().starts_with("https://")) {
        match secure::check_handshake(endpoint, tls, options.timeout).await {
            Ok(()) => {}
            Err(Some(words)) => return Err(Check::Fatal(words)),
            // Unreachable: the gRPC call below says how.
            Err(None) => {}
        }
    }
    let client = EtcdClient::new(&[endpoint], options).map_err(|e| Check::Fatal(e.to_string()))?;
    let check = async {
        client.authenticate().await?;
        client.get(probe).await
    };
    let err = match tokio::time::timeout(options.timeout, check).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e,
        Err(_) => return Err(Check::Transient(format!("no answer within {:?}", options.timeout))),
    };
    let user = options.credentials.as_ref().map(|c| c.user.as_str());
    Err(match (&err, user) {
        (CallError::Authenticate { .. }, _) => Check::Fatal(err.to_string()),
        (CallError::Status(s), _) if secure::tls_failure(s).is_some() => Check::Fatal(err.to_string()),
        (CallError::Status(s), None) if s.message().contains("user name is empty") => Check::Fatal(
            "etcd has authentication enabled: give --etcd-user and its password (--etcd-password-file)".into(),
        ),
        (CallError::Status(s), Some(user)) if s.code() == tonic::Code::PermissionDenied => Check::Fatal(format!(
            "etcd user {user:?} may not read the prefix {prefix:?}: grant its role readwrite on it"
        )),
        _ => Check::Transient(err.to_string()),
    })
}

/// etcd's shortest lease TTL: it raises a 1 s request to it.
async fn probe_min_ttl(client: &EtcdClient, timeout: Duration) -> Result<i64, String> {
    let probe = async {
        let lease = client.grant(1).await?;
        client.revoke(lease.id).await?;
        Ok::<_, CallError>(lease.ttl)
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(ttl)) => Ok(ttl),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// The head of a queue in a transaction: its holder entry (lowest create
/// revision) and its number of entries.
#[derive(Debug, Clone, Copy)]
struct Head {
    first: Read,
    count: Read,
}

impl Head {
    /// Reads the head of `queue` in `branch` of `txn`.
    fn read(txn: &mut Txn, branch: Branch, queue: &[u8]) -> Self {
        Head { first: txn.read(branch, first_entry(queue)), count: txn.read(branch, Get::prefix(queue).count_only()) }
    }

    /// The holder entry and the number of entries, as `resp` answers them
    /// (none when their branch did not run).
    fn of(&self, resp: &TxnAnswer) -> (Option<KeyValue>, usize) {
        (resp.first(self.first).cloned(), usize::try_from(resp.count(self.count)).unwrap_or(0))
    }
}

/// Reads the holder entry of `queue`: sorted by create revision, first only.
fn first_entry(queue: &[u8]) -> Get {
    Get::prefix(queue).sorted(SortTarget::Create, SortOrder::Ascend).limit(1)
}

/// The conditions under which an entry is still the one we know: same
/// create revision (token) and same lease.
fn entry_is(entry: &[u8], token: u64, lease: i64) -> [Cond; 2] {
    [Cond::created_at(entry, token_rev(token)), Cond::on_lease(entry, lease)]
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

    async fn release(
        &self,
        key: String,
        token: u64,
        result: Option<prost::bytes::Bytes>,
    ) -> Result<bool, BackendError> {
        holders::release(&self.inner, key, token, result.map(|r| r.to_vec())).await
    }

    async fn force_release(&self, key: String, token: Option<u64>) -> Result<ForceReleased, BackendError> {
        holders::force_release(&self.inner, key, token).await
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

#[cfg(test)]
mod tests {
    //! What a client is told when etcd cannot be reached.

    use clap::Parser;

    use super::*;

    /// UNAVAILABLE while etcd refuses connections says so in words (which
    /// etcd call, and why), not as a dump of the transport's error.
    #[tokio::test]
    async fn an_unreachable_etcd_is_unavailable_in_words() {
        let refused = turnstile_testkit::RefusedPort::new();
        let url = refused.url();
        let config =
            Config::parse_from(["turnstiled", "--backend", "etcd", "--etcd-endpoints", &url, "--etcd-timeout", "2s"]);
        let backend =
            EtcdBackend::connect_with_clock(&config, Arc::new(Metrics::new()), Clock::new()).await.expect("lazy");
        let err = backend.get("k".into()).await.expect_err("etcd is not there");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let message = status.message();
        assert!(message.contains("connection refused"), "{message}");
        for debris in ["os error", "Status {", "ConnectError", "source:", "Unavailable:"] {
            assert!(!message.contains(debris), "no {debris:?} in {message:?}");
        }
    }
}
