//! The `turnstiled` under test (memory backend, one data dir for every
//! start) and the faults done to it: SIGKILL and restart, SIGTERM, SIGSTOP,
//! and a data dir turned read-only while it runs.
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
    /// Starts `turnstiled --data-dir <new temp dir> <extra…>`.
    pub(crate) fn start(extra: &[&str]) -> Node {
        let dir = TempDir::new("chaos");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let t = Turnstiled::start(args(dir.path(), &extra));
        let current = RwLock::new(current_of(&t));
        Node { dir, extra, process: Mutex::new(Some(t)), current }
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
