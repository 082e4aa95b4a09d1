//! G6 at the wire: a grant whose reply never reaches the client is taken
//! back, and a wait ends before the call's own deadline. In-process server
//! on a port-0 listener, real gRPC over loopback, on a multi-threaded
//! runtime so that the transport and the handlers race as in production.
//! G8 at the wire: malformed gRPC framing from a raw HTTP/2 client is the
//! client's fault, answered `INVALID_ARGUMENT` saying what is wrong.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::Code;
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};

/// The two races below each load both cores on purpose; run one at a time,
/// so that neither delays the other's calls by more than the margin.
static ONE_RACE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One deadline race: the key, B's answer (acquired, or the call's code), and whether the key ended free.
type DeadlineRace = (String, Result<bool, Code>, bool);

/// The conformance suite's way to run the memory backend in this process.
#[allow(dead_code)] // this test uses only part of it
#[path = "conformance/node.rs"]
mod node;

#[path = "support/raw_h2.rs"]
mod raw_h2;
use raw_h2::{grpc_body, start_call};

/// A server in this process, on a runtime of its own; killed when dropped.
fn server() -> node::Node {
    node::memory_in_process(&["--data-dir".to_owned(), String::new()])
}

fn pd(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn acquire(key: &str, owner: &str, wait: Duration) -> v1::AcquireRequest {
    v1::AcquireRequest {
        key: key.into(),
        owner: owner.into(),
        ttl: Some(pd(Duration::from_secs(60))),
        wait_timeout: Some(pd(wait)),
        share_result: false,
    }
}

async fn grant(c: &mut LockServiceClient<Channel>, key: &str, owner: &str) -> v1::Lease {
    let r = c.acquire(acquire(key, owner, Duration::ZERO)).await.expect("acquire").into_inner();
    assert!(r.acquired, "{key} free for {owner}");
    r.lease.expect("lease")
}

async fn info(c: &mut LockServiceClient<Channel>, key: &str) -> v1::LockInfo {
    c.get_lock(v1::GetLockRequest { key: key.into() }).await.expect("get").into_inner()
}

/// Polls `key` until `check` holds; false if it never does within `within`
/// (a ghost holds its key for the whole 60 s TTL, far beyond that).
async fn becomes(
    c: &mut LockServiceClient<Channel>,
    key: &str,
    within: Duration,
    check: impl Fn(&v1::LockInfo) -> bool,
) -> bool {
    let end = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < end {
        if check(&info(c, key).await) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// The race of issue 9, defect 2, by reset: B waits for `key`; its client
/// resets the call (RST_STREAM) and right after, on the same HTTP/2
/// connection, sends A's release. Frames of one connection are written and
/// read in order, so the server learns of the reset before the release
/// that grants B: B's grant can never reach the wire. Whichever of B's
/// handler and the release runs first, B must not end up holding the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_a_grant_racing_the_waiters_reset_never_leaves_a_ghost() {
    let _one = ONE_RACE_AT_A_TIME.lock().await;
    let s = server();
    let addr = s.url().trim_start_matches("http://").to_owned();
    let c = LockServiceClient::connect(s.url()).await.expect("connect");
    const RACES: usize = 300;
    let mut tasks = Vec::new();
    for i in 0..RACES {
        let (mut c, addr) = (c.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("race-{i}");
            let a = grant(&mut c, &key, "a").await;
            let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect raw");
            let (h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            tokio::spawn(conn);
            let mut h2 = h2.ready().await.expect("h2 ready");
            let (_b_reply, mut b) = start_call(&mut h2, &addr, "Acquire", &acquire(&key, "b", Duration::from_secs(30)));
            assert!(becomes(&mut c, &key, Duration::from_secs(20), |i| i.waiters == 1).await, "B never queued");
            b.send_reset(h2::Reason::CANCEL);
            let mut h2 = h2.ready().await.expect("h2 ready");
            let release = v1::ReleaseRequest { key: key.clone(), fencing_token: a.fencing_token, result: None };
            let (reply, _send) = start_call(&mut h2, &addr, "Release", &release);
            let reply = reply.await.expect("release reply");
            assert_eq!(reply.status(), 200);
            let free = becomes(&mut c, &key, Duration::from_secs(5), |i| !i.held && i.waiters == 0).await;
            (key, free)
        }));
    }
    let mut ghosts = Vec::new();
    for t in tasks {
        let (key, free) = t.await.expect("race task");
        if !free {
            ghosts.push(key);
        }
    }
    assert!(
        ghosts.is_empty(),
        "G6: {} of {RACES} cancelled waiters ended up holding their key: {ghosts:?}",
        ghosts.len()
    );
}

/// The race of issue 9, defect 2, by deadline: B waits with a 200 ms call
/// deadline and a 30 s wait_timeout; A releases around B's deadline (0–2 ms
/// after it, as the test's clock sees it). B either got the grant in time
/// (its client saw `acquired`) or it must not hold the key: its wait ends
/// a margin before its deadline, and a grant it never heard of is taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_a_wait_ends_before_the_calls_deadline_so_a_late_release_leaves_no_ghost() {
    let _one = ONE_RACE_AT_A_TIME.lock().await;
    let s = server();
    let c = LockServiceClient::connect(s.url()).await.expect("connect");
    const RACES: usize = 90;
    let deadline = Duration::from_millis(200);
    let mut tasks: Vec<tokio::task::JoinHandle<DeadlineRace>> = Vec::new();
    for i in 0..RACES {
        if i % 30 == 0 {
            // In waves of 30, so that calls are not held up by their own number.
            for t in tasks.drain(..) {
                check_deadline_race(t.await.expect("race task"));
            }
        }
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("deadline-{i}");
            let a = grant(&mut c, &key, "a").await;
            let mut b = c.clone();
            let sent = tokio::time::Instant::now();
            let call = tokio::spawn(async move {
                let mut req = tonic::Request::new(acquire(&key, "b", Duration::from_secs(30)));
                req.set_timeout(deadline);
                b.acquire(req).await
            });
            // Release 0, 1 or 2 ms after B's own deadline.
            tokio::time::sleep_until(sent + deadline + Duration::from_millis((i % 3) as u64)).await;
            let key = format!("deadline-{i}");
            c.release(v1::ReleaseRequest { key: key.clone(), fencing_token: a.fencing_token, result: None })
                .await
                .expect("release");
            let answer = call.await.expect("call task").map(|r| r.into_inner());
            if let Ok(v1::AcquireResponse { acquired: true, lease: Some(l), .. }) = &answer {
                // Granted in time, and B's client knows: not a ghost.
                c.release(v1::ReleaseRequest { key: key.clone(), fencing_token: l.fencing_token, result: None })
                    .await
                    .expect("release B");
            }
            let free = becomes(&mut c, &key, Duration::from_secs(5), |i| !i.held).await;
            (key, answer.map(|r| r.acquired).map_err(|e| e.code()), free)
        }));
    }
    for t in tasks {
        check_deadline_race(t.await.expect("race task"));
    }
}

/// One deadline race's verdict: B heard of its grant, or nobody holds the key.
fn check_deadline_race((key, answer, free): DeadlineRace) {
    match answer {
        Ok(_) | Err(Code::DeadlineExceeded | Code::Cancelled) => {}
        Err(other) => panic!("{key}: B's call failed with {other:?}"),
    }
    assert!(free, "G6: {key} is held by a waiter that gave up at its deadline (answer {answer:?})");
}

/// Sends `body` (raw gRPC framing, `None` for no body at all) as an Acquire
/// on a fresh raw HTTP/2 connection, and returns the call's status, read
/// from the response headers (trailers-only) or else its trailers.
async fn raw_acquire(body: Option<Vec<u8>>) -> tonic::Status {
    let s = server();
    let addr = s.url().trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect raw");
    let (h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.expect("h2 ready");
    let req = tonic::codegen::http::Request::post(format!("http://{addr}/turnstile.v1.LockService/Acquire"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (reply, mut send) = h2.send_request(req, body.is_none()).expect("send request");
    if let Some(body) = body {
        send.send_data(body.into(), true).expect("send body");
    }
    let reply = tokio::time::timeout(Duration::from_secs(10), reply).await.expect("answered in time").expect("reply");
    assert_eq!(reply.status(), 200);
    if let Some(status) = tonic::Status::from_header_map(reply.headers()) {
        return status;
    }
    let mut body = reply.into_body();
    while let Some(data) = body.data().await {
        data.expect("response data");
    }
    let trailers = body.trailers().await.expect("trailers").expect("a status in trailers");
    tonic::Status::from_header_map(&trailers).expect("grpc-status")
}

/// A well-formed Acquire message, encoded, without its frame header.
fn acquire_message() -> Vec<u8> {
    grpc_body(&acquire("framing", "a", Duration::ZERO))[5..].to_vec()
}

/// A gRPC frame: compressed flag `flag`, declared length `len`, then `data`.
fn frame(flag: u8, len: usize, data: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&u32::try_from(len).expect("small").to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// G8: INVALID_ARGUMENT (never INTERNAL), a message containing `says`, and
/// a BadRequest naming the request.
fn assert_invalid_request(status: &tonic::Status, says: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "G8: {status:?}");
    assert!(status.message().contains(says), "G8: {:?} should say {says:?}", status.message());
    use tonic_types::StatusExt;
    let bad = status.get_details_bad_request().expect("BadRequest");
    assert_eq!(bad.field_violations[0].field, "request");
}

#[tokio::test]
async fn g8_a_compressed_message_without_grpc_encoding_is_invalid_argument() {
    let msg = acquire_message();
    let status = raw_acquire(Some(frame(1, msg.len(), &msg))).await;
    assert_invalid_request(&status, "compressed flag set but the call has no grpc-encoding header");
}

#[tokio::test]
async fn g8_an_unknown_compressed_flag_is_invalid_argument() {
    let msg = acquire_message();
    let status = raw_acquire(Some(frame(7, msg.len(), &msg))).await;
    assert_invalid_request(&status, "compressed flag 7");
}

#[tokio::test]
async fn g8_a_message_cut_short_by_end_of_stream_is_invalid_argument() {
    let msg = acquire_message();
    let status = raw_acquire(Some(frame(0, msg.len() + 100, &msg))).await;
    assert_invalid_request(&status, "ended before the end of its message");
}

#[tokio::test]
async fn g8_a_frame_header_cut_short_by_end_of_stream_is_invalid_argument() {
    let status = raw_acquire(Some(vec![0, 0, 0])).await;
    assert_invalid_request(&status, "ended before the end of its message");
}

#[tokio::test]
async fn g8_an_empty_request_body_is_invalid_argument() {
    let status = raw_acquire(None).await;
    assert_invalid_request(&status, "has no message");
}
