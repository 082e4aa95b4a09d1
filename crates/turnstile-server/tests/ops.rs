//! Operational behaviour of `turnstiled` as a process: health and
//! reflection on the gRPC port, the HTTP endpoints, graceful shutdown, and
//! start-up refusals. Memory backend; real processes on free ports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tonic::Code;
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};
use turnstile_testkit::{TempDir, Turnstiled};

fn acquire(key: &str, owner: &str, wait_secs: i64) -> v1::AcquireRequest {
    v1::AcquireRequest {
        key: key.into(),
        owner: owner.into(),
        ttl: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
        wait_timeout: Some(prost_types::Duration { seconds: wait_secs, nanos: 0 }),
        share_result: false,
    }
}

/// A plain HTTP/1.1 GET; returns (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (code, _, body) = http_get_full(addr, path);
    (code, body)
}

/// A plain HTTP/1.1 GET; returns (status code, header lines, body).
fn http_get_full(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (code, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_lock_service() {
    let node = Turnstiled::start(["--data-dir", ""]);
    let ch = tonic::transport::Endpoint::from_shared(node.url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    for service in ["", "turnstile.v1.LockService"] {
        let r =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status(), tonic_health::pb::health_check_response::ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_both_list_the_lock_service() {
    let node = Turnstiled::start(["--data-dir", ""]);
    let ch = tonic::transport::Endpoint::from_shared(node.url()).unwrap().connect().await.unwrap();
    let v1_services = reflection::list_v1(ch.clone()).await;
    assert!(v1_services.contains(&"turnstile.v1.LockService".to_owned()), "{v1_services:?}");
    let alpha_services = reflection::list_v1alpha(ch).await;
    assert!(alpha_services.contains(&"turnstile.v1.LockService".to_owned()), "{alpha_services:?}");
    assert!(alpha_services.contains(&"grpc.health.v1.Health".to_owned()), "{alpha_services:?}");
}

#[test]
fn http_serves_metrics_healthz_and_readyz() {
    let node = Turnstiled::start(["--data-dir", ""]);
    assert_eq!(http_get(node.http, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(node.http, "/readyz"), (200, "ready\n".into()));
    let (code, body) = http_get(node.http, "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("turnstile_acquire_total{outcome=\"acquired\"} 0"), "{body}");
    assert!(body.contains("turnstile_leases_held 0"), "{body}");
}

/// The exposition passes `promtool check metrics` (Debian's `prometheus`
/// package; scripts/test.sh installs it) and is served with the Content-Type
/// of its format (Prometheus text unless the scraper asks for OpenMetrics),
/// after traffic has filled counters and histograms.
#[tokio::test]
async fn metrics_pass_promtool_and_say_their_format() {
    let promtool = std::process::Command::new("promtool").arg("--version").output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool not found: install Debian's prometheus package (apt-get install --no-install-recommends prometheus), as scripts/test.sh does"
    );
    let node = Turnstiled::start(["--data-dir", ""]);
    let mut c = LockServiceClient::connect(node.url()).await.unwrap();
    let lease = c.acquire(acquire("m", "a", 0)).await.unwrap().into_inner().lease.unwrap();
    let waiter = {
        let mut c = c.clone();
        tokio::spawn(async move { c.acquire(acquire("m", "b", 30)).await })
    };
    // Wait until the waiter is parked (poll with a deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.get_lock(v1::GetLockRequest { key: "m".into() }).await.unwrap().into_inner().waiters != 1 {
        assert!(std::time::Instant::now() < deadline, "waiter never parked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.release(v1::ReleaseRequest { key: "m".into(), fencing_token: lease.fencing_token, result: None }).await.unwrap();
    assert!(waiter.await.unwrap().unwrap().into_inner().acquired);
    let _ = c.renew(v1::RenewRequest { key: "m".into(), fencing_token: 999, ttl: None }).await;
    let (code, head, body) = http_get_full(node.http, "/metrics");
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    for series in [
        "turnstile_handoff_seconds_count 1",
        "turnstile_wait_seconds_count 1",
        "turnstile_waiters 0",
        "turnstile_renew_total{outcome=\"not_found\"} 1",
        "process_resident_memory_bytes",
    ] {
        assert!(body.contains(series), "{series} missing in\n{body}");
    }
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    check.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("feed promtool");
    let out = check.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{body}");
}

/// A force release is counted in `turnstile_force_releases_total` (one that
/// finds nothing to end is not) and logged at warn with the key, the owner
/// and the token of the lease it ended, and who asked.
#[tokio::test]
async fn a_force_release_is_counted_and_logged_at_warn() {
    let node = Turnstiled::start(["--data-dir", "", "--log-format", "json"]);
    let mut c = LockServiceClient::connect(node.url()).await.unwrap();
    let held = c.acquire(acquire("fr:1", "wedged-owner", 0)).await.unwrap().into_inner();
    let token = held.lease.expect("lease").fencing_token;
    let force = |key: &str| v1::ForceReleaseRequest { key: key.into(), fencing_token: None };
    assert!(c.force_release(force("fr:1")).await.unwrap().into_inner().released);
    assert!(!c.force_release(force("fr:free")).await.unwrap().into_inner().released);
    let body = http_get(node.http, "/metrics").1;
    assert!(body.contains("turnstile_force_releases_total 1"), "{body}");
    assert!(body.contains("turnstile_calls_total{rpc=\"ForceRelease\",code=\"Ok\"} 2"), "{body}");
    drop(c);
    // Off the runtime: the client's connection must be able to close meanwhile.
    let (_, log) = tokio::task::spawn_blocking(move || node.terminate()).await.expect("join");
    let line = log.lines().find(|l| l.contains("force release")).unwrap_or_else(|| panic!("{log}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(v["level"], "WARN", "{line}");
    let f = &v;
    assert_eq!(
        (f["key"].as_str(), f["owner"].as_str(), f["token"].as_u64()),
        (Some("fr:1"), Some("wedged-owner"), Some(token)),
        "{line}"
    );
    assert!(f["caller"].is_string() && f["peer"].is_string(), "who asked: {line}");
    // The peer's real address, not `unknown`: `peer=127.0.0.1:PORT`.
    assert!(f["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "peer=127.0.0.1: in {line}");
}

#[tokio::test]
async fn metrics_count_grants_and_refusals() {
    let node = Turnstiled::start(["--data-dir", ""]);
    let mut c = LockServiceClient::connect(node.url()).await.unwrap();
    assert!(c.acquire(acquire("m", "a", 0)).await.unwrap().into_inner().acquired);
    assert!(!c.acquire(acquire("m", "b", 0)).await.unwrap().into_inner().acquired);
    let _ = c.acquire(acquire("", "b", 0)).await.unwrap_err();
    let body = http_get(node.http, "/metrics").1;
    assert!(body.contains("turnstile_acquire_total{outcome=\"acquired\"} 1"), "{body}");
    assert!(body.contains("turnstile_acquire_total{outcome=\"contended\"} 1"), "{body}");
    assert!(body.contains("turnstile_calls_total{rpc=\"Acquire\",code=\"InvalidArgument\"} 1"), "{body}");
    assert!(body.contains("turnstile_calls_total{rpc=\"Acquire\",code=\"Ok\"} 2"), "{body}");
    assert!(body.contains("turnstile_call_seconds_count{rpc=\"Acquire\"} 3"), "{body}");
    assert!(body.contains("turnstile_leases_held 1"), "{body}");
}

#[tokio::test]
async fn sigterm_answers_parked_waiters_unavailable_and_exits_zero() {
    let dir = TempDir::new("ops-sigterm");
    let node = Turnstiled::start(["--data-dir", dir.path().to_str().unwrap()]);
    let mut c = LockServiceClient::connect(node.url()).await.unwrap();
    assert!(c.acquire(acquire("busy", "holder", 0)).await.unwrap().into_inner().acquired);
    let mut wc = c.clone();
    let waiter = tokio::spawn(async move { wc.acquire(acquire("busy", "waiter", 60)).await });
    // Wait until the waiter is parked (poll with a deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.get_lock(v1::GetLockRequest { key: "busy".into() }).await.unwrap().into_inner().waiters != 1 {
        assert!(std::time::Instant::now() < deadline, "waiter never parked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, log) = tokio::task::spawn_blocking(move || node.terminate()).await.unwrap();
    assert!(status.success(), "exit 0 on SIGTERM: {status}\n{log}");
    let err = waiter.await.unwrap().expect_err("a parked waiter is answered, not granted");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(dir.path().join("snapshot.jsonl").exists(), "the lease table was saved");
}

#[test]
fn a_corrupt_state_file_stops_start_up() {
    let dir = TempDir::new("ops-corrupt");
    std::fs::write(dir.path().join("state.json"), b"{\"version\":1,\"generation\":").unwrap();
    let err = Turnstiled::try_start(["--data-dir", dir.path().to_str().unwrap()]).expect_err("must refuse");
    assert!(err.contains("corrupt"), "{err}");
    assert!(!err.contains("exit status: 0"), "{err}");
}

#[test]
fn running_without_state_says_so_loudly() {
    let node = Turnstiled::start(["--data-dir", "", "--log", "warn"]);
    let (status, log) = node.terminate();
    assert!(status.success());
    assert!(log.contains("WITHOUT a data dir") && log.contains("G1") && log.contains("G2"), "{log}");
}

#[test]
fn invalid_settings_are_refused_naming_the_flag() {
    let err = Turnstiled::try_start(["--data-dir", "", "--min-ttl", "5s", "--max-ttl", "1s"]).expect_err("refused");
    assert!(err.contains("--min-ttl"), "{err}");
}

/// The serving status of the server as a whole and of the LockService.
async fn health(node: &Turnstiled) -> Vec<tonic_health::pb::health_check_response::ServingStatus> {
    let ch = tonic::transport::Endpoint::from_shared(node.url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let mut out = Vec::new();
    for service in ["", "turnstile.v1.LockService"] {
        let r = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap();
        out.push(r.into_inner().status());
    }
    out
}

/// While nothing can be granted after a crash, /readyz is 503, gRPC health
/// NOT_SERVING, and a gauge counts the seconds left.
#[tokio::test]
async fn recovery_is_visible_as_not_ready_not_serving_and_a_gauge() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = TempDir::new("ops-recovery");
    let path = dir.path().to_str().unwrap().to_owned();
    let node = Turnstiled::start(["--data-dir", &path]);
    let mut c = LockServiceClient::connect(node.url()).await.unwrap();
    assert!(c.acquire(acquire("k", "holder", 0)).await.unwrap().into_inner().acquired);
    node.kill();
    let node = Turnstiled::start(["--data-dir", &path]);
    let (code, body) = http_get(node.http, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("recovering") && body.contains(" s"), "{body}");
    assert_eq!(health(&node).await, vec![ServingStatus::NotServing; 2]);
    let metrics = http_get(node.http, "/metrics").1;
    let left: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("turnstile_recovery_seconds_left "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!((30..=41).contains(&left), "{left} s left of a 30 s lease plus the 10 s step");
}

/// When recovery ends, gRPC health turns SERVING and /readyz ready again,
/// by themselves.
#[tokio::test]
async fn health_turns_serving_when_recovery_ends() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = TempDir::new("ops-recovery-ends");
    let path = dir.path().to_str().unwrap().to_owned();
    let args = ["--data-dir", &path, "--horizon-step", "100ms"];
    let node = Turnstiled::start(args);
    let mut c = LockServiceClient::connect(node.url()).await.unwrap();
    let mut short = acquire("k", "holder", 0);
    short.ttl = Some(prost_types::Duration { seconds: 1, nanos: 0 });
    assert!(c.acquire(short).await.unwrap().into_inner().acquired);
    node.kill();
    let node = Turnstiled::start(args);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while health(&node).await != vec![ServingStatus::Serving; 2] {
        assert!(std::time::Instant::now() < deadline, "still NOT_SERVING long after a 1 s lease ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(node.http, "/readyz"), (200, "ready\n".into()));
}

/// A crash with only a long lease held holds back that key alone: the
/// server is ready and SERVING, and says how many keys wait.
#[tokio::test]
async fn a_crash_with_a_long_lease_held_back_keeps_the_server_ready() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = TempDir::new("ops-key-hold");
    let path = dir.path().to_str().unwrap().to_owned();
    let node = Turnstiled::start(["--data-dir", &path, "--long-lease", "10s"]);
    let mut c = LockServiceClient::connect(node.url()).await.unwrap();
    assert!(c.acquire(acquire("long", "holder", 0)).await.unwrap().into_inner().acquired); // 30 s
    node.kill();
    let node = Turnstiled::start(["--data-dir", &path, "--long-lease", "10s"]);
    let (code, body) = http_get(node.http, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("1 key(s) held back"), "{body}");
    assert_eq!(health(&node).await, vec![ServingStatus::Serving; 2]);
    assert!(http_get(node.http, "/metrics").1.contains("turnstile_keys_held_back 1"));
    let mut c = LockServiceClient::connect(node.url()).await.unwrap();
    assert!(c.acquire(acquire("other", "b", 0)).await.unwrap().into_inner().acquired);
    let err = c.acquire(acquire("long", "b", 0)).await.expect_err("held back");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

/// Issue 9, defect 3, as an operator meets it: A holds `k` for 60 s,
/// turnstiled is SIGKILLed and restarted, then stopped with SIGTERM while it
/// still recovers (a rolling deploy right after a crash). The next start
/// must still refuse to grant `k`.
#[tokio::test]
async fn a_sigterm_during_crash_recovery_leaves_the_hold_to_the_next_start() {
    let dir = TempDir::new("ops-stop-recovering");
    let path = dir.path().to_str().unwrap().to_owned();
    let node = Turnstiled::start(["--data-dir", &path]);
    let mut c = LockServiceClient::connect(node.url()).await.unwrap();
    let mut a = acquire("k", "a", 0);
    a.ttl = Some(prost_types::Duration { seconds: 60, nanos: 0 });
    assert!(c.acquire(a).await.unwrap().into_inner().acquired);
    node.kill();
    let node = Turnstiled::start(["--data-dir", &path]);
    let (status, log) = node.terminate();
    assert!(status.success(), "{status} {log}");
    let node = Turnstiled::start(["--data-dir", &path]);
    let mut c = LockServiceClient::connect(node.url()).await.unwrap();
    let err = c.acquire(acquire("k", "b", 0)).await.expect_err("G1: A's lease may still be live");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("recovering"), "{err:?}");
}

/// Issue 9, defect 4, as an operator meets it: after a graceful stop with a
/// lease held, `state.json` is lost. turnstiled refuses to start, naming the
/// file, and leaves the snapshot where it was.
#[tokio::test]
async fn a_lost_state_file_beside_a_snapshot_stops_start_up() {
    let dir = TempDir::new("ops-lost-state");
    let path = dir.path().to_str().unwrap().to_owned();
    let node = Turnstiled::start(["--data-dir", &path]);
    let mut c = LockServiceClient::connect(node.url()).await.unwrap();
    assert!(c.acquire(acquire("k", "a", 0)).await.unwrap().into_inner().acquired);
    let (status, _) = node.terminate();
    assert!(status.success());
    std::fs::remove_file(dir.path().join("state.json")).unwrap();
    let err = Turnstiled::try_start(["--data-dir", &path]).expect_err("must refuse");
    assert!(err.contains("state.json") && err.contains("refusing to start"), "{err}");
    assert!(dir.path().join("snapshot.jsonl").exists());
}

/// Reflection clients: list services over each protocol version.
mod reflection {
    use tonic::transport::Channel;

    /// One list-services function per reflection version: the generated
    /// types differ, the exchange is the same.
    macro_rules! list_services {
        ($name:ident, $pb:path) => {
            pub(crate) async fn $name(ch: Channel) -> Vec<String> {
                use pb::server_reflection_request::MessageRequest;
                use pb::server_reflection_response::MessageResponse;
                use $pb as pb;
                let req = pb::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::ListServices(String::new())),
                };
                let mut stream = pb::server_reflection_client::ServerReflectionClient::new(ch)
                    .server_reflection_info(tokio_stream::once(req))
                    .await
                    .expect(stringify!($name))
                    .into_inner();
                match stream.message().await.expect("answer").and_then(|r| r.message_response) {
                    Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect(),
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
    }

    list_services!(list_v1, tonic_reflection::pb::v1);
    list_services!(list_v1alpha, tonic_reflection::pb::v1alpha);
}
