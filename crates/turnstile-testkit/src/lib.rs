//! Test support for turnstile: starts real `turnstiled` processes on free
//! loopback ports and stops them with SIGTERM or SIGKILL.
//!
//! # Layout
//! - [`Turnstiled`]: one `turnstiled` child process, with the addresses it
//!   bound (it prints them on its first stdout line).
//! - [`InProcess`]: the server run in the test process on free loopback
//!   ports, on a runtime of its own, with a process's lifecycle (stop, kill).
//! - [`TempDir`]: a directory removed on drop (on disk, or in memory).
//! - [`RefusedPort`]: a loopback address where connections are refused.
//! - [`turnstiled_bin`]: where the binary is, building it if missing.
//! - [`Etcd`] (module `etcd`): a real etcd on free loopback ports with a
//!   temporary data dir, with stop, kill, pause and restart; over TLS
//!   ([`Etcd::start_tls`]) and with users and `auth enable`
//!   ([`Etcd::enable_auth`], through etcdctl).
//! - [`TestCa`] (module `pki`): a CA and certificates made in the test, for TLS.
//! - [`eventually`]: polls a condition until it holds, with a deadline.
//! - [`history`]: a recorder of client operations on one monotonic clock and
//!   a checker of the lock model (no overlap, growing tokens, fenced writes).
//!
//! Nothing here sleeps to wait for a state: start-up is awaited by reading the
//! process's ready line, exit by `wait()`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

mod etcd;
pub mod history;
mod inprocess;
mod pki;
pub use etcd::{etcd_bin, etcdctl_bin, Etcd, EtcdTls, ETCDCTL_MISSING, ETCD_MISSING, ETCD_ROOT_PASSWORD};
pub use inprocess::{Bound, InProcess, Ready, Shutdown};
pub use pki::{TestCa, TestCert};

/// Polls `check` every 10 ms until it returns `Some`, failing the test with
/// `what` once `within` has passed: a wait for a state, never a sleep.
pub async fn eventually<T, F, Fut>(what: &str, within: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The `turnstiled` binary of this workspace's target dir, built once with
/// cargo if it is not there yet (e.g. `cargo test -p turnstile-client`).
pub fn turnstiled_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("TURNSTILED_BIN") {
            return PathBuf::from(p);
        }
        // Test binaries live in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps layout").to_owned();
        let bin = profile_dir.join(format!("turnstiled{}", std::env::consts::EXE_SUFFIX));
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args(["build", "-q", "-p", "turnstile-server", "--bin", "turnstiled"]);
        if release {
            cmd.arg("--release");
        }
        // Always ask cargo: it is a no-op when the binary is up to date, and
        // it rebuilds a stale one.
        let status = cmd.status().expect("run cargo to build turnstiled");
        assert!(status.success(), "building turnstiled failed");
        assert!(bin.exists(), "turnstiled not found at {}", bin.display());
        bin
    })
    .clone()
}

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir, named after `label`.
    pub fn new(label: &str) -> TempDir {
        TempDir::under(&std::env::temp_dir(), label)
    }

    /// A new empty directory in memory (`/dev/shm`) where the system has
    /// one, else as [`TempDir::new`]: for tests that write and fsync state
    /// thousands of times, where a disk's fsync would dominate.
    pub fn in_memory(label: &str) -> TempDir {
        let shm = Path::new("/dev/shm");
        TempDir::under(if shm.is_dir() { shm } else { Path::new("") }, label)
    }

    fn under(base: &Path, label: &str) -> TempDir {
        use std::hash::{BuildHasher, RandomState};
        let base = if base.as_os_str().is_empty() { std::env::temp_dir() } else { base.to_owned() };
        let nonce = RandomState::new().hash_one(std::time::SystemTime::now());
        let p = base.join(format!("turnstile-{label}-{}-{nonce:x}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port that refuses connections: its socket is bound but never
/// listens, so connects get `ECONNREFUSED`, and no other server can be handed
/// the port while this value lives (unlike a port bound and freed again).
#[derive(Debug)]
pub struct RefusedPort {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl RefusedPort {
    /// Binds a fresh loopback port without listening on it.
    pub fn new() -> RefusedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("create a TCP socket");
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a loopback port");
        let addr = socket.local_addr().expect("bound address");
        RefusedPort { _socket: socket, addr }
    }

    /// `http://<addr>`, for gRPC clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Default for RefusedPort {
    fn default() -> Self {
        RefusedPort::new()
    }
}

/// A running `turnstiled` child process. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Turnstiled {
    child: Child,
    /// The gRPC address it listens on.
    pub grpc: SocketAddr,
    /// The HTTP address (metrics, health) it listens on.
    pub http: SocketAddr,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Turnstiled {
    /// Starts `turnstiled` on free loopback ports with `args` appended
    /// (e.g. `["--data-dir", dir]`) and waits for its ready line.
    pub fn start<I, S>(args: I) -> Turnstiled
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Self::try_start(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Turnstiled::start`], but a process that exits before it is ready
    /// is an `Err` with its exit status and stderr.
    pub fn try_start<I, S>(args: I) -> Result<Turnstiled, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Self::try_start_with_env(args, std::iter::empty::<(&str, &str)>())
    }

    /// As [`Turnstiled::try_start`], with `envs` added to its environment
    /// (e.g. a `TURNSTILE_*` variable that should not be a flag).
    pub fn try_start_with_env<I, S, E, K, V>(args: I, envs: E) -> Result<Turnstiled, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let mut child = Command::new(turnstiled_bin())
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--log", "warn"])
            .args(args)
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn turnstiled: {e}"))?;
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let field = |name: &str| {
            line.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|a| a.parse::<SocketAddr>().ok())
        };
        match (field("grpc="), field("http=")) {
            (Some(grpc), Some(http)) => Ok(Turnstiled { child, grpc, http, stderr: Some(stderr) }),
            _ => {
                let status = child.wait().map_err(|e| e.to_string())?;
                let err = stderr.join().unwrap_or_default();
                Err(format!("turnstiled did not start ({status}): {line}{err}"))
            }
        }
    }

    /// `http://<grpc addr>`, for gRPC clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. `libc::SIGSTOP`).
    pub fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// SIGTERM, then waits for exit: the graceful shutdown path.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("wait for turnstiled");
        (status, self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default())
    }

    /// SIGKILL, then waits for exit: a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Turnstiled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
