//! The `turnstile` binary against a real turnstiled: `lock -- CMD` excludes
//! across processes, passes the command's status and environment through,
//! frees the key when killed, stops the command when the lease is lost; and
//! `get`, `ls`, `release`.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{client, eventually, server, within};
use turnstile_testkit::TempDir;

const TTL: Duration = Duration::from_secs(10);

/// `turnstile --addr URL ARGS…`, stdin closed, output captured.
fn turnstile(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnstile"));
    cmd.arg("--addr").arg(url).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs to completion in a blocking thread.
async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run turnstile")).await.expect("join")
}

/// Waits for `child` to exit, polling, failing the test after `within`.
async fn exit_of(child: &mut Child, within: Duration) -> ExitStatus {
    let status = std::sync::Mutex::new(child);
    eventually(within, "turnstile exits", || {
        let exited = status.lock().expect("not poisoned").try_wait().expect("try_wait");
        async move { exited }
    })
    .await
}

/// The contents of `path` once it has a whole line.
async fn read_line(path: &Path) -> String {
    eventually(Duration::from_secs(10), "the command writes its file", || async {
        std::fs::read_to_string(path).ok().filter(|s| s.ends_with('\n')).map(|s| s.trim().to_owned())
    })
    .await
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) on a child of this test.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

fn sigterm(pid: u32) {
    // SAFETY: kill(2) on a child of this test.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// Mutual exclusion across processes: two `turnstile lock` on one key run
/// their commands one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lock_processes_run_their_commands_one_after_the_other() {
    let node = server();
    let dir = TempDir::new("cli-intervals");
    // The sleep is the scenario: the command holds the lock for a while.
    let script = "date +%s%N >> \"$F\"; sleep 0.3; date +%s%N >> \"$F\"";
    let run = |name: &str| {
        let mut cmd = turnstile(&node.url(), &["lock", "--ttl", "2s", "both", "--", "sh", "-c", script]);
        cmd.env("F", dir.path().join(name));
        cmd.spawn().expect("spawn turnstile")
    };
    let (a, b) = (run("a"), run("b"));
    let (a, b) = tokio::task::spawn_blocking(move || (a.wait_with_output(), b.wait_with_output())).await.expect("join");
    for out in [a.expect("a"), b.expect("b")] {
        assert!(out.status.success(), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let interval = |name: &str| -> (u128, u128) {
        let text = std::fs::read_to_string(dir.path().join(name)).expect("interval file");
        let t: Vec<u128> = text.lines().map(|l| l.trim().parse().expect("nanoseconds")).collect();
        assert_eq!(t.len(), 2, "{name}: {text}");
        (t[0], t[1])
    };
    let (mut first, mut second) = (interval("a"), interval("b"));
    if second.0 < first.0 {
        std::mem::swap(&mut first, &mut second);
    }
    assert!(first.1 <= second.0, "the commands overlapped: {first:?} and {second:?}");
}

/// The command gets the key and token, and its exit status is turnstile's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_sees_the_lock_and_its_status_is_passed_through() {
    let node = server();
    let dir = TempDir::new("cli-env");
    let file = dir.path().join("env");
    let script = "echo \"$TURNSTILE_KEY $TURNSTILE_FENCING_TOKEN\" > \"$F\"; exit 3";
    let mut cmd = turnstile(&node.url(), &["lock", "env:1", "--", "sh", "-c", script]);
    cmd.env("F", &file);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&file).expect("env file");
    let (key, token) = text.trim().split_once(' ').expect("two words");
    assert_eq!(key, "env:1");
    assert!(token.parse::<u64>().expect("token") >= 1);
    // And the lock was released at exit.
    let c = client(&node, TTL).await;
    assert!(c.get("env:1").await.expect("get").holder.is_none());
}

/// Not obtained: exit 75 (or --conflict-exit-code), naming the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_is_not_obtained() {
    let node = server();
    let c = client(&node, TTL).await;
    let guard = c.lock("busy:1").await.expect("lock");
    let out = output(turnstile(&node.url(), &["lock", "--wait", "0", "busy:1", "--", "true"])).await;
    assert_eq!(out.status.code(), Some(75));
    assert!(String::from_utf8_lossy(&out.stderr).contains(guard.owner()), "stderr names the holder");
    let started = Instant::now();
    let out = output(turnstile(
        &node.url(),
        &["lock", "--wait", "300ms", "--conflict-exit-code", "9", "busy:1", "--", "true"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(9));
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(guard);
}

/// SIGKILL of `turnstile lock`: the key frees within its TTL, and the
/// command dies with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_turnstile_lock_frees_the_key_within_its_ttl() {
    let node = server();
    let dir = TempDir::new("cli-kill");
    let pidfile = dir.path().join("pid");
    let ttl = Duration::from_secs(1);
    let mut cmd =
        turnstile(&node.url(), &["lock", "--ttl", "1s", "kill:1", "--", "sh", "-c", "echo $$ > \"$F\"; exec sleep 30"]);
    cmd.env("F", &pidfile);
    let mut child = cmd.spawn().expect("spawn");
    let pid = read_line(&pidfile).await;
    sigkill(child.id());
    let killed = Instant::now();
    let status = exit_of(&mut child, Duration::from_secs(5)).await;
    assert!(!status.success());
    let c = client(&node, TTL).await;
    let g = c.lock_timeout("kill:1", Duration::from_secs(5)).await.expect("freed");
    assert!(killed.elapsed() <= ttl + Duration::from_millis(300), "freed after {:?}", killed.elapsed());
    drop(g);
    eventually(Duration::from_secs(5), "the command dies with turnstile", || async { gone(&pid).then_some(()) }).await;
}

/// SIGKILL of `turnstile lock` also ends what the command started: a
/// grandchild, which the kernel's parent-death signal does not reach (no
/// `exec` here: `sh` stays the command, `sleep` is its child).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_turnstile_lock_ends_the_commands_grandchildren() {
    let node = server();
    let dir = TempDir::new("cli-kill-tree");
    let pidfile = dir.path().join("pid");
    let script = "sleep 30 & echo $! > \"$F\"; wait";
    let mut cmd = turnstile(&node.url(), &["lock", "tree:1", "--", "sh", "-c", script]);
    cmd.env("F", &pidfile);
    let mut child = cmd.spawn().expect("spawn");
    let pid = read_line(&pidfile).await;
    assert!(!gone(&pid), "the grandchild runs");
    sigkill(child.id());
    exit_of(&mut child, Duration::from_secs(5)).await;
    eventually(Duration::from_secs(5), "the grandchild dies with turnstile", || async { gone(&pid).then_some(()) })
        .await;
}

/// A command that ends normally leaves the watchdog nothing to do: what it
/// left running in the background is not killed. (turnstile waits for its
/// disarmed watchdog to exit, so the check right after its exit is final.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_exit_does_not_kill_what_the_command_left_running() {
    let node = server();
    let dir = TempDir::new("cli-leftover");
    let pidfile = dir.path().join("pid");
    let script = "sleep 30 >/dev/null 2>&1 & echo $! > \"$F\"";
    let mut cmd = turnstile(&node.url(), &["lock", "leftover:1", "--", "sh", "-c", script]);
    cmd.env("F", &pidfile);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pid = read_line(&pidfile).await;
    assert!(!gone(&pid), "the background process was killed");
    sigkill(pid.parse().expect("pid"));
}

/// A second SIGTERM to turnstile kills a command that ignored the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_kills_the_command() {
    let node = server();
    let dir = TempDir::new("cli-signal-twice");
    let (pidfile, termfile) = (dir.path().join("pid"), dir.path().join("term"));
    let script = "trap 'echo term > \"$G\"' TERM; echo $$ > \"$F\"; while :; do sleep 0.05; done";
    let mut cmd = turnstile(&node.url(), &["lock", "sig:2", "--", "sh", "-c", script]);
    cmd.env("F", &pidfile).env("G", &termfile);
    let mut child = cmd.spawn().expect("spawn");
    let pid = read_line(&pidfile).await;
    sigterm(child.id());
    read_line(&termfile).await;
    assert!(!gone(&pid), "the command ignored the first SIGTERM");
    sigterm(child.id());
    let status = exit_of(&mut child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(128 + 9), "the command died of SIGKILL");
    assert!(gone(&pid));
}

/// A lost lease stops the command (SIGTERM to its group): exit 76.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_command() {
    let node = server();
    let dir = TempDir::new("cli-lost");
    let pidfile = dir.path().join("pid");
    let mut cmd = turnstile(
        &node.url(),
        &["lock", "--ttl", "600ms", "--grace", "10s", "lost:1", "--", "sh", "-c", "echo $$ > \"$F\"; sleep 30"],
    );
    cmd.env("F", &pidfile);
    let mut child = cmd.spawn().expect("spawn");
    let pid = read_line(&pidfile).await;
    let c = client(&node, TTL).await;
    let token = c.get("lost:1").await.expect("get").holder.expect("held").fencing_token;
    assert!(c.release("lost:1", token).await.expect("admin release"));
    let taken = Instant::now();
    let status = exit_of(&mut child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(76));
    assert!(taken.elapsed() < Duration::from_secs(3), "stopped after {:?} (grace is 10s)", taken.elapsed());
    assert!(gone(&pid), "the command was stopped");
}

/// A lease found ended when the command exits is a lost lease: exit 76, not
/// the command's 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_found_ended_when_the_command_exits_is_lost() {
    let node = server();
    // The command ends its own lease (as an operator's release would), then
    // exits 0 at once: with a 30 s TTL no renew notices it first.
    let script = "\"$T\" --addr \"$A\" release \"$TURNSTILE_KEY\" \"$TURNSTILE_FENCING_TOKEN\"";
    let mut cmd = turnstile(&node.url(), &["lock", "--ttl", "30s", "ended:1", "--", "sh", "-c", script]);
    cmd.env("T", env!("CARGO_BIN_EXE_turnstile")).env("A", node.url());
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("released ended:1"), "{stderr}");
    assert_eq!(out.status.code(), Some(76), "{stderr}");
    assert!(stderr.contains("lost"), "{stderr}");
}

/// A command that ignores SIGTERM is killed after --grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_ignoring_sigterm_is_killed_after_the_grace() {
    let node = server();
    let dir = TempDir::new("cli-grace");
    let pidfile = dir.path().join("pid");
    let script = "trap '' TERM; echo $$ > \"$F\"; while :; do sleep 0.05; done";
    let mut cmd =
        turnstile(&node.url(), &["lock", "--ttl", "600ms", "--grace", "500ms", "grace:1", "--", "sh", "-c", script]);
    cmd.env("F", &pidfile);
    let mut child = cmd.spawn().expect("spawn");
    let pid = read_line(&pidfile).await;
    let c = client(&node, TTL).await;
    let token = c.get("grace:1").await.expect("get").holder.expect("held").fencing_token;
    assert!(c.release("grace:1", token).await.expect("admin release"));
    let taken = Instant::now();
    let status = exit_of(&mut child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(76));
    assert!(taken.elapsed() >= Duration::from_millis(500), "killed before the grace ended");
    assert!(gone(&pid), "the command was killed");
}

/// SIGTERM to turnstile is passed on to the command, whose status it exits with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_passed_on_to_the_command() {
    let node = server();
    let dir = TempDir::new("cli-signal");
    let pidfile = dir.path().join("pid");
    let script = "trap 'exit 7' TERM; echo $$ > \"$F\"; while :; do sleep 0.05; done";
    let mut cmd = turnstile(&node.url(), &["lock", "sig:1", "--", "sh", "-c", script]);
    cmd.env("F", &pidfile);
    let mut child = cmd.spawn().expect("spawn");
    read_line(&pidfile).await;
    sigterm(child.id());
    let status = exit_of(&mut child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(7));
    let c = client(&node, TTL).await;
    assert!(c.get("sig:1").await.expect("get").holder.is_none(), "released after the command exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_command_and_an_unreachable_coordinator_have_their_codes() {
    let node = server();
    let out = output(turnstile(&node.url(), &["lock", "nf:1", "--", "/nonexistent/command"])).await;
    assert_eq!(out.status.code(), Some(127));
    let c = client(&node, TTL).await;
    assert!(c.get("nf:1").await.expect("get").holder.is_none(), "released after the failed start");
    let refused = turnstile_testkit::RefusedPort::new();
    let out = output(turnstile(&refused.url(), &["--timeout", "500ms", "ls"])).await;
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unavailable"));
    // Waiting for a lock (no --wait) does not wait forever on a coordinator
    // that never answered: most likely a wrong address.
    let out = output(turnstile(&refused.url(), &["--timeout", "500ms", "lock", "k", "--", "true"])).await;
    assert_eq!(out.status.code(), Some(125), "{}", String::from_utf8_lossy(&out.stderr));
    let out = output(turnstile(&node.url(), &["lock", "--ttl", "soon", "k", "--", "true"])).await;
    assert_eq!(out.status.code(), Some(2), "usage error");
}

/// `turnstile health`, as the Docker HEALTHCHECK and the Kubernetes startup
/// probe use it: 0 and SERVING when up, 1 and NOT_SERVING while recovering
/// after a crash, 125 when unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_serving_not_serving_or_unreachable() {
    let dir = turnstile_testkit::TempDir::new("cli-health");
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let node = turnstile_testkit::Turnstiled::start(["--data-dir", &path]);
    let out = output(turnstile(&node.url(), &["health"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is SERVING"));
    let c =
        turnstile_client::Client::builder(node.url()).ttl(Duration::from_secs(60)).connect().await.expect("connect");
    let guard = c.lock("health:k").await.expect("lock");
    std::mem::forget(guard); // held when the coordinator crashes
    node.kill();
    let node = turnstile_testkit::Turnstiled::start(["--data-dir", &path]);
    let out = output(turnstile(&node.url(), &["health"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is NOT_SERVING"));
    let refused = turnstile_testkit::RefusedPort::new();
    let out = output(turnstile(&refused.url(), &["--timeout", "500ms", "health"])).await;
    assert_eq!(out.status.code(), Some(125));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_ls_and_release() {
    let node = server();
    let url = node.url();
    let c = client(&node, TTL).await;
    let g1 = c.lock("inv:1").await.expect("lock");
    let _g2 = c.lock("inv:2").await.expect("lock");

    let out = output(turnstile(&url, &["ls", "inv:"])).await;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("KEY") && lines[1].starts_with("inv:1") && lines[2].starts_with("inv:2"));
    let col = lines[0].find("OWNER").expect("OWNER column");
    assert_eq!(lines[1].find(g1.owner()), Some(col), "aligned:\n{text}");

    let out = output(turnstile(&url, &["ls", "--json"])).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2));

    let out = output(turnstile(&url, &["get", "inv:1", "--json"])).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["fencing_token"], g1.fencing_token());
    assert_eq!(v["owner"], g1.owner());
    assert_eq!(v["held"], true);

    let token = g1.fencing_token().to_string();
    let out = output(turnstile(&url, &["release", "inv:1", &token])).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = output(turnstile(&url, &["release", "inv:1", &token])).await;
    assert_eq!(out.status.code(), Some(1), "already ended");
    let out = output(turnstile(&url, &["get", "inv:1"])).await;
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.lines().nth(1).is_some_and(|l| l.starts_with("inv:1") && l.contains(" - ")), "{text}");
}

/// `turnstile` against a coordinator demanding mutual TLS and a bearer
/// token: `--ca`, `--cert`, `--key` and `--token`/`TURNSTILE_TOKEN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificates_and_the_bearer_token() {
    let dir = TempDir::new("cli-tls");
    let ca = turnstile_testkit::TestCa::new("cli test CA");
    let (cert, key) = ca.issue(&["localhost"]).write(dir.path(), "server");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    let (client_cert, client_key) = ca.issue(&["cli"]).write(dir.path(), "client");
    let tokens = dir.path().join("tokens.jsonl");
    let token = "cli-test-token-3a5c7e9b1d";
    let line = format!(r#"{{"token": "{token}", "prefixes": ["payments/"], "verbs": ["lock", "inspect"]}}"#);
    std::fs::write(&tokens, line).expect("write the token file");
    let p = |p: &Path| p.to_str().expect("utf-8").to_owned();
    let node = turnstile_testkit::Turnstiled::start([
        "--data-dir".to_owned(),
        String::new(),
        "--tls-cert".into(),
        p(&cert),
        "--tls-key".into(),
        p(&key),
        "--tls-client-ca".into(),
        p(&ca_file),
        "--auth-token-file".into(),
        p(&tokens),
    ]);
    let url = format!("https://localhost:{}", node.grpc.port());
    let tls = ["--ca", &p(&ca_file), "--cert", &p(&client_cert), "--key", &p(&client_key)];

    // Everything given: the lock is taken and the command runs.
    let mut cmd = turnstile(&url, &tls);
    cmd.args(["lock", "--wait", "0", "payments/1", "--", "sh", "-c", "echo locked $TURNSTILE_KEY"]);
    cmd.env("TURNSTILE_TOKEN", token);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "locked payments/1");
    let out = output(turnstile(&url, &[&tls[..], &["--token", token, "ls"]].concat())).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    // Outside its prefix: refused, exit 125, and it says so.
    let out = output(turnstile(&url, &[&tls[..], &["--token", token, "get", "orders/1"]].concat())).await;
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"), "{out:?}");
    // No token: unauthenticated.
    let out = output(turnstile(&url, &[&tls[..], &["ls"]].concat())).await;
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"), "{out:?}");
    // No client certificate: the handshake fails, nothing is answered.
    let out = output(turnstile(&url, &["--ca", &p(&ca_file), "--token", token, "--timeout", "2s", "ls"])).await;
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    // A missing CA file is named.
    let out = output(turnstile(&url, &["--ca", "/nonexistent/ca.pem", "ls"])).await;
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ca.pem"), "{out:?}");
}

/// A loopback listener that accepts connections and holds them without a
/// word: a coordinator that is up at the TCP level but never speaks HTTP/2.
struct Silent {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Silent {
    fn new() -> Silent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        // Detached: it ends with the test process; connections are kept open.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(conn);
            }
        });
        Silent { addr, accepted }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Runs `cmd`, killing it (and failing the test) if it runs past `limit`:
/// a hang is a failure, not a stuck test run.
async fn output_within(cmd: Command, limit: Duration) -> Output {
    let mut child = {
        let mut cmd = cmd;
        cmd.spawn().expect("spawn turnstile")
    };
    let pid = child.id();
    let waited = tokio::time::timeout(limit, async {
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if waited.is_err() {
        sigkill(pid);
        let out = child.wait_with_output().expect("output");
        panic!("turnstile still running after {limit:?}; stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    child.wait_with_output().expect("output")
}

/// A coordinator that accepts connections but never answers: `lock` (with
/// and without --wait), `get` and `release` give up after --timeout, exit 125
/// and name the address; they do not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_never_answers_fails_after_the_call_timeout() {
    let silent = Silent::new();
    let url = silent.url();
    let cases: [&[&str]; 4] = [
        &["--timeout", "300ms", "lock", "k", "--", "true"],
        &["--timeout", "300ms", "lock", "--wait", "1m", "k", "--", "true"],
        &["--timeout", "300ms", "get", "k"],
        &["--timeout", "300ms", "release", "k", "7"],
    ];
    for args in cases {
        // The limit is the test's guard against a hang, far above the timeout.
        let out = output_within(turnstile(&url, args), Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(stderr.contains(&silent.addr.to_string()), "{args:?}: the address is named: {stderr}");
        assert!(stderr.contains("no answer"), "{args:?}: {stderr}");
    }
    assert!(silent.accepted() > 0, "the listener was reached");
}

/// A duration in a message is rounded as a person reads it (`1.5s`), not
/// printed to the nanosecond (`1s 499ms 999us 780ns`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_in_messages_are_rounded_for_people() {
    let silent = Silent::new();
    let url = silent.url();
    let cases: [&[&str]; 4] = [
        &["--timeout", "1500ms", "release", "--force", "k"],
        &["--timeout", "1500ms", "release", "k", "7"],
        &["--timeout", "1500ms", "get", "k"],
        &["--timeout", "1500ms", "lock", "k", "--", "true"],
    ];
    for args in cases {
        let out = output_within(turnstile(&url, args), Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(stderr.contains("within 1.5s"), "{args:?}: {stderr}");
        let debris = stderr.split(|c: char| !c.is_alphanumeric()).find(|w| {
            let unit = w.trim_start_matches(|c: char| c.is_ascii_digit());
            unit.len() < w.len() && ["us", "ns", "µs"].contains(&unit)
        });
        assert_eq!(debris, None, "{args:?}: no micro- or nanoseconds in {stderr:?}");
    }
}

/// A refused connection is said in words with the address, not as a Debug
/// dump of the transport's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_coordinator_is_named_in_words() {
    let refused = turnstile_testkit::RefusedPort::new();
    let url = refused.url();
    let addr = url.trim_start_matches("http://").to_owned();
    for args in [&["--timeout", "300ms", "get", "k"][..], &["--timeout", "300ms", "lock", "k", "--", "true"]] {
        let out = output_within(turnstile(&url, args), Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        let want = format!("cannot reach turnstiled at {addr}: connection refused");
        assert!(stderr.contains(&want), "{args:?}: want {want:?} in {stderr:?}");
        for debris in ["os error", "Status {", "ConnectError", "tcp connect error", "transport error"] {
            assert!(!stderr.contains(debris), "{args:?}: no {debris:?} in {stderr:?}");
        }
    }
}

/// An empty key is a usage error (exit 2, saying so) found before any
/// connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_key_is_a_usage_error_before_any_connection() {
    let silent = Silent::new();
    let url = silent.url();
    let cases: [&[&str]; 5] = [
        &["lock", "", "--", "true"],
        &["get", ""],
        &["release", "", "7"],
        &["release", "--force", ""],
        &["lock", "--wait", "0", "", "--", "true"],
    ];
    for args in cases {
        let out = output_within(turnstile(&url, args), Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("key") && stderr.contains("empty"), "{args:?}: {stderr}");
    }
    assert_eq!(silent.accepted(), 0, "no connection was made");
}

/// A fencing token of 0 (never granted: tokens start at 1) or one that is not
/// a number is a usage error (exit 2, naming the token) found before any
/// connection is made, like an empty key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_or_unparsable_fencing_token_is_a_usage_error_before_any_connection() {
    let silent = Silent::new();
    let url = silent.url();
    let cases: [&[&str]; 5] = [
        &["release", "k", "0"],
        &["release", "--force", "k", "0"],
        &["release", "k", "x"],
        &["release", "k", "-1"],
        &["release", "k", "18446744073709551616"],
    ];
    for args in cases {
        let out = output_within(turnstile(&url, args), Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("TOKEN"), "{args:?}: {stderr}");
    }
    assert_eq!(silent.accepted(), 0, "no connection was made");
}

/// `get` while the coordinator holds back every grant after a crash says
/// so, with the seconds left, besides the key's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_during_crash_recovery_says_the_coordinator_is_recovering() {
    let dir = TempDir::new("cli-recovering");
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let node = turnstile_testkit::Turnstiled::start(["--data-dir", &path]);
    let c =
        turnstile_client::Client::builder(node.url()).ttl(Duration::from_secs(30)).connect().await.expect("connect");
    std::mem::forget(c.lock("rec:held").await.expect("lock")); // held when the coordinator crashes
    node.kill();
    let node = turnstile_testkit::Turnstiled::start(["--data-dir", &path]);
    let out = output(turnstile(&node.url(), &["get", "rec:free"])).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.lines().nth(1).is_some_and(|l| l.starts_with("rec:free")), "the table as usual: {stdout}");
    assert!(stderr.contains("recovering") && stderr.contains("seconds"), "{stderr}");
    let out = output(turnstile(&node.url(), &["get", "rec:free", "--json"])).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["grants_resume_in_ms"].as_u64().is_some_and(|ms| ms > 0 && ms <= 80_000), "{v}");

    // Once grants resume, nothing is said.
    let healthy = server();
    let out = output(turnstile(&healthy.url(), &["get", "rec:free"])).await;
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = output(turnstile(&healthy.url(), &["get", "rec:free", "--json"])).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["grants_resume_in_ms"].is_null(), "{v}");
}

/// `release --force KEY` (admin): ends whatever lease holds KEY, as an
/// expiry would, and says whose it was; `release --force KEY TOKEN` only that
/// lease; a free key exits 1. `release KEY TOKEN` is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_force_frees_a_stuck_key() {
    let node = server();
    let url = node.url();
    let c = client(&node, TTL).await;
    let stuck = c.lock("force:1").await.expect("lock");
    let token = stuck.fencing_token();
    let other = (token + 100).to_string();
    let out = output(turnstile(&url, &["release", "--force", "force:1", &other])).await;
    assert_eq!(out.status.code(), Some(1), "another token: {}", String::from_utf8_lossy(&out.stderr));
    assert!(c.get("force:1").await.expect("get").holder.is_some_and(|h| h.fencing_token == token));

    let out = output(turnstile(&url, &["release", "--force", "force:1"])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("force:1") && stdout.contains(stuck.owner()) && stdout.contains(&token.to_string()),
        "{stdout}"
    );
    assert!(c.get("force:1").await.expect("get").holder.is_none());
    within(Duration::from_secs(10), "the guard learns it lost the lease", stuck.lost()).await;

    let out = output(turnstile(&url, &["release", "--force", "force:1"])).await;
    assert_eq!(out.status.code(), Some(1), "nothing held: {}", String::from_utf8_lossy(&out.stdout));
    // Without --force a token is still required.
    let out = output(turnstile(&url, &["release", "force:1"])).await;
    assert_eq!(out.status.code(), Some(2));
}
