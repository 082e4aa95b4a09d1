//! [`Fixture`]: how the suite starts a coordinator over one backend's state,
//! and the helpers the tests share.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};
use turnstile_testkit::{TempDir, Turnstiled};

pub(crate) use crate::node::Node;

/// One backend's way of running a coordinator.
pub(crate) trait Fixture: Sync {
    /// Starts a coordinator with `turnstiled`'s flags `extra_args` over this
    /// fixture's state: every call sees the same locks (same data dir, same
    /// etcd), as a restart or another sidecar would.
    fn start(&self, extra_args: &[&str]) -> Node;

    /// A short TTL this backend grants exactly (tests of expiry use it).
    fn short_ttl(&self) -> Duration;

    /// Whether a crash of the coordinator forgets leases and holds grants
    /// back until they have expired (memory), or leases live outside it (etcd).
    fn crash_holds_grants(&self) -> bool;
}

/// Where a fixture runs the server.
#[derive(Debug, Clone, Copy)]
enum Run {
    /// In the test process: [`turnstile_server::server::run`] on port-0 listeners.
    InProcess,
    /// As a `turnstiled` child process.
    Process,
}

/// The memory backend, with a data dir shared by every start.
pub(crate) struct Memory {
    dir: TempDir,
    run: Run,
}

impl Memory {
    /// Each start is the server in the test process (fast, debuggable).
    pub(crate) fn in_process() -> Self {
        Memory { dir: TempDir::new("conformance"), run: Run::InProcess }
    }

    /// Each start is a `turnstiled` process (real signals and exit codes).
    pub(crate) fn process() -> Self {
        Memory { dir: TempDir::new("conformance"), run: Run::Process }
    }
}

impl Fixture for Memory {
    fn start(&self, extra_args: &[&str]) -> Node {
        let dir = self.dir.path().to_str().expect("utf-8 temp path").to_owned();
        // A small horizon step keeps crash-recovery waits short in tests.
        let mut args = vec!["--data-dir".to_owned(), dir, "--horizon-step".into(), "100ms".into()];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        match self.run {
            Run::InProcess => crate::node::memory_in_process(&args),
            Run::Process => Node::Process(Turnstiled::start(args)),
        }
    }

    fn short_ttl(&self) -> Duration {
        Duration::from_millis(200)
    }

    fn crash_holds_grants(&self) -> bool {
        true
    }
}

/// The etcd backend: a real etcd started for the fixture (free loopback
/// ports, temporary data dir); every start is a sidecar over it, so restarts
/// and other sidecars see the same locks.
pub(crate) struct Etcd {
    etcd: turnstile_testkit::Etcd,
}

impl Etcd {
    pub(crate) fn new() -> Self {
        Etcd { etcd: turnstile_testkit::Etcd::start() }
    }
}

impl Fixture for Etcd {
    fn start(&self, extra_args: &[&str]) -> Node {
        let mut args = vec!["--backend".to_owned(), "etcd".into(), "--etcd-endpoints".into(), self.etcd.url()];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        Node::Process(Turnstiled::start(args))
    }

    fn short_ttl(&self) -> Duration {
        // etcd's shortest lease with its default election timeout.
        Duration::from_secs(2)
    }

    fn crash_holds_grants(&self) -> bool {
        false
    }
}

/// A gRPC client of `node`.
pub(crate) async fn client(node: &Node) -> LockServiceClient<Channel> {
    LockServiceClient::connect(node.url()).await.expect("connect to turnstiled")
}

/// A protobuf duration.
pub(crate) fn pd(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// A `std` duration from a protobuf one.
pub(crate) fn sd(d: Option<prost_types::Duration>) -> Duration {
    let d = d.expect("duration set");
    Duration::new(d.seconds as u64, d.nanos as u32)
}

/// An Acquire request.
pub(crate) fn acquire(key: &str, owner: &str, ttl: Duration, wait: Duration) -> v1::AcquireRequest {
    v1::AcquireRequest {
        key: key.into(),
        owner: owner.into(),
        ttl: Some(pd(ttl)),
        wait_timeout: Some(pd(wait)),
        share_result: false,
    }
}

/// Acquires and expects a grant; returns the lease.
pub(crate) async fn must_acquire(c: &mut LockServiceClient<Channel>, req: v1::AcquireRequest) -> v1::Lease {
    let key = req.key.clone();
    let r = c.acquire(req).await.expect("acquire call").into_inner();
    assert!(r.acquired, "expected a grant of {key}, got {r:?}");
    r.lease.expect("lease set when acquired")
}

/// Releases and expects the lease was live.
pub(crate) async fn must_release(c: &mut LockServiceClient<Channel>, lease: &v1::Lease) {
    let r = c
        .release(v1::ReleaseRequest { key: lease.key.clone(), fencing_token: lease.fencing_token, result: None })
        .await
        .expect("release call")
        .into_inner();
    assert!(r.released, "release of {lease:?} found it ended");
}

/// The state of `key`.
pub(crate) async fn get(c: &mut LockServiceClient<Channel>, key: &str) -> v1::LockInfo {
    c.get_lock(v1::GetLockRequest { key: key.into() }).await.expect("get_lock").into_inner()
}

/// Polls `check` every few milliseconds until it holds, failing after `within`.
pub(crate) async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `key` has exactly `n` waiters.
pub(crate) async fn await_waiters(c: &LockServiceClient<Channel>, key: &str, n: u32) {
    eventually(&format!("{key} has {n} waiters"), Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { get(&mut c, key).await.waiters == n }
    })
    .await;
}
