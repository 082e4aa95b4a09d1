//! The `turnstiled` under test (memory backend, one data dir for every
//! start) and the faults done to it: SIGKILL and restart, SIGTERM, SIGSTOP,
//! a data dir turned read-only or full while it runs, and a `state.json`
//! lost while it is stopped.
//!
//! Shared by the `chaos` binary and `turnstile-server/tests/chaos.rs`; each
//! uses a part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, RwLock};

use tonic::transport::{Channel, Endpoint};
use turnstile_proto::v1::lock_service_client::LockServiceClient;
use turnstile_testkit::{TempDir, Turnstiled};

/// One `turnstiled` over a data dir kept across restarts. Clients take a
/// fresh [`Node::client`] per call, so after a restart (new port) they reach
/// the new process.
pub(crate) struct Node {
    // Declared before `dir`: unmounted before the dir is removed.
    tmpfs: Option<Tmpfs>,
    tmpfs_error: Option<String>,
    dir: TempDir,
    extra: Vec<String>,
    // std locks: held only to swap or clone, never across an await.
    process: Mutex<Option<Turnstiled>>,
    current: RwLock<Current>,
}

#[derive(Clone)]
struct Current {
    client: LockServiceClient<Channel>,
    pid: u32,
    http: SocketAddr,
}

impl Node {
    /// Starts `turnstiled --data-dir <new temp dir> <extra…>`. With
    /// `tmpfs_kib`, the data dir is a tmpfs of that size (so that it can be
    /// filled); where that cannot be mounted it is a plain dir, and
    /// [`Node::fill`] says why it cannot fill it.
    pub(crate) fn start(extra: &[&str], tmpfs_kib: Option<u64>) -> Node {
        let dir = TempDir::new("chaos");
        let (tmpfs, tmpfs_error) = match tmpfs_kib.map(|kib| Tmpfs::mount(dir.path(), kib)) {
            None => (None, None),
            Some(Ok(m)) => (Some(m), None),
            Some(Err(e)) => (None, Some(e)),
        };
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let t = Turnstiled::start(args(dir.path(), &extra));
        let current = RwLock::new(current_of(&t));
        Node { tmpfs, tmpfs_error, dir, extra, process: Mutex::new(Some(t)), current }
    }

    /// The data dir.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client of the process running now.
    pub(crate) fn client(&self) -> LockServiceClient<Channel> {
        self.current.read().expect("node lock").client.clone()
    }

    /// The pid of the process running now.
    pub(crate) fn pid(&self) -> u32 {
        self.current.read().expect("node lock").pid
    }

    /// Whether a process is running (not killed, stopped or refused).
    pub(crate) fn running(&self) -> bool {
        self.process.lock().expect("node lock").is_some()
    }

    /// SIGKILL (a crash), waited for.
    pub(crate) fn kill(&self) {
        if let Some(t) = self.process.lock().expect("node lock").take() {
            t.kill();
        }
    }

    /// SIGTERM (graceful stop), waited for; returns its exit status and stderr.
    pub(crate) fn terminate(&self) -> Option<(std::process::ExitStatus, String)> {
        self.process.lock().expect("node lock").take().map(Turnstiled::terminate)
    }

    /// Starts a new process on the same data dir (after [`Node::kill`] or
    /// [`Node::terminate`]); an `Err` carries its exit status and stderr.
    pub(crate) fn restart(&self) -> Result<u32, String> {
        let mut process = self.process.lock().expect("node lock");
        if let Some(old) = process.take() {
            old.kill();
        }
        let t = Turnstiled::try_start(args(self.dir.path(), &self.extra))?;
        *self.current.write().expect("node lock") = current_of(&t);
        let pid = t.pid();
        *process = Some(t);
        Ok(pid)
    }

    /// If the process running now exited by itself (it is a zombie
    /// waiting to be reaped), reaps it: its pid, exit status and stderr.
    pub(crate) fn exited_on_its_own(&self) -> Option<(u32, std::process::ExitStatus, String)> {
        let mut process = self.process.lock().expect("node lock");
        let pid = process.as_ref()?.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The state is the first field after the command name's closing parenthesis.
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
        if state != "Z" {
            return None;
        }
        process.take().map(Turnstiled::terminate).map(|(status, stderr)| (pid, status, stderr))
    }

    /// Sends `sig` (e.g. `libc::SIGSTOP`) to the process running now.
    pub(crate) fn signal(&self, sig: i32) {
        if let Some(t) = self.process.lock().expect("node lock").as_ref() {
            t.signal(sig);
        }
    }

    /// `/readyz` of the process running now: (status code, body).
    pub(crate) fn readyz(&self) -> std::io::Result<(u16, String)> {
        let addr = self.current.read().expect("node lock").http;
        let mut s = TcpStream::connect(addr)?;
        write!(s, "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_owned()).unwrap_or_default();
        Ok((code, body))
    }

    /// The lost-state fault: SIGTERM (a snapshot is written), `state.json`
    /// moved away, a start that must be refused (non-zero exit, naming
    /// `state.json`), the file put back, and a start that must succeed.
    /// `Ok` describes what happened; `Err` is a refusal that did not happen.
    pub(crate) fn lose_state_while_stopped(&self) -> Result<String, String> {
        let old = self.pid();
        let began = std::time::Instant::now();
        let stopped = self
            .terminate()
            .map(|(status, stderr)| {
                let drain = stderr.lines().find(|l| l.contains("did not finish")).map_or("", |_| ", drain timed out");
                format!("{status} after {:.0} ms{drain}", began.elapsed().as_secs_f64() * 1e3)
            })
            .unwrap_or_default();
        let state = self.dir.path().join("state.json");
        let aside = self.dir.path().join(".chaos-state.json.saved");
        std::fs::rename(&state, &aside).map_err(|e| format!("moving {} away: {e}", state.display()))?;
        let refused = match self.restart() {
            Err(e) if e.contains("state.json") && !e.contains("exit status: 0") => Ok(e),
            Err(e) => Err(format!("turnstiled refused to start without state.json, but without naming it: {e}")),
            Ok(pid) => {
                self.kill();
                Err(format!(
                    "turnstiled pid {pid} STARTED on a data dir whose state.json was lost (a snapshot was there): it must refuse"
                ))
            }
        };
        std::fs::rename(&aside, &state).map_err(|e| format!("putting {} back: {e}", state.display()))?;
        let new = self.restart().map_err(|e| format!("turnstiled did not start with state.json put back: {e}"))?;
        let refused = refused?;
        let why = refused.lines().find(|l| l.contains("state.json")).unwrap_or(&refused).trim();
        let status = refused.split_once("did not start (").and_then(|(_, r)| r.split_once(')')).map_or("", |(s, _)| s);
        Ok(format!(
            "SIGTERM pid {old} ({stopped}); state.json moved away; start refused ({status}: {}); state.json put back; restarted as pid {new}",
            why.chars().take(160).collect::<String>()
        ))
    }

    /// Fills the data dir (a small tmpfs) so that no state write fits.
    pub(crate) fn fill(&self) -> Result<Full, String> {
        let Some(tmpfs) = &self.tmpfs else {
            return Err(self.tmpfs_error.clone().unwrap_or_else(|| "the data dir is not a tmpfs".into()));
        };
        Full::apply(self.dir.path(), tmpfs.kib)
    }
}

impl crate::client::Target for Node {
    fn client(&self) -> LockServiceClient<Channel> {
        Node::client(self)
    }
}

/// A small tmpfs mounted on a dir, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
    kib: u64,
}

impl Tmpfs {
    fn mount(dir: &Path, kib: u64) -> Result<Tmpfs, String> {
        let d = dir.to_str().expect("utf-8 path");
        run("mount", &["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0755"), "chaos-data", d])?;
        Ok(Tmpfs { dir: dir.to_owned(), kib })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = run("umount", &["-l", self.dir.to_str().expect("utf-8 path")]) {
            eprintln!("chaos: could not unmount the tmpfs on {}: {e}", self.dir.display());
        }
    }
}

/// A data dir filled up by a file in it, until dropped.
#[derive(Debug)]
pub(crate) struct Full {
    filler: PathBuf,
    /// Bytes the filler took.
    pub(crate) bytes: u64,
}

impl Full {
    fn apply(dir: &Path, kib: u64) -> Result<Full, String> {
        let filler = dir.join(".chaos-filler");
        let mut f = std::fs::File::create(&filler).map_err(|e| format!("creating {}: {e}", filler.display()))?;
        let chunk = [0u8; 4096];
        let mut bytes = 0u64;
        // Page by page until the tmpfs is full: its size is a few pages, so
        // this ends quickly; the bound is a guard against a tmpfs that never fills.
        while bytes <= kib * 1024 {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(format!("filling {}: {e}", filler.display())),
            }
        }
        let full = Full { filler, bytes };
        if writable(dir) {
            return Err(format!("{bytes} bytes written into the data dir, yet a file could still be written"));
        }
        Ok(full)
    }
}

impl Drop for Full {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.filler) {
            eprintln!("chaos: could not remove {}: {e}", self.filler.display());
        }
    }
}

fn args(dir: &Path, extra: &[String]) -> Vec<String> {
    let mut a = vec!["--data-dir".to_owned(), dir.to_str().expect("utf-8 temp path").to_owned()];
    a.extend(extra.iter().cloned());
    a
}

fn current_of(t: &Turnstiled) -> Current {
    let client = LockServiceClient::new(Endpoint::from_shared(t.url()).expect("valid url").connect_lazy());
    Current { client, pid: t.pid(), http: t.http }
}

/// How a data dir was made read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOnlyHow {
    /// `chmod a-w` (enough when not running as root).
    Chmod,
    /// A read-only bind mount over the dir (root: chmod does not stop root).
    BindMount,
    /// `chattr +i` on the dir (no new or renamed entries).
    Immutable,
}

/// Why the data dir could not be made read-only: each way tried, and what stopped it.
#[derive(Debug, Clone)]
pub(crate) struct ReadOnlyImpossible {
    /// (way, why it did not stop writes).
    pub(crate) tried: Vec<(ReadOnlyHow, String)>,
}

impl std::fmt::Display for ReadOnlyImpossible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not make the data dir read-only:")?;
        for (how, why) in &self.tried {
            write!(f, " {how:?}: {why};")?;
        }
        Ok(())
    }
}

/// A data dir made read-only until dropped.
#[derive(Debug)]
pub(crate) struct ReadOnly {
    dir: PathBuf,
    how: ReadOnlyHow,
}

impl ReadOnly {
    /// Makes `dir` read-only by the first way that really stops writes
    /// (checked by trying to create a file in it).
    pub(crate) fn apply(dir: &Path) -> Result<ReadOnly, ReadOnlyImpossible> {
        let mut tried = Vec::new();
        for how in [ReadOnlyHow::Chmod, ReadOnlyHow::BindMount, ReadOnlyHow::Immutable] {
            let ro = ReadOnly { dir: dir.to_owned(), how };
            if let Err(e) = ro.set(true) {
                tried.push((how, e));
                continue;
            }
            if writable(dir) {
                tried.push((how, "applied, but a file could still be created (running as root?)".into()));
                drop(ro);
                continue;
            }
            return Ok(ro);
        }
        Err(ReadOnlyImpossible { tried })
    }

    /// How it was done.
    pub(crate) fn how(&self) -> ReadOnlyHow {
        self.how
    }

    fn set(&self, on: bool) -> Result<(), String> {
        let d = self.dir.to_str().expect("utf-8 path");
        match (self.how, on) {
            (ReadOnlyHow::Chmod, on) => {
                use std::os::unix::fs::PermissionsExt;
                let mode = if on { 0o555 } else { 0o755 };
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
            }
            (ReadOnlyHow::BindMount, true) => {
                run("mount", &["--bind", d, d])?;
                run("mount", &["-o", "remount,bind,ro", d]).inspect_err(|_| {
                    let _ = run("umount", &["-l", d]);
                })
            }
            // Lazy: turnstiled may hold a file open under the mount, and a
            // plain umount would then leave it stacked there for good.
            (ReadOnlyHow::BindMount, false) => run("umount", &["-l", d]),
            (ReadOnlyHow::Immutable, on) => run("chattr", &[if on { "+i" } else { "-i" }, d]),
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if let Err(e) = self.set(false) {
            eprintln!("chaos: could not undo {:?} on {}: {e}", self.how, self.dir.display());
        }
    }
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(".chaos-write-probe");
    let ok = std::fs::write(&probe, b"x").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {} {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}
