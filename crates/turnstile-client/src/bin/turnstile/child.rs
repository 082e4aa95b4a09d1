//! The command run under a lock: spawned in its own process group (so a lost
//! lease stops everything it started), killed by the kernel if turnstile dies
//! (Linux), its whole group killed by a watchdog process if turnstile dies,
//! signalled as a group; and the signals turnstile itself receives.

use std::ffi::OsString;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{ExitStatus, Stdio};

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
    // 0 would be our own group and 1 every process we may signal (kill(-1)).
    let Some(pgid) = libc::pid_t::try_from(pgid).ok().filter(|&p| p > 1) else { return };
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

/// The name of the hidden subcommand that runs the watchdog.
pub(crate) const WATCHDOG: &str = "__watchdog";

/// How long a disarmed watchdog is given to exit.
const WATCHDOG_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A watchdog process for the command's process group.
///
/// The kernel's parent-death signal reaches only the command itself, not what
/// it started (`sh -c "a; b"` runs `a` as a grandchild), and those would run
/// on unlocked if turnstile were killed. So before the command starts,
/// turnstile starts itself again as `turnstile __watchdog`, in its own process
/// group (out of reach of the terminal's signals), with the read end of a pipe
/// as its input; turnstile keeps the write end. Once the command runs,
/// turnstile writes its process group id as a line. When the watchdog then
/// reads end of file, turnstile has died (or gave up on the command) and the
/// watchdog kills the whole group with SIGKILL; when it reads one more byte
/// ([`Watchdog::disarm`]) the command has ended normally and it just exits.
pub(crate) struct Watchdog {
    /// The write end of the pipe; closing it without disarming kills the group.
    pipe: Option<std::fs::File>,
    /// The watchdog process, waited for when disarmed.
    process: Child,
}

impl Watchdog {
    /// Starts the watchdog process, which waits for [`Watchdog::watch`].
    pub(crate) fn spawn() -> io::Result<Watchdog> {
        let (read, write) = pipe()?;
        // The binary itself, even if its file was replaced meanwhile.
        let exe = if cfg!(target_os = "linux") {
            std::path::PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe()?
        };
        let process =
            Command::new(exe).arg(WATCHDOG).stdin(Stdio::from(read)).stdout(Stdio::null()).process_group(0).spawn()?;
        Ok(Watchdog { pipe: Some(write), process })
    }

    /// Tells the watchdog which process group to kill should turnstile die.
    pub(crate) fn watch(&mut self, pgid: u32) -> io::Result<()> {
        match &mut self.pipe {
            Some(pipe) => pipe.write_all(format!("{pgid}\n").as_bytes()),
            None => Ok(()),
        }
    }

    /// The command has ended: the watchdog exits without killing its group.
    /// Waits (briefly) for it to exit, so that nothing it does outlasts
    /// turnstile's own exit.
    pub(crate) async fn disarm(mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            // If the watchdog is gone already, there is nothing to tell it.
            let _ = pipe.write_all(b"x");
        }
        if tokio::time::timeout(WATCHDOG_EXIT, self.process.wait()).await.is_err() {
            eprintln!(
                "turnstile: warning: the watchdog did not exit within {}",
                turnstile_client::human_duration(WATCHDOG_EXIT)
            );
        }
    }
}

/// A pipe whose ends are closed on exec (so only the watchdog's stdin, set up
/// by the spawn, survives in a child): (read end, write end).
fn pipe() -> io::Result<(OwnedFd, std::fs::File)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass, which is
    // exactly two ints long.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by
    // nobody else.
    #[allow(unsafe_code)]
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((read, std::fs::File::from(write)))
}

/// The watchdog process (`turnstile __watchdog`): reads a process group id
/// line from stdin, then waits; end of file means turnstile died, and the
/// group gets SIGKILL; any byte means the command ended normally. Returns the
/// exit code.
pub(crate) fn watchdog() -> u8 {
    // Only the pipe decides: a Ctrl-C or hangup meant for turnstile's group
    // must not stop the watchdog first.
    // SAFETY: setting signal dispositions to SIG_IGN touches no memory.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut input = io::stdin().lock();
    let mut line = String::new();
    match input.read_line(&mut line) {
        // turnstile ended before the command ran: nothing to watch.
        Ok(_) if !line.ends_with('\n') => return 0,
        Ok(_) => {}
        Err(_) => return exit::FAILED,
    }
    let Ok(pgid) = line.trim().parse::<u32>() else { return exit::FAILED };
    let mut byte = [0u8; 1];
    loop {
        match input.read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // End of file (turnstile is gone) or a broken input: do not let
            // the command's group run on unlocked.
            Ok(0) | Err(_) => {
                signal_group(pgid, libc::SIGKILL);
                return 0;
            }
            Ok(_) => return 0,
        }
    }
}
