//! `chaos`: a long nemesis run against real `turnstiled` processes: one
//! with the memory backend, or three `--backend etcd` sidecars over a real
//! etcd. Background clients acquire, renew, write to a fenced storage model
//! and release, every call recorded; faults are injected (see
//! docs/chaos.md); the history is then checked against the lock model.
//! Exits 1 on a violation, 3 when a requested nemesis was not possible here
//! (NOT TESTED; for etcd also when network namespaces are refused), 4 when
//! a process exited although no nemesis stopped it, 5 when a nemesis's own
//! check failed (a start without `state.json` was not refused).
//!
//! ```text
//! cargo run --release -p turnstile-testkit --bin chaos -- --duration 60s --backend memory
//! cargo run --release -p turnstile-testkit --bin chaos -- --duration 60s --backend etcd
//! ```
//!
//! # Layout
//! - `node`: the memory backend's `turnstiled` and the faults done to it.
//! - `cluster`: etcd and three sidecars, and the faults done to them.
//! - `netns`: the sidecars' network namespaces and the partition.
//! - `client`: recorded gRPC calls, the storage model, the client loop.
//! - `faults`: each nemesis, injected into a run.
//! - `run`: the processes and clients of a run, its loop and its report.

mod client;
mod cluster;
mod faults;
mod netns;
mod node;
mod run;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use client::Workload;
use run::{Backend, Nemesis, Settings};

const USAGE: &str = "\
usage: chaos [--duration 60s] [--backend memory|etcd] [--clients 6] [--keys 4]
             [--ttl T] [--long-ttl T] [--wait T] [--seed N] [--nemeses LIST]
             [--unchecked-storage] [--print-ops] [--print-history]

memory: ttl 300ms, long-ttl 1500ms, wait 1s; nemeses
        kill,pause,stall,term-recovery,read-only,lost-state,full
etcd:   ttl 1s, long-ttl 3s, wait 2s (etcd's shortest lease is 1 s); nemeses
        partition,sidecar-kill,stall,etcd-kill,sidecar-pause

--unchecked-storage  the storage model skips its token check (a test-only
                     fault: the checker must then report a violation)
--print-ops          print every operation as it completes
--print-history      print the whole recorded history at the end";

fn duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

struct Cli {
    settings: Settings,
    print_history: bool,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Cli, String> {
    let args: Vec<String> = args.collect();
    // The backend first: the defaults and the nemeses' names depend on it.
    let backend = match args.iter().position(|a| a == "--backend").map(|i| args.get(i + 1).map(String::as_str)) {
        None | Some(Some("memory")) => Backend::Memory,
        Some(Some("etcd")) => Backend::Etcd,
        Some(other) => return Err(format!("--backend {other:?}: memory or etcd")),
    };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let (workload, quiet) = match backend {
        Backend::Memory => (
            Workload {
                keys: 4,
                ttl: Duration::from_millis(300),
                long_ttl: Duration::from_millis(1500),
                wait: Duration::from_secs(1),
            },
            (Duration::from_millis(300), Duration::from_millis(1200)),
        ),
        Backend::Etcd => (
            Workload {
                keys: 4,
                ttl: Duration::from_secs(1),
                long_ttl: Duration::from_secs(3),
                wait: Duration::from_secs(2),
            },
            (Duration::from_millis(800), Duration::from_millis(2500)),
        ),
    };
    let mut s = Settings {
        backend,
        duration: Duration::from_secs(60),
        clients: 6,
        workload,
        nemeses: Nemesis::all(backend).to_vec(),
        quiet,
        checked_storage: true,
        seed,
        print_ops: false,
    };
    let mut print_history = false;
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--duration" => s.duration = duration(&val()?)?,
            "--backend" => drop(val()?),
            "--clients" => s.clients = val()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--keys" => s.workload.keys = val()?.parse().map_err(|e| format!("--keys: {e}"))?,
            "--ttl" => s.workload.ttl = duration(&val()?)?,
            "--long-ttl" => s.workload.long_ttl = duration(&val()?)?,
            "--wait" => s.workload.wait = duration(&val()?)?,
            "--seed" => s.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--nemeses" => {
                s.nemeses = val()?
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(|n| {
                        Nemesis::parse(n, backend)
                            .ok_or_else(|| format!("unknown nemesis {n:?} for the {backend:?} backend"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--unchecked-storage" => s.checked_storage = false,
            "--print-ops" => s.print_ops = true,
            "--print-history" => print_history = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Cli { settings: s, print_history })
}

/// Points the testkit at the `turnstiled` beside this binary (same
/// profile), building it first: the testkit's own lookup expects a test
/// binary under `deps/`.
fn locate_turnstiled() {
    if std::env::var_os("TURNSTILED_BIN").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir: PathBuf = exe.parent().expect("exe dir").to_owned();
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "-q", "-p", "turnstile-server", "--bin", "turnstiled"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo to build turnstiled");
    assert!(status.success(), "building turnstiled failed");
    // Edition 2021: set_var is safe; nothing else runs yet.
    std::env::set_var("TURNSTILED_BIN", dir.join(format!("turnstiled{}", std::env::consts::EXE_SUFFIX)));
}

fn main() -> ExitCode {
    let cli = match parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("chaos: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    locate_turnstiled();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    // Ctrl-C or SIGTERM drops the run: its processes stop, its namespaces,
    // links and mounts are removed (each by its owner's Drop).
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run::run(&cli.settings) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    drop(rt);
    let report = match outcome {
        None => {
            eprintln!("chaos: interrupted; processes stopped and namespaces removed");
            return ExitCode::from(130);
        }
        Some(Err(why)) => {
            println!("NOT TESTED: the {:?} backend could not be set up here: {why}", cli.settings.backend);
            return ExitCode::from(3);
        }
        Some(Ok(r)) => r,
    };
    if cli.print_history {
        println!("history:\n{}", report.history);
    }
    println!("{report}");
    if report.verdict.is_err() {
        ExitCode::from(1)
    } else if !report.not_possible.is_empty() {
        ExitCode::from(3)
    } else if !report.crashes.is_empty() {
        ExitCode::from(4)
    } else if !report.failed_checks.is_empty() {
        ExitCode::from(5)
    } else {
        ExitCode::SUCCESS
    }
}
