//! The etcd backend under test: one real etcd and three `turnstiled
//! --backend etcd` sidecars, each sidecar in a network namespace of its own
//! joined to the host by two veth pairs, one to etcd and one to its clients,
//! so that a sidecar can be cut off from etcd while its clients still reach
//! it. And the faults done to them: SIGKILL of etcd or of a sidecar (and a
//! restart), SIGSTOP of a sidecar, and a partition between a sidecar and etcd.
//!
//! Shared by the `chaos` binary and `turnstile-server/tests/chaos.rs`; each
//! uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use turnstile_proto::v1::lock_service_client::LockServiceClient;
use turnstile_testkit::{etcd_bin, turnstiled_bin, TempDir};

use crate::netns::Netns;

/// How long etcd or a sidecar may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What etcd logs once it serves clients (3.4 and 3.5).
const ETCD_READY: &str = "ready to serve client requests";

/// Where the sidecars listen inside their namespaces (each has its own address).
const SIDECAR_GRPC_PORT: u16 = 7700;
const SIDECAR_HTTP_PORT: u16 = 7701;

/// A child process whose stderr is kept (the last 64 KiB) for reports.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` (stdin null, stdout and stderr piped) and waits until a
    /// line containing `ready` appears on stdout (`on_stdout`) or stderr.
    fn spawn(mut cmd: Command, ready: &'static str, on_stdout: bool) -> Result<(Proc, String), String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning {:?}: {e}", cmd.get_program()))?;
        let (tx, rx) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipes: [(Box<dyn std::io::Read + Send>, bool); 2] = [
            (Box::new(child.stdout.take().expect("piped stdout")), true),
            (Box::new(child.stderr.take().expect("piped stderr")), false),
        ];
        for (pipe, is_stdout) in pipes {
            let (tx, keep) = (tx.clone(), (!is_stdout).then(|| stderr.clone()));
            let watch = is_stdout == on_stdout;
            // Reads the pipe to its end, so the child never blocks on it.
            std::thread::spawn(move || {
                let mut tx = watch.then_some(tx);
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if line.contains(ready) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(line.clone());
                        }
                    }
                    if let Some(keep) = &keep {
                        let mut s = keep.lock().unwrap_or_else(|p| p.into_inner());
                        if s.len() > 64 * 1024 {
                            s.drain(..32 * 1024);
                        }
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        drop(tx);
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => Ok((Proc { child, stderr }, line)),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                let err = stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
                Err(format!("{:?} did not become ready ({status}); stderr:\n{err}", cmd.get_program()))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, sig);
        }
    }

    fn kill(mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its exit status and the end of its stderr, if it exited by itself.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        // Let the reader threads catch up with the last lines.
        std::thread::sleep(Duration::from_millis(50));
        let err = self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let tail: Vec<&str> = err.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
        Some(format!("{status}; stderr ends: {}", tail.join(" | ")))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One etcd on the host, listening on loopback and on the host end of every
/// sidecar's etcd link.
struct EtcdProc {
    dir: TempDir,
    client_port: u16,
    peer: SocketAddr,
    listen: Vec<String>,
    proc: Option<Proc>,
}

impl EtcdProc {
    fn start(hosts: &[std::net::Ipv4Addr]) -> Result<EtcdProc, String> {
        let mut last = String::new();
        for _ in 0..5 {
            let port = |ip: &str| {
                TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).map_err(|e| format!("a free port: {e}"))
            };
            let client_port = port("127.0.0.1")?.port();
            let mut listen = vec![format!("http://127.0.0.1:{client_port}")];
            listen.extend(hosts.iter().map(|h| format!("http://{h}:{client_port}")));
            let mut etcd = EtcdProc {
                dir: TempDir::in_memory("chaos-etcd"),
                client_port,
                peer: port("127.0.0.1")?,
                listen,
                proc: None,
            };
            match etcd.spawn() {
                Ok(()) => return Ok(etcd),
                Err(e) => last = e,
            }
        }
        Err(format!("etcd did not start: {last}"))
    }

    fn spawn(&mut self) -> Result<(), String> {
        let peer = format!("http://{}", self.peer);
        let mut cmd = Command::new(etcd_bin());
        cmd.args(["--name", "chaos", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.listen.join(","), "--advertise-client-urls", &self.listen[0]])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("chaos={peer}")])
            // Election timeout 500 ms: etcd's shortest lease is then 1 s,
            // so leases (and the workload's TTL) can be 1 s.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"]);
        let (p, _) = Proc::spawn(cmd, ETCD_READY, false)?;
        self.proc = Some(p);
        Ok(())
    }
}

/// One `turnstiled --backend etcd` inside a namespace.
pub(crate) struct Sidecar {
    /// Which one (0, 1, 2).
    pub(crate) index: usize,
    ns: String,
    grpc: SocketAddr,
    etcd_url: String,
    client: LockServiceClient<Channel>,
    // std lock: held to swap, signal or reap, never across an await.
    proc: Mutex<Option<Proc>>,
}

impl Sidecar {
    fn start(index: usize, ns: &str, own: std::net::Ipv4Addr, etcd_url: String) -> Result<Sidecar, String> {
        let grpc = SocketAddr::from((own, SIDECAR_GRPC_PORT));
        let client =
            LockServiceClient::new(Endpoint::from_shared(format!("http://{grpc}")).expect("valid url").connect_lazy());
        let s = Sidecar { index, ns: ns.into(), grpc, etcd_url, client, proc: Mutex::new(None) };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&self) -> Result<u32, String> {
        let http = SocketAddr::from((self.grpc.ip(), SIDECAR_HTTP_PORT));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(turnstiled_bin())
            .args(["--backend", "etcd", "--etcd-endpoints", &self.etcd_url, "--etcd-timeout", "700ms"])
            .args(["--listen", &self.grpc.to_string(), "--http-listen", &http.to_string(), "--log", "warn"])
            // The sidecar's namespace address is not loopback; plaintext is
            // fine on the test's own veth link, so say so.
            .arg("--insecure");
        let (p, _) = Proc::spawn(cmd, "turnstiled listening", true)?;
        let pid = p.pid();
        *self.proc.lock().expect("sidecar lock") = Some(p);
        Ok(pid)
    }

    /// The pid running now (`ip netns exec` execs turnstiled in place).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.proc.lock().expect("sidecar lock").as_ref().map(Proc::pid)
    }

    /// SIGKILL and a restart in the same namespace, on the same address.
    pub(crate) fn kill_and_restart(&self) -> Result<(u32, u32), String> {
        let old = self.proc.lock().expect("sidecar lock").take();
        let old_pid = old.as_ref().map_or(0, Proc::pid);
        if let Some(p) = old {
            p.kill();
        }
        Ok((old_pid, self.spawn()?))
    }

    /// Sends `sig` to the process running now.
    pub(crate) fn signal(&self, sig: i32) {
        if let Some(p) = self.proc.lock().expect("sidecar lock").as_ref() {
            p.signal(sig);
        }
    }

    /// If it exited by itself: reaped, restarted; (old pid, what, restart).
    fn reap(&self) -> Option<(u32, String, Result<u32, String>)> {
        let mut guard = self.proc.lock().expect("sidecar lock");
        let what = guard.as_mut()?.exited()?;
        let pid = guard.take().map_or(0, |p| p.pid());
        drop(guard);
        Some((pid, what, self.spawn()))
    }
}

impl crate::client::Target for Sidecar {
    fn client(&self) -> LockServiceClient<Channel> {
        self.client.clone()
    }
}

/// etcd, three sidecars, and their namespaces. Dropping it stops every
/// process and removes every namespace, link and route it made.
pub(crate) struct Cluster {
    /// The sidecars; clients are spread over them.
    pub(crate) sidecars: Vec<Arc<Sidecar>>,
    etcd: Mutex<EtcdProc>,
    // Dropped last: the processes inside are gone by then.
    net: Netns,
}

impl Cluster {
    /// Makes the namespaces, starts etcd and `n` sidecars. `Err` says why
    /// not (namespaces refused, etcd missing, a process not ready).
    pub(crate) fn start(n: usize) -> Result<Cluster, String> {
        let net = Netns::create(n)?;
        let etcd = EtcdProc::start(&net.etcd_hosts())?;
        let mut sidecars = Vec::new();
        for i in 0..n {
            let url = format!("http://{}:{}", net.etcd_host(i), etcd.client_port);
            sidecars.push(Arc::new(Sidecar::start(i, net.name(i), net.sidecar_addr(i), url)?));
        }
        Ok(Cluster { sidecars, etcd: Mutex::new(etcd), net })
    }

    /// etcd's data dir, and the namespaces' names, for the log.
    pub(crate) fn describe(&self) -> String {
        let etcd = self.etcd.lock().expect("etcd lock");
        let pid = etcd.proc.as_ref().map_or(0, Proc::pid);
        let sidecars: Vec<String> = self
            .sidecars
            .iter()
            .map(|s| format!("{} in netns {} (pid {})", s.grpc, s.ns, s.pid().unwrap_or(0)))
            .collect();
        format!(
            "etcd pid {pid} on {} (data {}); sidecars {}",
            etcd.listen.join(","),
            display(etcd.dir.path()),
            sidecars.join(", ")
        )
    }

    /// SIGKILL of etcd and a restart on the same data dir and addresses.
    pub(crate) fn kill_etcd(&self) -> Result<String, String> {
        let mut etcd = self.etcd.lock().expect("etcd lock");
        let old = etcd.proc.take().map_or(0, |p| {
            let pid = p.pid();
            p.kill();
            pid
        });
        etcd.spawn()?;
        Ok(format!(
            "SIGKILL etcd pid {old}; restarted on its data dir as pid {}",
            etcd.proc.as_ref().map_or(0, Proc::pid)
        ))
    }

    /// Cuts sidecar `i` off from etcd (its clients still reach it); the
    /// namespaces' removal heals it too, should a run end in between.
    pub(crate) fn cut(&self, i: usize) -> Result<(), String> {
        self.net.cut(i)
    }

    /// Joins sidecar `i` and etcd again.
    pub(crate) fn heal(&self, i: usize) -> Result<(), String> {
        self.net.heal(i)
    }

    /// Processes that exited although no fault stopped them, each reaped and
    /// restarted: (what, pid, exit status and stderr tail).
    pub(crate) fn reap(&self) -> Vec<(String, u32, String)> {
        let mut out = Vec::new();
        {
            let mut etcd = self.etcd.lock().expect("etcd lock");
            if let Some(what) = etcd.proc.as_mut().and_then(Proc::exited) {
                let pid = etcd.proc.take().map_or(0, |p| p.pid());
                let restarted =
                    etcd.spawn().map_or_else(|e| format!("; NOT restarted: {e}"), |()| "; restarted".into());
                out.push(("etcd".to_owned(), pid, format!("{what}{restarted}")));
            }
        }
        for s in &self.sidecars {
            if let Some((pid, what, restarted)) = s.reap() {
                let restarted =
                    restarted.map_or_else(|e| format!("; NOT restarted: {e}"), |p| format!("; restarted as pid {p}"));
                out.push((format!("sidecar {}", s.index), pid, format!("{what}{restarted}")));
            }
        }
        out
    }

    /// Resumes every process (a run may end during a SIGSTOP).
    pub(crate) fn resume_all(&self) {
        for s in &self.sidecars {
            s.signal(libc::SIGCONT);
        }
    }
}

impl Drop for Cluster {
    /// The sidecars stop before their namespaces go (a client may still
    /// hold an `Arc` of one; its process must not outlive the run).
    fn drop(&mut self) {
        for s in &self.sidecars {
            if let Some(p) = s.proc.lock().unwrap_or_else(|p| p.into_inner()).take() {
                p.kill();
            }
        }
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
