//! A chaos run: background clients against one `turnstiled` (memory
//! backend) or three etcd sidecars, nemeses injected between quiet spells,
//! then the recorded history checked.
//!
//! Shared by the `chaos` binary and `turnstile-server/tests/chaos.rs`; each
//! uses a part of it.
#![allow(dead_code)]

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use turnstile_testkit::history::{check, History, Recorder, Summary, Violation};

use crate::client::{client_loop, Client, Log, Rng, Storage, Switches, Target, Workload};
use crate::cluster::Cluster;
pub(crate) use crate::faults::Nemesis;
use crate::node::Node;

/// Which backend a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// One `turnstiled`, its state in a data dir.
    Memory,
    /// One etcd and three `turnstiled --backend etcd` sidecars.
    Etcd,
}

/// The processes under test.
pub(crate) enum System {
    /// The memory backend's one process.
    Memory(Arc<Node>),
    /// etcd and its sidecars.
    Etcd(Arc<Cluster>),
}

/// Size of the tmpfs the memory backend's data dir is (so it can be filled).
const DATA_DIR_KIB: u64 = 256;

/// The arguments every `turnstiled` of a run gets besides its data dir: a
/// short horizon step keeps crash-recovery holds about one TTL long.
pub(crate) const TURNSTILED_ARGS: [&str; 2] = ["--horizon-step", "200ms"];

/// One run's recorder, processes, storage and clients.
pub(crate) struct Chaos {
    /// The recorder every client writes to.
    pub(crate) rec: Recorder,
    /// The processes under test.
    pub(crate) system: System,
    storage: Arc<Storage>,
    /// Event printing and counters.
    pub(crate) log: Arc<Log>,
    /// Stop and stall switches.
    pub(crate) sw: Arc<Switches>,
    clients: Vec<JoinHandle<()>>,
    /// Faults injected: (when, which, what happened).
    pub(crate) faults: Vec<(Duration, Nemesis, String)>,
    /// Nemeses that could not be done here, and why.
    pub(crate) not_possible: Vec<(Nemesis, String)>,
    /// Exits that no nemesis caused: (when, which process, what: status and stderr).
    pub(crate) crashes: Vec<(Duration, String, String)>,
    /// What a nemesis asserted and found otherwise: (when, what).
    pub(crate) failed_checks: Vec<(Duration, String)>,
}

/// What a run found.
pub(crate) struct Report {
    /// Everything recorded.
    pub(crate) history: History,
    /// The checker's verdict.
    pub(crate) verdict: Result<Summary, Violation>,
    /// Faults injected: (when, which, what happened).
    pub(crate) faults: Vec<(Duration, Nemesis, String)>,
    /// Nemeses that could not be done here, and why.
    pub(crate) not_possible: Vec<(Nemesis, String)>,
    /// Exits that no nemesis caused: (when, which process, what).
    pub(crate) crashes: Vec<(Duration, String, String)>,
    /// What a nemesis asserted and found otherwise: (when, what).
    pub(crate) failed_checks: Vec<(Duration, String)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut counts: Vec<(Nemesis, usize)> = Vec::new();
        for (_, n, _) in &self.faults {
            match counts.iter_mut().find(|(m, _)| m == n) {
                Some((_, c)) => *c += 1,
                None => counts.push((*n, 1)),
            }
        }
        write!(f, "faults injected: {}", self.faults.len())?;
        for (n, c) in counts {
            write!(f, ", {} {c}", n.name())?;
        }
        writeln!(f)?;
        for (n, why) in &self.not_possible {
            writeln!(f, "NOT TESTED: {} — {why}", n.name())?;
        }
        for (at, who, what) in &self.crashes {
            writeln!(f, "FINDING: {who} exited on its own at {:.3} ms: {what}", at.as_secs_f64() * 1e3)?;
        }
        for (at, what) in &self.failed_checks {
            writeln!(f, "FAILED CHECK at {:.3} ms: {what}", at.as_secs_f64() * 1e3)?;
        }
        match &self.verdict {
            Ok(s) => writeln!(f, "history: {s}\nverdict: OK (no violation of the lock model)"),
            Err(v) => write!(f, "history: {} ops\nverdict: {v}", self.history.ops.len()),
        }
    }
}

impl Chaos {
    fn new(system: System, checked_storage: bool, print_ops: bool, rec: Recorder) -> Chaos {
        Chaos {
            log: Arc::new(Log::new(rec.clone(), print_ops)),
            rec,
            system,
            storage: Arc::new(Storage::new(checked_storage)),
            sw: Arc::default(),
            clients: Vec::new(),
            faults: Vec::new(),
            not_possible: Vec::new(),
            crashes: Vec::new(),
            failed_checks: Vec::new(),
        }
    }

    /// Starts `turnstiled` (memory backend, fresh data dir on a small
    /// tmpfs where it can be mounted); `checked_storage: false` is the
    /// fault switch whose violations the checker must find.
    pub(crate) async fn start(checked_storage: bool, print_ops: bool) -> Chaos {
        let rec = Recorder::new();
        let node = tokio::task::spawn_blocking(|| Node::start(&TURNSTILED_ARGS, Some(DATA_DIR_KIB)))
            .await
            .expect("start turnstiled");
        let chaos = Chaos::new(System::Memory(Arc::new(node)), checked_storage, print_ops, rec);
        chaos.log.event(&format!(
            "started turnstiled pid {} (memory backend, data dir {})",
            chaos.node().pid(),
            chaos.node().dir().display()
        ));
        chaos
    }

    /// Starts etcd and three sidecars in network namespaces of their own;
    /// `Err` says why that is not possible here.
    pub(crate) async fn start_etcd(checked_storage: bool, print_ops: bool) -> Result<Chaos, String> {
        let rec = Recorder::new();
        let cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await.expect("start etcd and sidecars")?;
        let chaos = Chaos::new(System::Etcd(Arc::new(cluster)), checked_storage, print_ops, rec);
        chaos.log.event(&format!("started {}", chaos.cluster().describe()));
        Ok(chaos)
    }

    /// The memory backend's process (panics on an etcd run).
    pub(crate) fn node(&self) -> &Arc<Node> {
        match &self.system {
            System::Memory(n) => n,
            System::Etcd(_) => panic!("a memory-backend nemesis on an etcd run"),
        }
    }

    /// etcd and the sidecars (panics on a memory run).
    pub(crate) fn cluster(&self) -> &Arc<Cluster> {
        match &self.system {
            System::Etcd(c) => c,
            System::Memory(_) => panic!("an etcd nemesis on a memory-backend run"),
        }
    }

    /// A client with process id `process`, acquiring as `owner`; on etcd
    /// runs it calls sidecar `process % 3`.
    pub(crate) fn client(&self, process: u32, owner: &str) -> Client {
        let target: Arc<dyn Target> = match &self.system {
            System::Memory(n) => n.clone(),
            System::Etcd(c) => c.sidecars[process as usize % c.sidecars.len()].clone(),
        };
        Client::new(process, owner, &self.rec, target, &self.storage, &self.log)
    }

    /// Starts `n` background clients (process ids 1..=n, owners `c1`…).
    pub(crate) fn spawn_clients(&mut self, n: u32, w: &Workload, seed: u64) {
        for p in 1..=n {
            let c = self.client(p, &format!("c{p}"));
            let rng = Rng::new(seed ^ u64::from(p).wrapping_mul(0x2545_f491_4f6c_dd1d));
            self.clients.push(tokio::spawn(client_loop(c, w.clone(), self.sw.clone(), rng)));
        }
    }

    /// Records an injected fault, printing it.
    pub(crate) fn fault(&mut self, n: Nemesis, what: String) {
        self.log.event(&format!("fault: {what}"));
        self.faults.push((self.rec.now(), n, what));
    }

    /// Records a nemesis that could not be done here.
    pub(crate) fn not_possible(&mut self, n: Nemesis, why: String) {
        self.log.event(&format!("NOT POSSIBLE: {} — {why}", n.name()));
        if !self.not_possible.iter().any(|(m, _)| *m == n) {
            self.not_possible.push((n, why));
        }
    }

    /// Records a check of a nemesis that failed.
    pub(crate) fn failed_check(&mut self, what: String) {
        self.log.event(&format!("FAILED CHECK: {what}"));
        self.failed_checks.push((self.rec.now(), what));
    }

    /// Notes and restarts processes that exited although no nemesis
    /// stopped them; `true` if one had.
    pub(crate) async fn restart_if_it_died(&mut self) -> bool {
        let found: Vec<(String, u32, String)> = match &self.system {
            System::Memory(node) => {
                let node = node.clone();
                let exited = tokio::task::spawn_blocking(move || {
                    let exited = node.exited_on_its_own()?;
                    Some((exited, node.restart()))
                })
                .await
                .expect("reap task");
                let Some(((pid, status, stderr), restarted)) = exited else { return false };
                let tail: Vec<&str> = stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
                let restarted =
                    restarted.unwrap_or_else(|e| panic!("turnstiled did not restart after exiting on its own: {e}"));
                vec![(
                    "turnstiled".to_owned(),
                    pid,
                    format!("{status}; stderr ends: {}; restarted as pid {restarted}", tail.join(" | ")),
                )]
            }
            System::Etcd(cluster) => {
                let cluster = cluster.clone();
                tokio::task::spawn_blocking(move || cluster.reap()).await.expect("reap task")
            }
        };
        for (who, pid, what) in &found {
            self.log.event(&format!("FINDING: {who} pid {pid} exited on its own: {what}"));
            self.crashes.push((self.rec.now(), format!("{who} pid {pid}"), what.clone()));
        }
        !found.is_empty()
    }

    /// Stops the clients, waits for them, stops the processes, and checks the history.
    pub(crate) async fn finish(mut self) -> Report {
        self.sw.stop.store(true, Ordering::Relaxed);
        for c in self.clients.drain(..) {
            c.await.expect("client task");
        }
        self.restart_if_it_died().await;
        match &self.system {
            System::Memory(node) => {
                let node = node.clone();
                // A paused process would keep its state; resume it so SIGTERM works.
                node.signal(libc::SIGCONT);
                let _ = tokio::task::spawn_blocking(move || node.terminate()).await;
            }
            System::Etcd(cluster) => cluster.resume_all(),
        }
        let Chaos { rec, system, faults, not_possible, crashes, failed_checks, .. } = self;
        // The processes, namespaces and mounts go here, off the async threads.
        tokio::task::spawn_blocking(move || drop(system)).await.expect("teardown task");
        let history = rec.history();
        let verdict = check(&history);
        Report { history, verdict, faults, not_possible, crashes, failed_checks }
    }
}

/// Settings of a whole run.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Which backend.
    pub(crate) backend: Backend,
    /// How long the clients run.
    pub(crate) duration: Duration,
    /// Background clients.
    pub(crate) clients: u32,
    /// What they do.
    pub(crate) workload: Workload,
    /// Nemeses to cycle through.
    pub(crate) nemeses: Vec<Nemesis>,
    /// Quiet time between two faults: (shortest, longest).
    pub(crate) quiet: (Duration, Duration),
    /// `false`: the storage model skips its token check (the fault switch).
    pub(crate) checked_storage: bool,
    /// Seed of every random choice.
    pub(crate) seed: u64,
    /// Print every operation as it completes.
    pub(crate) print_ops: bool,
}

/// Runs clients and nemeses for `s.duration`, printing faults and progress,
/// and checks the history. `Err`: the processes under test could not be
/// set up here (for etcd: no network namespaces, no etcd), and why.
pub(crate) async fn run(s: &Settings) -> Result<Report, String> {
    let mut chaos = match s.backend {
        Backend::Memory => Chaos::start(s.checked_storage, s.print_ops).await,
        Backend::Etcd => Chaos::start_etcd(s.checked_storage, s.print_ops).await?,
    };
    chaos.log.event(&format!(
        "{} clients on {} keys, ttl {:?} (one in eight {:?}), wait {:?}, nemeses {:?}, seed {}",
        s.clients,
        s.workload.keys,
        s.workload.ttl,
        s.workload.long_ttl,
        s.workload.wait,
        s.nemeses.iter().map(|n| n.name()).collect::<Vec<_>>(),
        s.seed
    ));
    chaos.spawn_clients(s.clients, &s.workload, s.seed);
    let mut rng = Rng::new(s.seed);
    let start = chaos.rec.now();
    let mut next_progress = start + Duration::from_secs(5);
    let mut turn = 0usize;
    while chaos.rec.now() - start < s.duration {
        tokio::time::sleep(rng.between(s.quiet.0, s.quiet.1)).await;
        chaos.restart_if_it_died().await;
        if chaos.rec.now() >= next_progress {
            next_progress += Duration::from_secs(5);
            chaos.log.event(&format!(
                "progress: {} ops, {} grants, {} faults",
                chaos.log.completed.load(Ordering::Relaxed),
                chaos.log.granted.load(Ordering::Relaxed),
                chaos.faults.len()
            ));
        }
        if chaos.rec.now() - start >= s.duration {
            break;
        }
        if let Some(&n) = s.nemeses.get(turn % s.nemeses.len().max(1)) {
            chaos.inject(n, &s.workload, &mut rng).await;
        }
        turn += 1;
    }
    Ok(chaos.finish().await)
}
