//! A chaos run: background clients against one `turnstiled`, nemeses
//! injected between quiet spells, then the recorded history checked.
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

use crate::client::{client_loop, Client, Log, Rng, Storage, Switches, Workload};
use crate::node::{Node, ReadOnly};

/// A fault the runner can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Nemesis {
    /// SIGKILL turnstiled, restart it on the same data dir.
    Kill,
    /// SIGKILL, restart, SIGTERM while it still refuses grants (crash
    /// recovery), restart again.
    TermDuringRecovery,
    /// SIGSTOP turnstiled for longer than the TTL, then SIGCONT.
    Pause,
    /// The next holder stops renewing past its TTL, then still writes.
    StalledClient,
    /// The data dir turns read-only for a while.
    ReadOnlyDir,
}

impl Nemesis {
    /// Every nemesis, in the order a run cycles through them.
    pub(crate) const ALL: [Nemesis; 5] =
        [Nemesis::Kill, Nemesis::Pause, Nemesis::StalledClient, Nemesis::TermDuringRecovery, Nemesis::ReadOnlyDir];

    /// Its command-line name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::TermDuringRecovery => "term-recovery",
            Nemesis::Pause => "pause",
            Nemesis::StalledClient => "stall",
            Nemesis::ReadOnlyDir => "read-only",
        }
    }

    /// By command-line name.
    pub(crate) fn parse(s: &str) -> Option<Nemesis> {
        Nemesis::ALL.into_iter().find(|n| n.name() == s)
    }
}

/// The arguments every `turnstiled` of a run gets besides its data dir: a
/// short horizon step keeps crash-recovery holds about one TTL long.
pub(crate) const TURNSTILED_ARGS: [&str; 2] = ["--horizon-step", "200ms"];

/// One run's recorder, server, storage and clients.
pub(crate) struct Chaos {
    /// The recorder every client writes to.
    pub(crate) rec: Recorder,
    /// The server under test.
    pub(crate) node: Arc<Node>,
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
    /// Exits of turnstiled that no nemesis caused: (when, pid, status and stderr).
    pub(crate) crashes: Vec<(Duration, u32, String)>,
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
    /// Exits of turnstiled that no nemesis caused: (when, pid, status and stderr).
    pub(crate) crashes: Vec<(Duration, u32, String)>,
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
        for (at, pid, what) in &self.crashes {
            writeln!(f, "FINDING: turnstiled pid {pid} exited on its own at {:.3} ms: {what}", at.as_secs_f64() * 1e3)?;
        }
        match &self.verdict {
            Ok(s) => writeln!(f, "history: {s}\nverdict: OK (no violation of the lock model)"),
            Err(v) => write!(f, "history: {} ops\nverdict: {v}", self.history.ops.len()),
        }
    }
}

impl Chaos {
    /// Starts `turnstiled` (memory backend, fresh data dir); `checked_storage:
    /// false` is the fault switch whose violations the checker must find.
    pub(crate) async fn start(checked_storage: bool, print_ops: bool) -> Chaos {
        let rec = Recorder::new();
        let node = tokio::task::spawn_blocking(|| Node::start(&TURNSTILED_ARGS)).await.expect("start turnstiled");
        let log = Arc::new(Log::new(rec.clone(), print_ops));
        log.event(&format!(
            "started turnstiled pid {} (memory backend, data dir {})",
            node.pid(),
            node.dir().display()
        ));
        Chaos {
            rec,
            node: Arc::new(node),
            storage: Arc::new(Storage::new(checked_storage)),
            log,
            sw: Arc::default(),
            clients: Vec::new(),
            faults: Vec::new(),
            not_possible: Vec::new(),
            crashes: Vec::new(),
        }
    }

    /// A client with process id `process`, acquiring as `owner`.
    pub(crate) fn client(&self, process: u32, owner: &str) -> Client {
        Client::new(process, owner, &self.rec, &self.node, &self.storage, &self.log)
    }

    /// Starts `n` background clients (process ids 1..=n, owners `c1`…).
    pub(crate) fn spawn_clients(&mut self, n: u32, w: &Workload, seed: u64) {
        for p in 1..=n {
            let c = self.client(p, &format!("c{p}"));
            let rng = Rng::new(seed ^ u64::from(p).wrapping_mul(0x2545_f491_4f6c_dd1d));
            self.clients.push(tokio::spawn(client_loop(c, w.clone(), self.sw.clone(), rng)));
        }
    }

    fn fault(&mut self, n: Nemesis, what: String) {
        self.log.event(&format!("fault: {what}"));
        self.faults.push((self.rec.now(), n, what));
    }

    /// Notes and restarts a turnstiled that exited although no nemesis
    /// stopped it; `true` if it had.
    pub(crate) async fn restart_if_it_died(&mut self) -> bool {
        let node = self.node.clone();
        let exited = tokio::task::spawn_blocking(move || {
            let exited = node.exited_on_its_own()?;
            Some((exited, node.restart()))
        })
        .await
        .expect("reap task");
        let Some(((pid, status, stderr), restarted)) = exited else { return false };
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
        let what = format!("{status}; stderr ends: {}", tail.join(" | "));
        self.log.event(&format!("FINDING: turnstiled pid {pid} exited on its own: {what}"));
        self.crashes.push((self.rec.now(), pid, what));
        let new = restarted.unwrap_or_else(|e| panic!("turnstiled did not restart after exiting on its own: {e}"));
        self.log.event(&format!("restarted as pid {new}"));
        true
    }

    /// SIGKILL, then a restart on the same data dir.
    pub(crate) async fn kill_and_restart(&mut self) {
        let old = self.node.pid();
        let node = self.node.clone();
        let new = tokio::task::spawn_blocking(move || {
            node.kill();
            node.restart()
        })
        .await
        .expect("restart task")
        .unwrap_or_else(|e| panic!("turnstiled did not restart after SIGKILL: {e}"));
        self.fault(Nemesis::Kill, format!("SIGKILL turnstiled pid {old}; restarted as pid {new}"));
    }

    /// SIGKILL, restart, SIGTERM while it is still recovering (as `/readyz`
    /// says), restart again.
    pub(crate) async fn term_during_recovery(&mut self) {
        let old = self.node.pid();
        let node = self.node.clone();
        let (mid, readyz, exit, new) = tokio::task::spawn_blocking(move || {
            node.kill();
            let mid = node.restart().unwrap_or_else(|e| panic!("turnstiled did not restart after SIGKILL: {e}"));
            let readyz = node.readyz().map(|(code, body)| format!("{code} {body}")).unwrap_or_else(|e| e.to_string());
            let exit = node.terminate().map(|(status, _)| status.to_string()).unwrap_or_default();
            let new = node.restart();
            (mid, readyz, exit, new)
        })
        .await
        .expect("restart task");
        let new = new.unwrap_or_else(|e| panic!("turnstiled did not restart after SIGTERM during recovery: {e}"));
        let state = if readyz.contains("recovering") { "while recovering" } else { "(no recovery hold was in force)" };
        self.fault(
            Nemesis::TermDuringRecovery,
            format!(
                "SIGKILL pid {old}; restarted as pid {mid}; SIGTERM {state} (/readyz: {readyz}; {exit}); restarted as pid {new}"
            ),
        );
    }

    /// SIGSTOP for `d`, then SIGCONT.
    pub(crate) async fn pause(&mut self, d: Duration) {
        self.node.signal(libc::SIGSTOP);
        self.log.event(&format!("fault: SIGSTOP turnstiled pid {} for {d:?}", self.node.pid()));
        tokio::time::sleep(d).await;
        self.node.signal(libc::SIGCONT);
        self.fault(Nemesis::Pause, format!("SIGCONT turnstiled pid {} after {d:?}", self.node.pid()));
    }

    /// Asks the next holder to stall past its TTL and write anyway.
    pub(crate) fn stall_a_client(&mut self) {
        self.sw.stalls.fetch_add(1, Ordering::AcqRel);
        self.fault(Nemesis::StalledClient, "the next holder will stall past its ttl, then write".into());
    }

    /// The data dir read-only for `d`; `false` (and noted) where that is not possible here.
    pub(crate) async fn read_only_for(&mut self, d: Duration) -> bool {
        match ReadOnly::apply(self.node.dir()) {
            Ok(ro) => {
                self.log.event(&format!("fault: data dir read-only ({:?}) for {d:?}", ro.how()));
                tokio::time::sleep(d).await;
                let how = ro.how();
                drop(ro);
                self.fault(Nemesis::ReadOnlyDir, format!("data dir writable again after {d:?} read-only ({how:?})"));
                true
            }
            Err(e) => {
                self.log.event(&format!("NOT POSSIBLE: {e}"));
                if !self.not_possible.iter().any(|(n, _)| *n == Nemesis::ReadOnlyDir) {
                    self.not_possible.push((Nemesis::ReadOnlyDir, e.to_string()));
                }
                false
            }
        }
    }

    /// Injects one nemesis, sized by the workload's TTL.
    pub(crate) async fn inject(&mut self, n: Nemesis, w: &Workload, rng: &mut Rng) {
        self.restart_if_it_died().await;
        match n {
            Nemesis::Kill => self.kill_and_restart().await,
            Nemesis::TermDuringRecovery => self.term_during_recovery().await,
            Nemesis::Pause => self.pause(rng.between(w.ttl * 2, w.ttl * 4)).await,
            Nemesis::StalledClient => self.stall_a_client(),
            Nemesis::ReadOnlyDir => {
                self.read_only_for(rng.between(w.ttl * 2, w.ttl * 4)).await;
            }
        }
    }

    /// Stops the clients, waits for them, and checks the history.
    pub(crate) async fn finish(mut self) -> Report {
        self.sw.stop.store(true, Ordering::Relaxed);
        for c in self.clients.drain(..) {
            c.await.expect("client task");
        }
        self.restart_if_it_died().await;
        let node = self.node.clone();
        // A paused process would keep its state; resume it so SIGTERM works.
        node.signal(libc::SIGCONT);
        let _ = tokio::task::spawn_blocking(move || node.terminate()).await;
        let history = self.rec.history();
        let verdict = check(&history);
        Report { history, verdict, faults: self.faults, not_possible: self.not_possible, crashes: self.crashes }
    }
}

/// Settings of a whole run.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
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
/// and checks the history.
pub(crate) async fn run(s: &Settings) -> Report {
    let mut chaos = Chaos::start(s.checked_storage, s.print_ops).await;
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
    chaos.finish().await
}
