//! Bounded resources, whatever a client does (docs/design.md "Limits"):
//! each bound of the server shown holding on real sockets. The server runs
//! in the test's own runtime under tokio's paused clock, so every timeout
//! here is virtual time: deterministic, and never asserted against a wall
//! clock.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};
use turnstile_server::backend::memory::MemoryBackend;
use turnstile_server::config::Config;
use turnstile_server::server::run;
use turnstile_server::telemetry::Metrics;

#[path = "support/raw_h2.rs"]
mod raw_h2;
use raw_h2::start_call;

/// A server in the test's runtime; stopped when dropped (its task aborted).
struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(&self) -> LockServiceClient<Channel> {
        LockServiceClient::connect(self.url()).await.expect("connect")
    }

    /// A raw HTTP/2 connection; `window` is the stream window it grants the
    /// server (0: the server can send no response body at all).
    async fn raw(&self, window: u32) -> h2::client::SendRequest<Bytes> {
        let tcp = TcpStream::connect(self.addr).await.expect("connect raw");
        let (h2, conn) =
            h2::client::Builder::new().initial_window_size(window).handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        h2.ready().await.expect("h2 ready")
    }
}

/// Serves the memory backend (no data dir) with turnstiled's flags `args`.
async fn serve(args: &[&str]) -> Server {
    let argv = ["turnstiled", "--data-dir", ""].iter().chain(args).copied();
    let config = Config::try_parse_from(argv).expect("flags");
    config.validate().expect("valid flags");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let metrics = Arc::new(Metrics::new());
    let backend = Arc::new(MemoryBackend::start(&config, metrics.clone()).expect("backend"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        run(backend, &config, metrics, Box::new(|| None), grpc, http, shutdown).await.expect("server");
    });
    Server { addr, _stop: stop, task }
}

fn pd(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn acquire(key: &str, owner: &str, wait: Duration, share_result: bool) -> v1::AcquireRequest {
    v1::AcquireRequest {
        key: key.into(),
        owner: owner.into(),
        ttl: Some(pd(Duration::from_secs(600))),
        wait_timeout: Some(pd(wait)),
        share_result,
    }
}

async fn grant(c: &mut LockServiceClient<Channel>, key: &str) -> v1::Lease {
    let r = c.acquire(acquire(key, "holder", Duration::ZERO, false)).await.expect("acquire").into_inner();
    assert!(r.acquired, "{key} is free");
    r.lease.expect("lease")
}

/// Polls `key` until it has `n` waiters (each poll a real call; virtual time).
async fn await_waiters(c: &mut LockServiceClient<Channel>, key: &str, n: u32) {
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if c.get_lock(v1::GetLockRequest { key: key.into() }).await.expect("get").into_inner().waiters == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{key} never had {n} waiters");
}

/// The status a response's headers carry (a trailers-only answer), if any.
fn header_status(resp: &tonic::codegen::http::Response<h2::RecvStream>) -> Option<tonic::Status> {
    tonic::Status::from_header_map(resp.headers())
}

/// Locks `n` keys of 500 bytes, so that a ListLocks page is large.
async fn long_keys(c: &mut LockServiceClient<Channel>, n: usize) {
    for i in 0..n {
        grant(c, &format!("{i:03}{}", "k".repeat(497))).await;
    }
}

fn list(page_size: u32) -> v1::ListLocksRequest {
    v1::ListLocksRequest { prefix: String::new(), page_size, page_token: String::new() }
}

/// The HTTP/2 stream limit is sent in SETTINGS: a client cannot open more
/// calls on one connection than `--max-concurrent-streams` (tonic's default
/// is no limit at all).
#[tokio::test(start_paused = true)]
async fn streams_per_connection_are_limited() {
    let s = serve(&["--max-concurrent-streams", "7"]).await;
    let mut h2 = s.raw(0).await;
    // The server's SETTINGS arrive with the first exchange.
    let (resp, _send) = start_call(&mut h2, "turnstile", "GetLock", &v1::GetLockRequest { key: "k".into() });
    resp.await.expect("answered");
    assert_eq!(h2.current_max_send_streams(), 7);
    let s = serve(&[]).await;
    let mut h2 = s.raw(0).await;
    let (resp, _send) = start_call(&mut h2, "turnstile", "GetLock", &v1::GetLockRequest { key: "k".into() });
    resp.await.expect("answered");
    assert_eq!(h2.current_max_send_streams(), 100, "the default");
}

/// ListLocks pages that a client does not read (its window is zero) hold
/// their bytes of --max-response-bytes-in-flight; past it, ListLocks calls
/// are shed with RESOURCE_EXHAUSTED (OVERLOADED) instead of piling up in
/// memory. When the client's connection closes, the bytes are free again.
#[tokio::test(start_paused = true)]
async fn unread_list_pages_are_bounded_by_the_response_budget() {
    let budget = 64 * 1024;
    let s = serve(&["--max-response-bytes-in-flight", &budget.to_string()]).await;
    let mut c = s.client().await;
    long_keys(&mut c, 10).await;
    let page = prost::Message::encoded_len(&c.list_locks(list(10)).await.expect("list").into_inner());
    assert!(page > 5_000, "a page of 10 long keys is {page} bytes");

    let mut h2 = s.raw(0).await;
    let mut unread = Vec::new();
    let shed = loop {
        // Under the 100 streams a connection may open, or the next would wait forever.
        assert!(unread.len() < 90, "never shed: {} pages of {page} bytes held unread", unread.len());
        let (resp, send) = start_call(&mut h2, "turnstile", "ListLocks", &list(10));
        let resp = resp.await.expect("answered");
        if let Some(status) = header_status(&resp) {
            break status;
        }
        unread.push((resp, send));
    };
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert_eq!(shed.get_details_error_info().expect("ErrorInfo").reason, "OVERLOADED");
    assert!(unread.len() * page <= budget, "{} pages of {page} bytes held, budget {budget}", unread.len());
    assert!(!unread.is_empty());

    // The reading client is shed too while the budget is held...
    let e = c.list_locks(list(10)).await.expect_err("shed");
    assert_eq!(e.code(), Code::ResourceExhausted);
    // ...and served once the connection holding it is gone.
    drop((unread, h2));
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match c.list_locks(list(10)).await {
            Ok(r) => break assert_eq!(r.into_inner().locks.len(), 10),
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(e) => panic!("the budget never came back: {e:?}"),
        }
    }
}

/// A shared result handed to many waiters is encoded for only as many of
/// them at once as --max-response-bytes-in-flight has room for: the others
/// wait for room, and get it when an unread response's connection closes.
#[tokio::test(start_paused = true)]
async fn shared_results_in_flight_are_bounded_by_the_response_budget() {
    let s = serve(&["--max-response-bytes-in-flight", "65536"]).await;
    let mut c = s.client().await;
    let lease = grant(&mut c, "fetch").await;
    // Three sharing waiters, each on a connection that never reads.
    let mut waiters = Vec::new();
    for i in 0..3 {
        let mut h2 = s.raw(0).await;
        let (resp, send) = start_call(
            &mut h2,
            "turnstile",
            "Acquire",
            &acquire("fetch", &format!("w{i}"), Duration::from_secs(300), true),
        );
        waiters.push((h2, Some(resp), send));
        await_waiters(&mut c, "fetch", i + 1).await;
    }
    let result = Bytes::from(vec![7u8; 40 * 1024]);
    let release = v1::ReleaseRequest { key: "fetch".into(), fencing_token: lease.fencing_token, result: Some(result) };
    assert!(c.release(release).await.expect("release").into_inner().released);

    // One 40 KiB answer fits in 64 KiB; it is not read, so it stays in flight.
    let mut answered = None;
    for (i, (_, resp, _)) in waiters.iter_mut().enumerate() {
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(30), resp.as_mut().expect("pending")).await {
            assert!(header_status(&r.expect("answered")).is_none(), "answered OK");
            answered = Some(i);
            resp.take();
            break;
        }
    }
    let first = answered.expect("one sharer answered");
    for (i, (_, resp, _)) in waiters.iter_mut().enumerate() {
        if let Some(resp) = resp.as_mut() {
            assert!(
                tokio::time::timeout(Duration::from_secs(30), resp).await.is_err(),
                "sharer {i} was answered while {first}'s unread answer holds the budget"
            );
        }
    }
    // The unread connection goes: the next sharer gets the room.
    let (h2, _, send) = waiters.remove(first);
    drop((h2, send));
    let mut next = waiters.into_iter().filter_map(|(h2, resp, send)| Some((h2, resp?, send))).collect::<Vec<_>>();
    let (_h2, resp, _send) = next.remove(0);
    let r = tokio::time::timeout(Duration::from_secs(30), resp).await.expect("room again").expect("answered");
    assert!(header_status(&r).is_none());
}

/// --max-waiters bounds parked waiters across all keys: one more, on any
/// key, is RESOURCE_EXHAUSTED with TOO_MANY_WAITERS and the limit; a
/// try-lock and a grant of a free key need no room and still go through.
#[tokio::test(start_paused = true)]
async fn waiters_across_all_keys_are_limited() {
    let s = serve(&["--max-waiters", "3"]).await;
    let mut c = s.client().await;
    let mut parked = Vec::new();
    for i in 0..4 {
        grant(&mut c, &format!("k{i}")).await;
    }
    for i in 0..3 {
        let mut w = c.clone();
        let key = format!("k{i}");
        parked.push(tokio::spawn(async move { w.acquire(acquire(&key, "w", Duration::from_secs(300), false)).await }));
        await_waiters(&mut c, &format!("k{i}"), 1).await;
    }
    let e = c.acquire(acquire("k3", "w", Duration::from_secs(300), false)).await.expect_err("refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let info = e.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "TOO_MANY_WAITERS");
    assert_eq!(info.metadata.get("limit").map(String::as_str), Some("3"));
    assert_eq!(c.get_lock(v1::GetLockRequest { key: "k3".into() }).await.expect("get").into_inner().waiters, 0);
    // No room is needed for a try-lock, nor for a wait on a free key.
    let r = c.acquire(acquire("k3", "w", Duration::ZERO, false)).await.expect("try-lock").into_inner();
    assert!(!r.acquired);
    let r = c.acquire(acquire("free", "w", Duration::from_secs(300), false)).await.expect("free key").into_inner();
    assert!(r.acquired);
    // A waiter leaves: room for one more.
    parked.remove(0).abort();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match c.acquire(acquire("k3", "w", Duration::from_millis(10), false)).await {
            Ok(r) => break assert!(!r.into_inner().acquired, "timed out, having waited"),
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(e) => panic!("the slot never came back: {e:?}"),
        }
    }
}

/// --max-concurrent-calls sheds short calls past the limit with
/// RESOURCE_EXHAUSTED (OVERLOADED); parked waiters do not count against it,
/// and Release and Renew are never shed, so a lock can always be freed.
#[tokio::test(start_paused = true)]
async fn short_calls_are_shed_but_waiters_releases_and_renewals_are_not() {
    let s = serve(&["--max-concurrent-calls", "2"]).await;
    let mut c = s.client().await;
    let lease = grant(&mut c, "busy").await;
    // Five parked waiters: more than the limit, none counted.
    let mut parked = Vec::new();
    for i in 0..5 {
        let mut w = c.clone();
        parked.push(tokio::spawn(async move {
            w.acquire(acquire("busy", &format!("w{i}"), Duration::from_secs(300), false)).await
        }));
        await_waiters(&mut c, "busy", i + 1).await;
    }
    // Two calls whose answers are never read hold both places.
    let mut h2 = s.raw(0).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let (resp, send) = start_call(&mut h2, "turnstile", "ListLocks", &list(10));
        let resp = resp.await.expect("answered");
        assert!(header_status(&resp).is_none(), "served");
        held.push((resp, send));
    }
    let e = c.get_lock(v1::GetLockRequest { key: "busy".into() }).await.expect_err("shed");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(e.get_details_error_info().expect("ErrorInfo").reason, "OVERLOADED");
    assert!(e.get_details_retry_info().is_some());
    let e = c.acquire(acquire("other", "x", Duration::ZERO, false)).await.expect_err("shed");
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Renew and Release get through, and the release hands the lock on.
    let renew = v1::RenewRequest { key: "busy".into(), fencing_token: lease.fencing_token, ttl: None };
    c.renew(renew).await.expect("renew is never shed");
    let release = v1::ReleaseRequest { key: "busy".into(), fencing_token: lease.fencing_token, result: None };
    assert!(c.release(release).await.expect("release is never shed").into_inner().released);
    let first = parked.remove(0).await.expect("waiter task").expect("granted").into_inner();
    assert!(first.acquired && first.lease.expect("lease").owner == "w0");
    // The places come back when the unread answers go.
    drop((held, h2));
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match c.get_lock(v1::GetLockRequest { key: "busy".into() }).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(e) => panic!("the places never came back: {e:?}"),
        }
    }
}

/// The client preface and an empty SETTINGS frame: a connection that has
/// done its HTTP/2 handshake and then says nothing.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Reads (and drops) whatever the server sends until it closes the connection.
async fn until_closed(tcp: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A connection without a call in progress is closed after --idle-timeout;
/// one with a parked waiter is not.
#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed() {
    let s = serve(&["--idle-timeout", "30s", "--http2-keepalive-interval", "0s"]).await;
    let mut tcp = TcpStream::connect(s.addr).await.expect("connect");
    tcp.write_all(PREFACE).await.expect("preface");
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(3600), until_closed(&mut tcp))
        .await
        .expect("an idle connection is closed");
    assert!(start.elapsed() >= Duration::from_secs(30), "closed after {:?}", start.elapsed());

    // A waiter parked for 5 minutes (--max-wait) keeps its connection.
    let mut c = s.client().await;
    grant(&mut c, "held").await;
    let mut h2 = s.raw(65_535).await;
    let (resp, _send) =
        start_call(&mut h2, "turnstile", "Acquire", &acquire("held", "w", Duration::from_secs(300), false));
    await_waiters(&mut c, "held", 1).await;
    // The scenario: 200 s of (paused) time pass, far past the 30 s idle timeout.
    tokio::time::sleep(Duration::from_secs(200)).await;
    let info = c.get_lock(v1::GetLockRequest { key: "held".into() }).await.expect("get").into_inner();
    assert_eq!(info.waiters, 1, "the waiter's connection was closed while it waited");
    drop(resp);
}

/// A connection that sends nothing is closed at --handshake-timeout, long
/// before the idle timeout.
#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_handshake_timeout() {
    let s = serve(&["--handshake-timeout", "5s", "--idle-timeout", "1h"]).await;
    let mut tcp = TcpStream::connect(s.addr).await.expect("connect");
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(1800), until_closed(&mut tcp))
        .await
        .expect("a silent connection is closed before the idle timeout");
    assert!(start.elapsed() >= Duration::from_secs(5), "closed after {:?}", start.elapsed());
}

/// A TCP stream that can be cut: from then on nothing it receives reaches
/// the HTTP/2 client (which so never answers a PING) and nothing the client
/// writes is sent; `closed` is set when the server closes its end.
struct Cuttable {
    tcp: TcpStream,
    cut: Arc<AtomicBool>,
    closed: Option<oneshot::Sender<()>>,
}

impl AsyncRead for Cuttable {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.cut.load(Ordering::Acquire) {
            return Pin::new(&mut self.tcp).poll_read(cx, buf);
        }
        let mut sink = [0u8; 4096];
        loop {
            let mut b = ReadBuf::new(&mut sink);
            match Pin::new(&mut self.tcp).poll_read(cx, &mut b) {
                Poll::Ready(Ok(())) if !b.filled().is_empty() => continue,
                Poll::Ready(_) => {
                    if let Some(tx) = self.closed.take() {
                        let _ = tx.send(());
                    }
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.cut.load(Ordering::Acquire) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A half-open connection (the client vanished without a FIN: no frame, no
/// PING answer) is closed by the HTTP/2 keepalive, and its parked waiter
/// leaves the queue (G6), long before the idle timeout could apply (and it
/// never applies while a call is in progress).
#[tokio::test(start_paused = true)]
async fn half_open_connections_are_closed_by_keepalive_and_their_waiters_leave() {
    let s =
        serve(&["--http2-keepalive-interval", "10s", "--http2-keepalive-timeout", "5s", "--idle-timeout", "1h"]).await;
    let mut c = s.client().await;
    grant(&mut c, "held").await;
    let cut = Arc::new(AtomicBool::new(false));
    let (closed_tx, closed) = oneshot::channel();
    let tcp = TcpStream::connect(s.addr).await.expect("connect");
    let io = Cuttable { tcp, cut: cut.clone(), closed: Some(closed_tx) };
    let (h2, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.expect("ready");
    let (_resp, _send) =
        start_call(&mut h2, "turnstile", "Acquire", &acquire("held", "w", Duration::from_secs(3000), false));
    await_waiters(&mut c, "held", 1).await;
    cut.store(true, Ordering::Release);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(1800), closed).await.expect("closed by keepalive").expect("signal");
    assert!(start.elapsed() >= Duration::from_secs(10), "closed after {:?}", start.elapsed());
    await_waiters(&mut c, "held", 0).await;
}

/// Past --max-connections, new connections wait in the listen backlog,
/// unserved, until an open one closes.
#[tokio::test(start_paused = true)]
async fn connections_past_the_limit_wait_until_one_closes() {
    let s = serve(&["--max-connections", "2"]).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut h2 = s.raw(65_535).await;
        let (resp, _send) = start_call(&mut h2, "turnstile", "GetLock", &v1::GetLockRequest { key: "k".into() });
        assert!(header_status(&resp.await.expect("served")).is_none());
        open.push(h2);
    }
    let mut third = s.raw(65_535).await;
    let (resp, _send) = start_call(&mut third, "turnstile", "GetLock", &v1::GetLockRequest { key: "k".into() });
    let mut resp = Box::pin(resp);
    assert!(
        tokio::time::timeout(Duration::from_secs(60), &mut resp).await.is_err(),
        "a third connection was served while two are open"
    );
    drop(open.remove(0));
    let r = tokio::time::timeout(Duration::from_secs(60), resp).await.expect("served once one closed");
    assert!(header_status(&r.expect("answered")).is_none());
}
