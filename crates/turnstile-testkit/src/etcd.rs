//! [`Etcd`]: a real single-member etcd on free loopback ports with a
//! temporary data dir, that tests can stop, kill, pause and restart; served
//! over TLS (optionally demanding client certificates) with
//! [`Etcd::start_tls`], with users and `auth enable` by [`Etcd::enable_auth`]
//! (through `etcdctl`).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{TempDir, TestCa};

/// How to get etcd when it is missing: every test that needs it fails with this.
pub const ETCD_MISSING: &str = "etcd not found: the etcd backend tests start a real etcd server. \
Install Debian's package with `apt-get install -y etcd-server` (it puts `etcd` in /usr/bin), \
or point ETCD_BIN at an etcd 3.4+ binary";

/// How to get etcdctl when it is missing.
pub const ETCDCTL_MISSING: &str = "etcdctl not found: the etcd auth tests set up users with it. \
Install Debian's package with `apt-get install -y etcd-client`, or point ETCDCTL_BIN at an etcdctl 3.4+ binary";

/// The password [`Etcd::enable_auth`] gives etcd's `root` user.
pub const ETCD_ROOT_PASSWORD: &str = "root-secret";

/// How long etcd may take to become ready (it is usually well under a second).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The line etcd logs once it serves client requests (3.4 and 3.5, capnslog and zap).
const READY_LINE: &str = "ready to serve client requests";

/// The etcd binary: `$ETCD_BIN`, else `etcd` on `PATH`. Panics with
/// [`ETCD_MISSING`] when there is none: tests that need etcd fail, never skip.
pub fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{ETCD_MISSING} (ETCD_BIN={} does not exist)", p.display());
        return p;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{ETCD_MISSING}"))
}

/// The etcdctl binary: `$ETCDCTL_BIN`, else `etcdctl` on `PATH`. Panics with
/// [`ETCDCTL_MISSING`] when there is none.
pub fn etcdctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCDCTL_BIN") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("etcdctl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{ETCDCTL_MISSING}"))
}

/// The TLS files of an etcd started with [`Etcd::start_tls`], all PEM, in
/// its temporary dir.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA that signed etcd's certificate (and, with client certificate
    /// auth, the one etcd trusts for clients): `--etcd-ca`.
    pub ca: PathBuf,
    /// A client certificate of that CA, for 127.0.0.1: `--etcd-cert`.
    pub client_cert: PathBuf,
    /// Its key: `--etcd-key`.
    pub client_key: PathBuf,
    /// Whether etcd demands a client certificate (`--client-cert-auth`).
    pub client_cert_auth: bool,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// A running single-member etcd. Killed (SIGKILL) on drop, data dir removed.
///
/// Readiness is awaited by reading etcd's log for its "ready to serve client
/// requests" line, never by sleeping.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    dir: TempDir,
    /// The client address (`--listen-client-urls`).
    pub client: SocketAddr,
    peer: SocketAddr,
    metrics: SocketAddr,
    log: Arc<Mutex<String>>,
    tls: Option<EtcdTls>,
}

/// A free loopback port: bound, then released for etcd to take. Another
/// process could take it in between; [`Etcd::start`] retries with new ports.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a free loopback port")
}

impl Etcd {
    /// Starts etcd on free loopback ports with a new temporary data dir and
    /// waits until it serves clients.
    pub fn start() -> Etcd {
        Etcd::start_with(|_| None)
    }

    /// Starts etcd serving clients over TLS only (`https://`), with a
    /// certificate for 127.0.0.1 signed by `ca`; with `client_cert_auth`
    /// etcd also demands a client certificate signed by `ca`
    /// (`--client-cert-auth --trusted-ca-file`). [`Etcd::tls`] has the files.
    pub fn start_tls(ca: &TestCa, client_cert_auth: bool) -> Etcd {
        Etcd::start_with(|dir| {
            let (server_cert, server_key) = ca.issue(&["127.0.0.1", "localhost"]).write(dir, "etcd-server");
            let (client_cert, client_key) = ca.issue(&["turnstile-client"]).write(dir, "etcd-client");
            let ca = ca.write(&dir.join("etcd-ca.pem"));
            Some(EtcdTls { ca, client_cert, client_key, client_cert_auth, server_cert, server_key })
        })
    }

    fn start_with(tls: impl Fn(&Path) -> Option<EtcdTls>) -> Etcd {
        let mut last_err = String::new();
        for _ in 0..5 {
            let dir = TempDir::new("etcd");
            let tls = tls(dir.path());
            let mut etcd = Etcd {
                child: None,
                dir,
                client: free_port(),
                peer: free_port(),
                metrics: free_port(),
                log: Arc::default(),
                tls,
            };
            match etcd.spawn() {
                Ok(()) => return etcd,
                // Most likely a port taken between free_port() and etcd's bind.
                Err(e) => last_err = e,
            }
        }
        panic!("etcd did not start: {last_err}");
    }

    /// `http://<client addr>` (`https://` when started with
    /// [`Etcd::start_tls`]), for `--etcd-endpoints`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// The TLS files, when started with [`Etcd::start_tls`].
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// Runs `etcdctl` against this etcd (with its TLS files, if any), as
    /// `user` (`name:password`) if given, and returns its stdout; panics with
    /// its output if it fails.
    pub fn etcdctl(&self, user: Option<&str>, args: &[&str]) -> String {
        let mut cmd = Command::new(etcdctl_bin());
        cmd.env("ETCDCTL_API", "3").arg("--endpoints").arg(self.url()).arg("--dial-timeout=5s");
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert").arg(&tls.ca).arg("--cert").arg(&tls.client_cert).arg("--key").arg(&tls.client_key);
        }
        if let Some(user) = user {
            cmd.arg("--user").arg(user);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{ETCDCTL_MISSING} ({e})"));
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed ({}): {}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Turns on etcd's authentication: a `root` user (password
    /// [`ETCD_ROOT_PASSWORD`]), and `user` with `password` whose role may
    /// read and write every key under `prefix`, and nothing else.
    pub fn enable_auth(&self, user: &str, password: &str, prefix: &str) {
        self.etcdctl(None, &["user", "add", &format!("root:{ETCD_ROOT_PASSWORD}")]);
        self.etcdctl(None, &["user", "add", &format!("{user}:{password}")]);
        self.etcdctl(None, &["role", "add", "turnstile-locks"]);
        self.etcdctl(None, &["role", "grant-permission", "turnstile-locks", "readwrite", "--prefix=true", prefix]);
        self.etcdctl(None, &["user", "grant-role", user, "turnstile-locks"]);
        self.etcdctl(None, &["auth", "enable"]);
    }

    /// `root:<password>`, for [`Etcd::etcdctl`] once auth is enabled.
    pub fn root() -> String {
        format!("root:{ETCD_ROOT_PASSWORD}")
    }

    /// What etcd logged so far (for failure messages).
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// etcd's Prometheus metrics (the `/metrics` page of its metrics listener).
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(self.metrics).expect("connect to etcd's metrics listener");
        write!(conn, "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.metrics).expect("ask etcd for metrics");
        let mut page = String::new();
        conn.read_to_string(&mut page).expect("read etcd's metrics");
        page
    }

    /// The sum of the samples of metric `name` whose labels include every one
    /// of `labels` (each written as in the exposition format: `grpc_method="Txn"`).
    pub fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| {
                series.split('{').next() == Some(name) && labels.iter().all(|want| series.contains(want))
            })
            .filter_map(|(_, value)| value.parse::<f64>().ok())
            .sum()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (not stopped or killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let url = |a: SocketAddr| format!("http://{a}");
        let mut cmd = Command::new(etcd_bin());
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(&tls.server_cert).arg("--key-file").arg(&tls.server_key);
            if tls.client_cert_auth {
                cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(&tls.ca);
            }
        }
        let mut child = cmd
            .arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url(), "--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &url(self.peer), "--initial-advertise-peer-urls", &url(self.peer)])
            .args(["--initial-cluster", &format!("t={}", url(self.peer))])
            .args(["--listen-metrics-urls", &url(self.metrics)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{ETCD_MISSING} (spawning it failed: {e})"))?;
        let stderr = child.stderr.take().ok_or("etcd stderr not piped")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let log = self.log.clone();
        // Reads etcd's log to the end (so it never blocks on a full pipe),
        // announcing the ready line once.
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(READY_LINE) {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(format!(
                    "etcd exited or was not ready within {READY_TIMEOUT:?} ({status}); its log:\n{}",
                    self.log()
                ))
            }
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
            // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// SIGTERM, then waits for exit: a clean stop. [`Etcd::restart`] brings it back.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// SIGKILL, then waits for exit: a crash. [`Etcd::restart`] brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: etcd hangs with its sockets open (a partition, as clients see it).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Etcd::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Starts etcd again on the same ports with the same data dir (after
    /// [`Etcd::stop`] or [`Etcd::kill`]; a running one is killed first) and
    /// waits until it serves clients.
    pub fn restart(&mut self) {
        self.kill();
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push_str("--- restart ---\n");
        // The old process's ports are free once it has exited; a few tries
        // cover a socket the kernel is still releasing.
        let mut last_err = String::new();
        for _ in 0..3 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last_err = e,
            }
        }
        panic!("etcd did not restart: {last_err}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}
