//! Helpers of the etcd tests: sidecars over one real etcd, gRPC clients,
//! requests, and waiting for a state with a deadline (never a bare sleep).

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::Code;
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};
use turnstile_server::backend::etcd::proto::etcdserverpb::{kv_client::KvClient, RangeRequest};
use turnstile_testkit::{Etcd, Turnstiled};

pub(crate) type Client = LockServiceClient<Channel>;

/// The etcd call timeout the sidecars of these tests run with.
pub(crate) const ETCD_TIMEOUT: Duration = Duration::from_secs(1);
/// etcd's shortest lease (whole seconds, with its default election timeout).
pub(crate) const MIN_TTL: Duration = Duration::from_secs(2);
pub(crate) const LONG: Duration = Duration::from_secs(30);
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A `turnstiled --backend etcd` over `etcd`, with `extra` flags.
pub(crate) fn sidecar(etcd: &Etcd, extra: &[&str]) -> Turnstiled {
    let mut args = vec!["--backend".to_owned(), "etcd".into(), "--etcd-endpoints".into(), etcd.url()];
    args.extend(["--etcd-timeout".to_owned(), format!("{}ms", ETCD_TIMEOUT.as_millis())]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Turnstiled::start(args)
}

/// A gRPC client of `node`.
pub(crate) async fn client(node: &Turnstiled) -> Client {
    LockServiceClient::connect(node.url()).await.expect("connect to turnstiled")
}

/// A protobuf duration.
pub(crate) fn pd(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
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

/// Acquires and expects a grant.
pub(crate) async fn must_acquire(c: &mut Client, req: v1::AcquireRequest) -> v1::Lease {
    let key = req.key.clone();
    let r = c.acquire(req).await.expect("acquire call").into_inner();
    assert!(r.acquired, "expected a grant of {key}, got {r:?}");
    r.lease.expect("lease set when acquired")
}

/// Releases and expects the lease was live.
pub(crate) async fn must_release(c: &mut Client, lease: &v1::Lease) {
    let r = c
        .release(v1::ReleaseRequest { key: lease.key.clone(), fencing_token: lease.fencing_token, result: None })
        .await
        .expect("release call")
        .into_inner();
    assert!(r.released, "release of {lease:?} found it ended");
}

/// The state of `key`.
pub(crate) async fn get(c: &mut Client, key: &str) -> v1::LockInfo {
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

/// Waits until `key` has exactly `n` waiters. A probe answered UNAVAILABLE
/// (etcd slow to answer a read on a busy machine) counts as "not yet": what
/// the callers test is the waiters' outcome, not that every probe is served.
pub(crate) async fn await_waiters(c: &Client, key: &str, n: u32) {
    eventually(&format!("{key} has {n} waiters"), Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            match c.get_lock(v1::GetLockRequest { key: key.into() }).await {
                Ok(info) => info.into_inner().waiters == n,
                Err(e) if e.code() == Code::Unavailable => false,
                Err(e) => panic!("get_lock {key}: {e:?}"),
            }
        }
    })
    .await;
}

/// The etcd lease of `owner`'s queue entry of `key`, under the default
/// prefix, read straight from etcd (layout: `turnstile/ \0 key \0 q <nonce>`).
pub(crate) async fn entry_lease(etcd: &Channel, key: &str, owner: &str) -> i64 {
    // Every key that starts with `… \0 q`: up to `… \0 r`.
    let (queue, end) = (format!("turnstile/\0{key}\0q"), format!("turnstile/\0{key}\0r"));
    let range = RangeRequest { key: queue.into_bytes(), range_end: end.into_bytes(), ..RangeRequest::default() };
    let resp = KvClient::new(etcd.clone()).range(range).await.expect("read the queue from etcd").into_inner();
    let needle = format!("\"owner\":\"{owner}\"");
    let kv = resp
        .kvs
        .iter()
        .find(|kv| String::from_utf8_lossy(&kv.value).contains(&needle))
        .unwrap_or_else(|| panic!("no queue entry of {owner} under {key:?}"));
    kv.lease
}

/// A gRPC channel straight to `etcd`, for etcd's own clients
/// ([`turnstile_server::backend::etcd::proto`]).
pub(crate) async fn etcd_channel(etcd: &Etcd) -> Channel {
    Channel::from_shared(etcd.url()).expect("etcd's URL").connect().await.expect("connect to etcd")
}

/// Acquires once the sidecar can reach etcd again: UNAVAILABLE answers are
/// retried every few milliseconds until `within` has passed.
pub(crate) async fn acquire_when_served(c: &Client, req: v1::AcquireRequest, within: Duration) -> v1::Lease {
    let deadline = Instant::now() + within;
    loop {
        match c.clone().acquire(req.clone()).await {
            Ok(r) => {
                let r = r.into_inner();
                assert!(r.acquired, "expected a grant of {}, got {r:?}", req.key);
                return r.lease.expect("lease set when acquired");
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(Instant::now() < deadline, "not served again within {within:?}: {e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
