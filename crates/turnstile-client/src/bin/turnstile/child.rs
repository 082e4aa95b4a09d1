//! The command run under a lock: spawned in its own process group (so a lost
//! lease stops everything it started), killed by the kernel if turnstile dies
//! (Linux), signalled as a group; and the signals turnstile itself receives.

use std::ffi::OsString;
use std::io;
use std::process::ExitStatus;

use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::cli::exit;

/// Starts `argv` with the lock's facts in its environment, as the leader of a
/// new process group.
pub(crate) fn spawn(argv: &[OsString], key: &str, token: u64, owner: &str) -> io::Result<Child> {
    let (program, args) =
        argv.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("TURNSTILE_KEY", key)
        .env("TURNSTILE_FENCING_TOKEN", token.to_string())
        .env("TURNSTILE_OWNER", owner)
        .process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe calls (prctl, getppid) without allocating
        // on the success path.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                // If turnstile dies (even by SIGKILL), the kernel kills the
                // command, so it never runs on without the lock. The main
                // thread spawns it (current-thread runtime), and the signal
                // is tied to the thread that forked.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // turnstile died between fork and prctl: do not run.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::other("turnstile exited before the command started"));
                }
                Ok(())
            });
        }
    }
    cmd.spawn()
}

/// The exit code for a spawn failure, in the manner of env(1) and timeout(1).
pub(crate) fn spawn_failure_code(e: &io::Error) -> u8 {
    match e.kind() {
        io::ErrorKind::NotFound => exit::NOT_FOUND,
        _ => exit::CANNOT_RUN,
    }
}

/// Sends `sig` to every process of the group led by `pgid`.
pub(crate) fn signal_group(pgid: u32, sig: i32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a
    // group that is already gone just gives ESRCH.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// The shell's rendering of an exit status: the code, or 128+N for signal N.
pub(crate) fn status_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(exit::FAILED),
        (None, Some(sig)) => exit::SIGNAL_BASE.saturating_add(u8::try_from(sig).unwrap_or(0)),
        (None, None) => exit::FAILED,
    }
}

/// The signals turnstile passes on to the command (or that end a wait).
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    /// Starts listening for SIGINT, SIGTERM and SIGHUP.
    pub(crate) fn new() -> io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal received, as its number.
    pub(crate) async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}
