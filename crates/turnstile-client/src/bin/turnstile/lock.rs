//! `turnstile lock KEY -- CMD`: wait for the lock (with a status line on a
//! terminal), run CMD under it, stop CMD if the lease is lost, release.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokio::process::Child;
use turnstile_client::{Client, Error, LockGuard, LockInfo};

use crate::child::{self, Signals, Watchdog};
use crate::cli::{exit, LockArgs};
use crate::output::human;
use crate::CliError;

/// What a missing watchdog means, for the warning.
const UNWATCHED: &str = "if turnstile is killed, processes the command started may outlive it";

/// Runs the `lock` subcommand; returns the exit code.
pub(crate) async fn run(client: &Client, args: LockArgs) -> Result<u8, CliError> {
    let mut signals = Signals::new().map_err(|source| CliError::Io { what: "listening for signals", source })?;
    let guard = match wait_for_lock(client, &args, &mut signals).await {
        Waited::Got(guard) => guard,
        Waited::Interrupted(sig) => return Ok(exit::SIGNAL_BASE.saturating_add(u8::try_from(sig).unwrap_or(0))),
        Waited::Failed(e @ Error::Contended { .. }) => {
            eprintln!("turnstile: lock not obtained: {e}");
            return Ok(args.conflict_exit_code);
        }
        Waited::Failed(e) => return Err(e.into()),
    };

    // Before the command, so that it covers the command from its start.
    let mut watchdog = match Watchdog::spawn() {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("turnstile: warning: cannot start the watchdog ({e}); {UNWATCHED}");
            None
        }
    };
    let mut cmd = match child::spawn(&args.command, guard.key(), guard.fencing_token(), guard.owner()) {
        Ok(c) => c,
        Err(e) => {
            let name = args.command.first().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
            eprintln!("turnstile: cannot run {name}: {e}");
            let _ = guard.release().await;
            return Ok(child::spawn_failure_code(&e));
        }
    };
    let Some(pgid) = cmd.id() else {
        // Already reaped: only possible if it exited at once.
        let status = cmd.wait().await.map_err(|source| CliError::Io { what: "waiting for the command", source })?;
        disarm(watchdog).await;
        return Ok(finish(guard, status, &mut signals).await);
    };
    if let Some(Err(e)) = watchdog.as_mut().map(|w| w.watch(pgid)) {
        eprintln!("turnstile: warning: the watchdog is gone ({e}); {UNWATCHED}");
        watchdog = None;
    }

    let lost = guard.lost();
    tokio::pin!(lost);
    // Set by the first SIGINT or SIGTERM passed on; the next one kills.
    let mut asked_to_stop = false;
    let status = loop {
        tokio::select! {
            status = cmd.wait() => break status,
            reason = &mut lost => {
                eprintln!(
                    "turnstile: lease on {} (fencing token {}) lost: {reason}; stopping the command",
                    guard.key(),
                    guard.fencing_token()
                );
                stop(&mut cmd, pgid, args.grace, &mut signals).await;
                disarm(watchdog).await;
                drop(guard);
                return Ok(exit::LOST);
            }
            sig = signals.recv() => {
                let stopping = sig == libc::SIGINT || sig == libc::SIGTERM;
                if stopping && asked_to_stop {
                    eprintln!("turnstile: second signal {sig}; killing the command");
                    child::signal_group(pgid, libc::SIGKILL);
                } else {
                    asked_to_stop |= stopping;
                    child::signal_group(pgid, sig);
                }
            }
        }
    };
    // On an error here the watchdog is dropped undisarmed: it kills the group.
    let status = status.map_err(|source| CliError::Io { what: "waiting for the command", source })?;
    disarm(watchdog).await;
    Ok(finish(guard, status, &mut signals).await)
}

/// The command has ended: its watchdog, if any, stands down.
async fn disarm(watchdog: Option<Watchdog>) {
    if let Some(w) = watchdog {
        w.disarm().await;
    }
}

/// Stops the command after the lease was lost: SIGTERM to its group, then
/// SIGKILL after `grace`, or at once when turnstile gets a signal meanwhile;
/// waits for it to end.
async fn stop(cmd: &mut Child, pgid: u32, grace: Duration, signals: &mut Signals) {
    child::signal_group(pgid, libc::SIGTERM);
    tokio::select! {
        _ = cmd.wait() => {}
        () = tokio::time::sleep(grace) => {
            eprintln!("turnstile: the command did not stop within {}; killing it", human(grace));
        }
        sig = signals.recv() => eprintln!("turnstile: signal {sig} while stopping the command; killing it"),
    }
    // Also whatever it started that ignored SIGTERM.
    child::signal_group(pgid, libc::SIGKILL);
    let _ = cmd.wait().await;
}

/// Releases the lease after the command exited with `status`; returns the
/// exit code. A lease found lost at this point (it ran out as the command
/// ended, or the coordinator says it had already ended) is a lost lease like
/// any other: the command may have overlapped with another holder, so the
/// code is [`exit::LOST`], not the command's status. A signal to turnstile
/// meanwhile stops the wait for the coordinator's answer.
async fn finish(guard: LockGuard, status: std::process::ExitStatus, signals: &mut Signals) -> u8 {
    let code = child::status_code(status);
    tokio::select! {
        released = guard.release() => match released {
            Ok(()) => code,
            Err(e @ Error::LeaseLost { .. }) => {
                eprintln!("turnstile: {e} before the command ended (its exit code: {code})");
                exit::LOST
            }
            Err(e) => {
                eprintln!("turnstile: warning: release failed ({e}); the lease expires after its ttl");
                code
            }
        },
        sig = signals.recv() => {
            eprintln!("turnstile: signal {sig} while releasing the lease; not waiting, it expires after its ttl");
            code
        }
    }
}

/// How the wait for the lock ended.
enum Waited {
    Got(LockGuard),
    Interrupted(i32),
    Failed(Error),
}

/// Waits for the lock as `--wait` says; on a terminal, keeps a status line on
/// stderr saying who holds the key and how long we have waited.
async fn wait_for_lock(client: &Client, args: &LockArgs, signals: &mut Signals) -> Waited {
    let key = args.key.as_str();
    let acquire = async {
        match args.wait {
            None => client.lock(key).await,
            Some(d) => client.lock_timeout(key, d).await,
        }
    };
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let status_line = async {
        if !tty {
            return std::future::pending::<std::convert::Infallible>().await;
        }
        // Refreshes once a second; inspection only, the wait itself is a
        // queued Acquire that the coordinator answers when the lock frees.
        let mut tick = tokio::time::interval_at((started + Duration::from_millis(500)).into(), Duration::from_secs(1));
        loop {
            tick.tick().await;
            let line = match client.get(key).await {
                Ok(info) => describe(&info, started.elapsed()),
                Err(e) => format!("waiting for {key}: {e}; waited {}", human(started.elapsed())),
            };
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2Kturnstile: {line}");
            let _ = err.flush();
        }
    };
    let outcome = tokio::select! {
        res = acquire => match res {
            Ok(g) => Waited::Got(g),
            Err(e) => Waited::Failed(e),
        },
        sig = signals.recv() => Waited::Interrupted(sig),
        never = status_line => match never {},
    };
    if tty && started.elapsed() >= Duration::from_millis(500) {
        eprint!("\r\x1b[2K");
    }
    outcome
}

/// The status line while waiting.
fn describe(info: &LockInfo, waited: Duration) -> String {
    let holder = match &info.holder {
        Some(h) => format!("held by {} (token {}, expires in {})", h.owner, h.fencing_token, human(h.expires_in)),
        None => "being handed over".to_owned(),
    };
    format!("waiting for {}: {holder}, {} waiting; waited {}", info.key, info.waiters, human(waited))
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnstile_client::Holder;

    #[test]
    fn the_status_line_names_the_holder_and_the_wait() {
        let info = LockInfo {
            key: "k".into(),
            holder: Some(Holder { owner: "h/1/ab/1".into(), fencing_token: 9, expires_in: Duration::from_secs(12) }),
            waiters: 1,
            grants_resume_in: None,
        };
        assert_eq!(
            describe(&info, Duration::from_secs(3)),
            "waiting for k: held by h/1/ab/1 (token 9, expires in 12s), 1 waiting; waited 3s"
        );
    }
}
