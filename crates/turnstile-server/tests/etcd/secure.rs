//! TLS and credentials towards etcd, and the `turnstile_leases_held` gauge of
//! the etcd backend: real `turnstiled` processes against a real etcd serving
//! TLS (with and without client certificate auth) or with `auth enable`.
//! Start-up refusals are checked by exit status and stderr: clear words
//! naming the endpoint (or the user), never a panic or a Debug dump.

use std::time::Duration;

use tonic::Code;
use turnstile_testkit::{Etcd, TempDir, TestCa, Turnstiled};

use crate::common::*;

/// `turnstiled --backend etcd` over `etcd` with `extra` flags, or its
/// refusal to start: exit status and stderr.
fn try_sidecar(etcd: &Etcd, extra: &[&str]) -> Result<Turnstiled, String> {
    let mut args = vec!["--backend".to_owned(), "etcd".into(), "--etcd-endpoints".into(), etcd.url()];
    args.extend(["--etcd-timeout".to_owned(), "2s".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Turnstiled::try_start(args)
}

/// `--etcd-ca`, `--etcd-cert` and `--etcd-key` of `etcd`'s own TLS files.
fn tls_flags(etcd: &Etcd) -> Vec<String> {
    let tls = etcd.tls().expect("etcd serves TLS");
    let path = |p: &std::path::Path| p.display().to_string();
    vec![
        "--etcd-ca".into(),
        path(&tls.ca),
        "--etcd-cert".into(),
        path(&tls.client_cert),
        "--etcd-key".into(),
        path(&tls.client_key),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A start-up refusal: not started, a non-zero exit, no panic, words.
fn refused(res: Result<Turnstiled, String>) -> String {
    let err = match res {
        Ok(node) => {
            let url = node.url();
            let (_, log) = node.terminate();
            panic!("turnstiled started at {url} but should have been refused; its log:\n{log}")
        }
        Err(e) => e,
    };
    assert!(!err.contains("exit status: 0"), "refused with exit 0: {err}");
    assert!(!err.contains("panicked"), "a panic, not an error: {err}");
    assert!(!err.contains("Status {") && !err.contains("source: Some("), "a Debug dump, not words: {err}");
    err
}

/// Acquires, sees the holder, releases, sees it free.
async fn lock_cycle(node: &Turnstiled, key: &str) -> u64 {
    let mut c = client(node).await;
    let lease = must_acquire(&mut c, acquire(key, "app-1", LONG, Duration::ZERO)).await;
    let info = get(&mut c, key).await;
    assert!(info.held && info.owner == "app-1" && info.fencing_token == lease.fencing_token, "{info:?}");
    must_release(&mut c, &lease).await;
    assert!(!get(&mut c, key).await.held);
    lease.fencing_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_work_over_tls_with_a_client_certificate() {
    let ca = TestCa::new("etcd test CA");
    let etcd = Etcd::start_tls(&ca, true);
    assert!(etcd.url().starts_with("https://"), "{}", etcd.url());
    let node = try_sidecar(&etcd, &strs(&tls_flags(&etcd))).unwrap_or_else(|e| panic!("{e}"));
    let first = lock_cycle(&node, "tls:1").await;
    assert!(lock_cycle(&node, "tls:1").await > first, "tokens grow over TLS too");
    // What turnstiled wrote is in etcd: read it back over TLS with etcdctl.
    let keys = etcd.etcdctl(None, &["get", "--prefix", "turnstile/", "--keys-only"]);
    assert!(keys.is_empty(), "released locks leave nothing behind: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_etcd_is_refused_at_start_naming_the_endpoint() {
    let ca = TestCa::new("etcd test CA");
    let etcd = Etcd::start_tls(&ca, false);
    let dir = TempDir::new("other-ca");
    let other = TestCa::new("some other CA").write(&dir.path().join("other-ca.pem"));
    let err = refused(try_sidecar(&etcd, &["--etcd-ca", &other.display().to_string()]));
    assert!(err.contains(&etcd.url()), "names the endpoint: {err}");
    assert!(err.contains("not trusted by --etcd-ca"), "says why: {err}");
    // The right CA (no client certificate needed by this etcd) works.
    let ca_file = etcd.tls().expect("TLS").ca.display().to_string();
    let node = try_sidecar(&etcd, &["--etcd-ca", &ca_file]).unwrap_or_else(|e| panic!("{e}"));
    lock_cycle(&node, "tls:ca").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_that_demands_a_client_certificate_refuses_a_sidecar_without_one() {
    let ca = TestCa::new("etcd test CA");
    let etcd = Etcd::start_tls(&ca, true);
    let ca_file = etcd.tls().expect("TLS").ca.display().to_string();
    let err = refused(try_sidecar(&etcd, &["--etcd-ca", &ca_file]));
    assert!(err.contains(&etcd.url()), "names the endpoint: {err}");
    assert!(err.contains("requires a client certificate (give --etcd-cert"), "says why: {err}");
    // A certificate of a CA etcd does not trust is refused too.
    let dir = TempDir::new("stranger");
    let (cert, key) = TestCa::new("stranger CA").issue(&["turnstile-client"]).write(dir.path(), "client");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let err = refused(try_sidecar(&etcd, &["--etcd-ca", &ca_file, "--etcd-cert", &cert, "--etcd-key", &key]));
    assert!(err.contains(&etcd.url()) && err.contains("refused the client certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_that_do_not_load_are_named_by_their_flag() {
    let ca = TestCa::new("etcd test CA");
    let etcd = Etcd::start_tls(&ca, true);
    let dir = TempDir::new("bad-pem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let junk = junk.display().to_string();
    let err = refused(try_sidecar(&etcd, &["--etcd-ca", &junk]));
    assert!(err.contains("--etcd-ca") && err.contains(&junk), "{err}");
    let mut flags = tls_flags(&etcd);
    flags[5] = junk.clone(); // --etcd-key
    let err = refused(try_sidecar(&etcd, &strs(&flags)));
    assert!(err.contains("--etcd-key") && err.contains(&junk), "{err}");
}

/// etcd with `auth enable`: a `turnstile` user whose role may write under
/// the default prefix, and its password in a file.
fn etcd_with_auth(dir: &TempDir) -> (Etcd, String) {
    let etcd = Etcd::start();
    etcd.enable_auth("turnstile", "locks-secret", "turnstile/");
    let file = dir.path().join("etcd-password");
    std::fs::write(&file, "locks-secret\n").expect("write the password file");
    (etcd, file.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_from_a_file_work() {
    let dir = TempDir::new("etcd-auth");
    let (etcd, password_file) = etcd_with_auth(&dir);
    let node = try_sidecar(&etcd, &["--etcd-user", "turnstile", "--etcd-password-file", &password_file])
        .unwrap_or_else(|e| panic!("{e}"));
    lock_cycle(&node, "auth:1").await;
    // The password on the command line works as well, and from the variable.
    let node = try_sidecar(&etcd, &["--etcd-user", "turnstile", "--etcd-password", "locks-secret"])
        .unwrap_or_else(|e| panic!("{e}"));
    lock_cycle(&node, "auth:2").await;
    let args = ["--backend", "etcd", "--etcd-endpoints", &etcd.url(), "--etcd-user", "turnstile"];
    let node = Turnstiled::try_start_with_env(args, [("TURNSTILE_ETCD_PASSWORD", "locks-secret")])
        .unwrap_or_else(|e| panic!("{e}"));
    lock_cycle(&node, "auth:3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_none_is_a_clear_startup_error() {
    let dir = TempDir::new("etcd-auth");
    let (etcd, _) = etcd_with_auth(&dir);
    let err = refused(try_sidecar(&etcd, &["--etcd-user", "turnstile", "--etcd-password", "wrong"]));
    assert!(err.contains(&etcd.url()) && err.contains("\"turnstile\""), "names endpoint and user: {err}");
    assert!(err.contains("authentication failed"), "says why: {err}");
    assert!(!err.contains("wrong"), "never shows the password: {err}");
    let err = refused(try_sidecar(&etcd, &[]));
    assert!(err.contains(&etcd.url()) && err.contains("--etcd-user"), "says what to give: {err}");
    // A user whose role does not cover the prefix.
    etcd.etcdctl(Some(&Etcd::root()), &["user", "add", "stranger:stranger-secret"]);
    let err = refused(try_sidecar(&etcd, &["--etcd-user", "stranger", "--etcd-password", "stranger-secret"]));
    assert!(err.contains("\"stranger\" may not read the prefix \"turnstile/\""), "says what to grant: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_etcd_no_longer_takes_is_renewed_and_no_call_fails() {
    let dir = TempDir::new("etcd-auth");
    let (etcd, password_file) = etcd_with_auth(&dir);
    let node = try_sidecar(
        &etcd,
        &["--etcd-user", "turnstile", "--etcd-password-file", &password_file, "--log", "turnstile_server=info"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut c = client(&node).await;
    let held = must_acquire(&mut c, acquire("auth:held", "app-1", LONG, Duration::ZERO)).await;
    // A waiter parked on another connection, across the token's end.
    let mut c2 = client(&node).await;
    let waiter = tokio::spawn(async move { c2.acquire(acquire("auth:held", "app-2", LONG, WAIT)).await });
    await_waiters(&c, "auth:held", 1).await;
    // `auth disable` drops every token etcd handed out (simple tokens), at once
    // and for sure; turning auth on again makes the old token refused.
    etcd.etcdctl(Some(&Etcd::root()), &["auth", "disable"]);
    etcd.etcdctl(None, &["auth", "enable"]);
    let authenticates = || etcd.metric_sum("grpc_server_handled_total", &["grpc_method=\"Authenticate\""]);
    let before = authenticates();
    // Every call succeeds at its first try: none sees the refused token. Calls
    // refused together share one new token.
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                must_acquire(&mut c, acquire(&format!("auth:{i}"), "app-1", LONG, Duration::ZERO)).await
            })
        })
        .collect();
    for call in calls {
        let lease = call.await.expect("acquire task");
        must_release(&mut c, &lease).await;
    }
    assert_eq!(authenticates() - before, 1.0, "one Authenticate for all the calls refused together");
    must_release(&mut c, &held).await;
    let granted = waiter.await.expect("waiter task").expect("waiter's acquire").into_inner();
    assert!(granted.acquired, "the parked waiter is granted after the release: {granted:?}");
    let (status, log) = node.terminate();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("authenticating again"), "the token was refused and renewed: {log}");
}

/// `turnstile_leases_held` of a sidecar, from its /metrics.
async fn leases_held(node: &Turnstiled) -> i64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(node.http).await.expect("connect to the HTTP listener");
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.expect("send");
    let mut page = String::new();
    conn.read_to_string(&mut page).await.expect("read");
    page.lines()
        .find_map(|l| l.strip_prefix("turnstile_leases_held "))
        .unwrap_or_else(|| panic!("no turnstile_leases_held in {page}"))
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_held_counts_the_live_leases_this_sidecar_granted() {
    let etcd = Etcd::start();
    let (a, b) = (sidecar(&etcd, &[]), sidecar(&etcd, &[]));
    assert_eq!(leases_held(&a).await, 0);
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    let one = must_acquire(&mut ca, acquire("gauge:1", "app-1", LONG, Duration::ZERO)).await;
    let short = must_acquire(&mut ca, acquire("gauge:2", "app-1", MIN_TTL, Duration::ZERO)).await;
    let three = must_acquire(&mut cb, acquire("gauge:3", "app-2", LONG, Duration::ZERO)).await;
    assert_eq!((leases_held(&a).await, leases_held(&b).await), (2, 1), "each sidecar counts its own grants");
    // A G5 refresh is the same lease, not another.
    must_acquire(&mut ca, acquire("gauge:1", "app-1", LONG, Duration::ZERO)).await;
    assert_eq!(leases_held(&a).await, 2);
    // A waiter is not a holder.
    let mut waiting = client(&b).await;
    let waiter = tokio::spawn(async move { waiting.acquire(acquire("gauge:1", "app-3", LONG, WAIT)).await });
    await_waiters(&ca, "gauge:1", 1).await;
    assert_eq!(leases_held(&b).await, 1);
    // A release ends one; the waiter granted through b is b's now.
    must_release(&mut ca, &one).await;
    let granted = waiter.await.expect("waiter task").expect("acquire").into_inner();
    assert!(granted.acquired, "{granted:?}");
    assert_eq!((leases_held(&a).await, leases_held(&b).await), (1, 2));
    // The short lease runs out: the gauge follows without a call.
    eventually("the expired lease leaves the gauge", LONG, || async { leases_held(&a).await == 0 }).await;
    assert!(!get(&mut ca, "gauge:2").await.held, "{short:?} ended");
    must_release(&mut cb, &three).await;
    assert_eq!(leases_held(&b).await, 1);
    let err = ca
        .renew(turnstile_proto::v1::RenewRequest {
            key: "gauge:2".into(),
            fencing_token: short.fencing_token,
            ttl: None,
        })
        .await;
    assert_eq!(err.expect_err("renew of an ended lease").code(), Code::NotFound);
    assert_eq!(leases_held(&a).await, 0);
}
