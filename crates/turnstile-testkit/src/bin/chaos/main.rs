//! `chaos`: a long nemesis run against a real `turnstiled` (memory backend).
//! Background clients acquire, renew, write to a fenced storage model and
//! release, every call recorded; kills, restarts, SIGTERM during crash
//! recovery, SIGSTOP, stalled clients and a read-only data dir are injected;
//! the history is then checked against the lock model. Exits 1 on a
//! violation, 3 when a requested nemesis was not possible here, 4 when
//! turnstiled exited although no nemesis stopped it.
//!
//! ```text
//! cargo run -p turnstile-testkit --bin chaos -- --duration 60s --backend memory
//! ```
//!
//! # Layout
//! - `node`: the `turnstiled` process and the faults done to it.
//! - `client`: recorded gRPC calls, the storage model, the client loop.
//! - `run`: nemesis scheduling, the run and its report.

mod client;
mod node;
mod run;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use client::Workload;
use run::{Nemesis, Settings};

const USAGE: &str = "\
usage: chaos [--duration 60s] [--backend memory] [--clients 6] [--keys 4]
             [--ttl 300ms] [--long-ttl 1500ms] [--wait 1s] [--seed N]
             [--nemeses kill,pause,stall,term-recovery,read-only]
             [--unchecked-storage] [--print-ops] [--print-history]

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

fn parse(mut args: impl Iterator<Item = String>) -> Result<Cli, String> {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let mut s = Settings {
        duration: Duration::from_secs(60),
        clients: 6,
        workload: Workload {
            keys: 4,
            ttl: Duration::from_millis(300),
            long_ttl: Duration::from_millis(1500),
            wait: Duration::from_secs(1),
        },
        nemeses: Nemesis::ALL.to_vec(),
        quiet: (Duration::from_millis(300), Duration::from_millis(1200)),
        checked_storage: true,
        seed,
        print_ops: false,
    };
    let mut print_history = false;
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--duration" => s.duration = duration(&val()?)?,
            "--backend" => {
                let b = val()?;
                if b != "memory" {
                    return Err(format!("--backend {b}: this runner drives the memory backend only"));
                }
            }
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
                    .map(|n| Nemesis::parse(n).ok_or_else(|| format!("unknown nemesis {n:?}")))
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
    let report = rt.block_on(run::run(&cli.settings));
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
    } else {
        ExitCode::SUCCESS
    }
}
