//! `turnstiled` processes: the refusal of an open listener, and SIGHUP
//! re-reading certificates and tokens without a restart.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use tonic::Code;
use turnstile_proto::v1::lock_service_client::LockServiceClient;
use turnstile_testkit::{eventually, TempDir, TestCa, Turnstiled};

use crate::common::{acquire, call, channel, token_file, PAYMENTS};
use crate::tls::handshake;

/// Generous: a reload is one signal and one file read.
const RELOAD_WITHIN: Duration = Duration::from_secs(20);

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A plain HTTP/1.1 GET of `path`; the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

#[test]
fn a_non_loopback_listener_without_tls_and_tokens_is_refused_and_says_why() {
    let err = Turnstiled::try_start(["--listen", "0.0.0.0:0", "--data-dir", ""]).expect_err("refused");
    assert!(err.contains("--listen: 0.0.0.0:0 is not a loopback address"), "{err}");
    assert!(err.contains("TLS (--tls-cert, --tls-key) and tokens (--auth-token-file)"), "{err}");
    assert!(err.contains("--insecure"), "{err}");
    // TLS alone is not enough: anyone with a TLS client could still lock.
    let dir = TempDir::new("open-listener");
    let (cert, key) = TestCa::new("ca").issue(&["localhost"]).write(dir.path(), "server");
    let tls = ["--listen", "0.0.0.0:0", "--data-dir", "", "--tls-cert", path(&cert), "--tls-key", path(&key)];
    let err = Turnstiled::try_start(tls).expect_err("refused");
    assert!(err.contains("without tokens (--auth-token-file)"), "{err}");
    // With both it starts.
    let tokens = token_file(dir.path());
    let node = Turnstiled::start(tls.iter().copied().chain(["--auth-token-file", path(&tokens)]));
    assert!(node.grpc.ip().is_unspecified());
}

#[tokio::test]
async fn insecure_accepts_a_non_loopback_listener() {
    let node = Turnstiled::start(["--listen", "0.0.0.0:0", "--data-dir", "", "--insecure"]);
    let url = format!("http://127.0.0.1:{}", node.grpc.port());
    let r = LockServiceClient::new(channel(&url).await).acquire(acquire("k", "w")).await.expect("open port");
    assert!(r.into_inner().acquired);
}

#[tokio::test]
async fn sighup_serves_a_new_certificate_without_a_restart() {
    let dir = TempDir::new("cert-reload");
    let ca = TestCa::new("reload CA");
    let first = ca.issue(&["localhost"]);
    let (cert, key) = first.write(dir.path(), "server");
    let node = Turnstiled::start(["--data-dir", "", "--tls-cert", path(&cert), "--tls-key", path(&key)]);
    assert_eq!(handshake(node.grpc, ca.pem(), None).await.expect("TLS"), first.der);
    let pid = node.pid();

    let second = ca.issue(&["localhost"]);
    second.write(dir.path(), "server");
    node.signal(libc::SIGHUP);
    eventually("the new certificate is served", RELOAD_WITHIN, || async {
        let served = handshake(node.grpc, ca.pem(), None).await.expect("TLS");
        (served == second.der).then_some(())
    })
    .await;
    // The same process: no restart.
    assert_eq!(node.pid(), pid);

    // A broken file on reload keeps the certificate being served.
    std::fs::write(&key, "not a key").expect("break the key");
    node.signal(libc::SIGHUP);
    eventually("the failed reload is counted", RELOAD_WITHIN, || async {
        http_get(node.http, "/metrics")
            .contains("turnstile_reloads_total{file=\"tls\",result=\"error\"} 1")
            .then_some(())
    })
    .await;
    assert_eq!(handshake(node.grpc, ca.pem(), None).await.expect("still serving TLS"), second.der);
    let (status, log) = node.terminate();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("TLS files not re-read"), "the error is logged: {log}");
}

#[tokio::test]
async fn sighup_rereads_the_token_file_and_a_bad_one_keeps_the_old_tokens() {
    let dir = TempDir::new("token-reload");
    let file = token_file(dir.path());
    let node = Turnstiled::start(["--data-dir", "", "--auth-token-file", path(&file)]);
    let mut c = LockServiceClient::new(channel(&node.url()).await);
    assert!(
        c.acquire(call(acquire("payments/1", "a"), Some(PAYMENTS))).await.expect("old token").into_inner().acquired
    );

    // Rotate: the payments token is replaced by a new one.
    let rotated = "payments-rotated-4e8a2c6b1d3f5a7c";
    let line =
        format!(r#"{{"name": "payments-api", "token": "{rotated}", "prefixes": ["payments/"], "verbs": ["lock"]}}"#);
    std::fs::write(&file, format!("{line}\n")).expect("rewrite the token file");
    node.signal(libc::SIGHUP);
    eventually("the old token is refused", RELOAD_WITHIN, || {
        let mut c = c.clone();
        async move {
            let r = c.acquire(call(acquire("payments/2", "a"), Some(PAYMENTS))).await;
            matches!(r, Err(s) if s.code() == Code::Unauthenticated).then_some(())
        }
    })
    .await;
    // (payments/2 may have been granted to the old token before the reload.)
    let r = c.acquire(call(acquire("payments/5", "b"), Some(rotated))).await.expect("the new token works");
    assert!(r.into_inner().acquired);
    // Its grant is the file's: lock only, payments/ only.
    let e = c.acquire(call(acquire("orders/1", "b"), Some(rotated))).await.expect_err("outside");
    assert_eq!(e.code(), Code::PermissionDenied);

    // A file that does not parse keeps the tokens in force, and says so.
    std::fs::write(&file, "{\"token\": \"short\"}\n").expect("break the token file");
    node.signal(libc::SIGHUP);
    eventually("the failed reload is counted", RELOAD_WITHIN, || async {
        let metrics = http_get(node.http, "/metrics");
        metrics.contains("turnstile_reloads_total{file=\"tokens\",result=\"error\"} 1").then_some(())
    })
    .await;
    let r = c.acquire(call(acquire("payments/3", "b"), Some(rotated))).await.expect("still in force");
    assert!(r.into_inner().acquired);
    let e = c.acquire(call(acquire("payments/4", "a"), Some(PAYMENTS))).await.expect_err("still refused");
    assert_eq!(e.code(), Code::Unauthenticated);
    let (status, log) = node.terminate();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("token file not re-read") && log.contains("line 1"), "the error names the line: {log}");
}
