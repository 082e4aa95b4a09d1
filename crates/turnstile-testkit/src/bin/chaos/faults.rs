//! The nemeses: each fault the runner can inject, on the memory backend's
//! process or on etcd and its sidecars, recorded in the run's [`Chaos`].
//!
//! Shared by the `chaos` binary and `turnstile-server/tests/chaos.rs`; each
//! uses a part of it.
#![allow(dead_code)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::client::{Rng, Workload};
use crate::node::ReadOnly;
use crate::run::{Backend, Chaos, System};

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
    /// SIGTERM, `state.json` moved away: the start must be refused; put
    /// back, restart.
    LostState,
    /// The data dir (a small tmpfs) fills up for a while.
    FullDir,
    /// SIGKILL etcd, restart it on the same data dir.
    EtcdKill,
    /// SIGKILL one sidecar, restart it.
    SidecarKill,
    /// SIGSTOP one sidecar for longer than the TTL, then SIGCONT.
    SidecarPause,
    /// Cut one sidecar off from etcd for longer than the TTL (its clients
    /// still reach it).
    Partition,
}

impl Nemesis {
    /// The memory backend's nemeses, in the order a run cycles through them.
    pub(crate) const MEMORY: [Nemesis; 7] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::StalledClient,
        Nemesis::TermDuringRecovery,
        Nemesis::ReadOnlyDir,
        Nemesis::LostState,
        Nemesis::FullDir,
    ];

    /// The etcd backend's nemeses, in the order a run cycles through them.
    pub(crate) const ETCD: [Nemesis; 5] =
        [Nemesis::Partition, Nemesis::SidecarKill, Nemesis::StalledClient, Nemesis::EtcdKill, Nemesis::SidecarPause];

    /// Every nemesis of `backend`.
    pub(crate) fn all(backend: Backend) -> &'static [Nemesis] {
        match backend {
            Backend::Memory => &Nemesis::MEMORY,
            Backend::Etcd => &Nemesis::ETCD,
        }
    }

    /// Its command-line name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::TermDuringRecovery => "term-recovery",
            Nemesis::Pause => "pause",
            Nemesis::StalledClient => "stall",
            Nemesis::ReadOnlyDir => "read-only",
            Nemesis::LostState => "lost-state",
            Nemesis::FullDir => "full",
            Nemesis::EtcdKill => "etcd-kill",
            Nemesis::SidecarKill => "sidecar-kill",
            Nemesis::SidecarPause => "sidecar-pause",
            Nemesis::Partition => "partition",
        }
    }

    /// By command-line name, among `backend`'s.
    pub(crate) fn parse(s: &str, backend: Backend) -> Option<Nemesis> {
        Nemesis::all(backend).iter().copied().find(|n| n.name() == s)
    }
}

impl Chaos {
    /// SIGKILL, then a restart on the same data dir.
    pub(crate) async fn kill_and_restart(&mut self) {
        let old = self.node().pid();
        let node = self.node().clone();
        // Announced now: the fault line below comes only once the restart
        // is ready, which under load takes a while, and the connections
        // dropped meanwhile must not look unexplained.
        self.log.event(&format!("fault begins: SIGKILL turnstiled pid {old}"));
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
        let old = self.node().pid();
        let node = self.node().clone();
        self.log.event(&format!("fault begins: SIGKILL turnstiled pid {old}, then SIGTERM during recovery"));
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
        self.node().signal(libc::SIGSTOP);
        self.log.event(&format!("fault: SIGSTOP turnstiled pid {} for {d:?}", self.node().pid()));
        tokio::time::sleep(d).await;
        self.node().signal(libc::SIGCONT);
        self.fault(Nemesis::Pause, format!("SIGCONT turnstiled pid {} after {d:?}", self.node().pid()));
    }

    /// Asks the next holder to stall past its TTL and write anyway.
    pub(crate) fn stall_a_client(&mut self) {
        self.sw.stalls.fetch_add(1, Ordering::AcqRel);
        self.fault(Nemesis::StalledClient, "the next holder will stall past its ttl, then write".into());
    }

    /// The data dir read-only for `d`; `false` (and noted) where that is not possible here.
    pub(crate) async fn read_only_for(&mut self, d: Duration) -> bool {
        match ReadOnly::apply(self.node().dir()) {
            Ok(ro) => {
                self.log.event(&format!("fault: data dir read-only ({:?}) for {d:?}", ro.how()));
                tokio::time::sleep(d).await;
                let how = ro.how();
                drop(ro);
                self.fault(Nemesis::ReadOnlyDir, format!("data dir writable again after {d:?} read-only ({how:?})"));
                true
            }
            Err(e) => {
                self.not_possible(Nemesis::ReadOnlyDir, e.to_string());
                false
            }
        }
    }

    /// The data dir full for `d`; `false` (and noted) where that is not
    /// possible here. `/readyz` is read while it is full, for the log.
    pub(crate) async fn full_for(&mut self, d: Duration) -> bool {
        match self.node().fill() {
            Ok(full) => {
                self.log.event(&format!("fault: data dir full ({} bytes of filler) for {d:?}", full.bytes));
                tokio::time::sleep(d).await;
                let node = self.node().clone();
                let readyz = tokio::task::spawn_blocking(move || node.readyz())
                    .await
                    .expect("readyz task")
                    .map_or_else(|e| e.to_string(), |(code, body)| format!("{code} {body}"));
                drop(full);
                self.fault(
                    Nemesis::FullDir,
                    format!("data dir has room again after {d:?} full (/readyz then: {readyz})"),
                );
                true
            }
            Err(e) => {
                self.not_possible(Nemesis::FullDir, format!("could not fill the data dir: {e}"));
                false
            }
        }
    }

    /// SIGTERM, `state.json` lost, a start that must be refused, the file
    /// put back, a restart. `false` if the start was not refused as it must.
    pub(crate) async fn lose_state(&mut self) -> bool {
        let node = self.node().clone();
        self.log.event(&format!("fault begins: SIGTERM turnstiled pid {}, then state.json lost", node.pid()));
        match tokio::task::spawn_blocking(move || node.lose_state_while_stopped()).await.expect("lost-state task") {
            Ok(what) => {
                self.fault(Nemesis::LostState, what);
                true
            }
            Err(what) => {
                self.failed_check(format!("lost state.json: {what}"));
                assert!(self.node().running(), "turnstiled is not running after the lost-state fault: {what}");
                false
            }
        }
    }

    /// SIGKILL of etcd and a restart on its data dir.
    pub(crate) async fn kill_etcd(&mut self) {
        let cluster = self.cluster().clone();
        self.log.event("fault begins: SIGKILL etcd");
        let what = tokio::task::spawn_blocking(move || cluster.kill_etcd())
            .await
            .expect("etcd restart task")
            .unwrap_or_else(|e| panic!("etcd did not restart after SIGKILL: {e}"));
        self.fault(Nemesis::EtcdKill, what);
    }

    /// SIGKILL of sidecar `i` and a restart.
    pub(crate) async fn kill_sidecar(&mut self, i: usize) {
        let sidecar = self.cluster().sidecars[i].clone();
        self.log.event(&format!("fault begins: SIGKILL sidecar {i} pid {}", sidecar.pid().unwrap_or(0)));
        let (old, new) = tokio::task::spawn_blocking(move || sidecar.kill_and_restart())
            .await
            .expect("sidecar restart task")
            .unwrap_or_else(|e| panic!("sidecar {i} did not restart after SIGKILL: {e}"));
        self.fault(Nemesis::SidecarKill, format!("SIGKILL sidecar {i} pid {old}; restarted as pid {new}"));
    }

    /// SIGSTOP of sidecar `i` for `d`, then SIGCONT.
    pub(crate) async fn pause_sidecar(&mut self, i: usize, d: Duration) {
        let sidecar = self.cluster().sidecars[i].clone();
        sidecar.signal(libc::SIGSTOP);
        self.log.event(&format!("fault: SIGSTOP sidecar {i} pid {} for {d:?}", sidecar.pid().unwrap_or(0)));
        tokio::time::sleep(d).await;
        sidecar.signal(libc::SIGCONT);
        self.fault(
            Nemesis::SidecarPause,
            format!("SIGCONT sidecar {i} pid {} after {d:?}", sidecar.pid().unwrap_or(0)),
        );
    }

    /// Sidecar `i` cut off from etcd for `d`; `false` (and noted) where
    /// that is not possible here.
    pub(crate) async fn partition(&mut self, i: usize, d: Duration) -> bool {
        let cluster = self.cluster().clone();
        if let Err(e) = tokio::task::spawn_blocking(move || cluster.cut(i)).await.expect("partition task") {
            self.not_possible(Nemesis::Partition, e);
            return false;
        }
        self.log.event(&format!("fault: sidecar {i} cut off from etcd for {d:?}"));
        tokio::time::sleep(d).await;
        let cluster = self.cluster().clone();
        tokio::task::spawn_blocking(move || cluster.heal(i))
            .await
            .expect("heal task")
            .unwrap_or_else(|e| panic!("could not heal the partition of sidecar {i}: {e}"));
        self.fault(Nemesis::Partition, format!("sidecar {i} joined to etcd again after {d:?} cut off"));
        true
    }

    /// Injects one nemesis, sized by the workload's TTL.
    pub(crate) async fn inject(&mut self, n: Nemesis, w: &Workload, rng: &mut Rng) {
        self.restart_if_it_died().await;
        let spell = rng.between(w.ttl * 2, w.ttl * 4);
        let sidecar = match &self.system {
            System::Etcd(c) => rng.below(c.sidecars.len() as u64) as usize,
            System::Memory(_) => 0,
        };
        match n {
            Nemesis::Kill => self.kill_and_restart().await,
            Nemesis::TermDuringRecovery => self.term_during_recovery().await,
            Nemesis::Pause => self.pause(spell).await,
            Nemesis::StalledClient => self.stall_a_client(),
            Nemesis::ReadOnlyDir => drop(self.read_only_for(spell).await),
            Nemesis::LostState => drop(self.lose_state().await),
            Nemesis::FullDir => drop(self.full_for(spell).await),
            Nemesis::EtcdKill => self.kill_etcd().await,
            Nemesis::SidecarKill => self.kill_sidecar(sidecar).await,
            Nemesis::SidecarPause => self.pause_sidecar(sidecar, spell).await,
            Nemesis::Partition => drop(self.partition(sidecar, spell).await),
        }
    }
}
