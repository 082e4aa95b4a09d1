//! The command line of `turnstile`: flags, environment variables and
//! subcommands (clap derive), and the exit codes it documents.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Exit codes of `turnstile` itself (`lock` otherwise exits with the
/// command's own status).
pub(crate) mod exit {
    /// `release`: the lease had already ended; nothing was released.
    pub(crate) const NOT_RELEASED: u8 = 1;
    /// `health`: the coordinator answered NOT_SERVING.
    pub(crate) const NOT_SERVING: u8 = 1;
    /// `lock`: the lock was not obtained within `--wait` (EX_TEMPFAIL).
    pub(crate) const NOT_OBTAINED: u8 = 75;
    /// `lock`: the lease was lost while the command ran (the command was
    /// stopped), or was found lost when it ended.
    pub(crate) const LOST: u8 = 76;
    /// turnstile itself failed: coordinator unreachable, request refused.
    pub(crate) const FAILED: u8 = 125;
    /// `lock`: the command was found but could not be run.
    pub(crate) const CANNOT_RUN: u8 = 126;
    /// `lock`: the command was not found.
    pub(crate) const NOT_FOUND: u8 = 127;
    /// Added to a signal number: the command died of that signal, or
    /// turnstile was interrupted by it while waiting.
    pub(crate) const SIGNAL_BASE: u8 = 128;
}

const AFTER_HELP: &str = "\
Exit codes:
  0-255  lock: the command's own exit status (128+N when it died of signal N)
  1      release: the lease had already ended (with --force: the key had no
         live lease, or only one with another token)
  2      usage error
  75     lock: not obtained within --wait (see --conflict-exit-code)
  76     lock: the lease was lost while the command ran (it was stopped),
         or was found lost when the command ended
  125    turnstile failed (coordinator unreachable, request refused)
  126    lock: the command could not be run
  127    lock: the command was not found
  128+N  lock: interrupted by signal N while waiting for the lock";

/// turnstile: take locks on the turnstile coordinator from a shell, and
/// inspect them.
#[derive(Debug, Parser)]
#[command(name = "turnstile", version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Address of the coordinator (`http://host:port`, or `https://host:port` for TLS;
    /// a bare `host:port` means http).
    #[arg(long, global = true, env = "TURNSTILE_ADDR", default_value = "http://127.0.0.1:7700")]
    pub(crate) addr: String,

    /// How long one call may take beyond waiting for a lock.
    #[arg(long, global = true, env = "TURNSTILE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,

    /// Bearer token sent with every call (`authorization: Bearer TOKEN`), for a
    /// coordinator started with --auth-token-file. Prefer the environment variable:
    /// a flag shows in `ps`.
    #[arg(long = "token", global = true, env = "TURNSTILE_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub(crate) bearer_token: Option<String>,

    /// PEM file of the CA that signed the coordinator's certificate, for an https://
    /// --addr (without it: the system's root certificates).
    #[arg(long = "ca", alias = "tls-ca", global = true, env = "TURNSTILE_TLS_CA", value_name = "PEM")]
    pub(crate) tls_ca: Option<PathBuf>,

    /// PEM file of this client's certificate, for mutual TLS (with --key).
    #[arg(
        long = "cert",
        alias = "tls-cert",
        global = true,
        env = "TURNSTILE_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub(crate) tls_cert: Option<PathBuf>,

    /// PEM file of this client's private key, for mutual TLS (with --cert).
    #[arg(
        long = "key",
        alias = "tls-key",
        global = true,
        env = "TURNSTILE_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub(crate) tls_key: Option<PathBuf>,

    /// Name to check the coordinator's certificate against (default: the host of --addr).
    #[arg(long, global = true, env = "TURNSTILE_TLS_DOMAIN", value_name = "NAME")]
    pub(crate) tls_domain: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a command while holding the lock on KEY (like flock(1)).
    ///
    /// The command gets TURNSTILE_KEY, TURNSTILE_FENCING_TOKEN and
    /// TURNSTILE_OWNER in its environment and runs in its own process group.
    /// If the lease is lost, the group gets SIGTERM, then SIGKILL after
    /// --grace. SIGINT, SIGTERM and SIGHUP sent to turnstile are passed on to
    /// the group; a second SIGINT or SIGTERM kills it (SIGKILL), and so does
    /// any of them during --grace. If turnstile itself is killed, the whole
    /// group is killed too. turnstile exits with the command's status, or 76
    /// if the lease was lost before the command ended.
    Lock(LockArgs),
    /// Show who holds KEY, for how long, and how many wait. While the
    /// coordinator recovers after a crash (no lease is granted on any key) a
    /// note on stderr says so, with the seconds left.
    Get {
        /// The key.
        #[arg(value_parser = parse_key)]
        key: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List held or awaited keys starting with PREFIX (all keys without it).
    Ls {
        /// Only keys starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End the lease on KEY with fencing token TOKEN, whoever holds it; with
    /// --force, end whatever lease holds KEY (an operator's tool for a stuck
    /// key).
    ///
    /// Without --force this is a Release with the lease's token (the `lock`
    /// verb): what the holder itself would send; shared-result waiters get no
    /// result. With --force it is a ForceRelease (the `admin` verb when the
    /// coordinator demands tokens): the lease ends exactly as if it had
    /// expired, the next waiter is granted, and the old holder learns at its
    /// next renew that its lease is gone. With --force and TOKEN, only the
    /// lease with that token is ended (so a lease granted since you looked
    /// is left alone).
    Release {
        /// End whatever lease holds KEY (admin), as if it had expired.
        #[arg(long)]
        force: bool,
        /// The key.
        #[arg(value_parser = parse_key)]
        key: String,
        /// The fencing token of the lease to end (optional with --force).
        #[arg(required_unless_present = "force", value_parser = parse_token)]
        token: Option<u64>,
    },
    /// Check that the coordinator is up and SERVING (gRPC health), like
    /// `etcdctl endpoint health`: prints its state and exits 0 when SERVING,
    /// 1 when it answers NOT_SERVING (recovering after a crash, or stopping).
    Health,
    /// Internal to `lock` (hidden): kill the command's process group if
    /// turnstile dies. See `child::Watchdog`.
    #[command(name = crate::child::WATCHDOG, hide = true)]
    Watchdog,
}

/// Arguments of `turnstile lock`.
#[derive(Debug, Args)]
pub(crate) struct LockArgs {
    /// The key to lock, e.g. `payment:42`.
    #[arg(value_parser = parse_key)]
    pub(crate) key: String,

    /// Lease TTL; the lease is renewed about every third of it while the command runs.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) ttl: Duration,

    /// How long to wait for the lock (0: try once). Default: as long as it
    /// takes, also while the coordinator is unreachable or restarting once it
    /// has answered (one that never answers fails after --timeout).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) wait: Option<Duration>,

    /// Time between SIGTERM and SIGKILL when the lease is lost.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) grace: Duration,

    /// Owner prefix shown to others (default: host/pid/random).
    #[arg(long)]
    pub(crate) owner: Option<String>,

    /// Exit code when the lock is not obtained within --wait.
    #[arg(long, default_value_t = exit::NOT_OBTAINED)]
    pub(crate) conflict_exit_code: u8,

    /// The command and its arguments, after `--`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub(crate) command: Vec<OsString>,
}

/// A key as given: an empty one is a usage error, found before any call.
/// (Every other rule of keys is the coordinator's, and said by it.)
pub(crate) fn parse_key(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the key must not be empty".to_owned());
    }
    Ok(s.to_owned())
}

/// A fencing token as given: a number from 1 (0 is never granted), else a
/// usage error found before any call, like an empty key.
pub(crate) fn parse_token(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("fencing tokens start at 1; 0 names no lease".to_owned()),
        Ok(t) => Ok(t),
        Err(e) => Err(format!("{e}: a fencing token is a number from 1 to {}", u64::MAX)),
    }
}

/// Parses `500ms`, `30s`, `1m`, `1h30m`, or `0`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 1m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("turnstile").chain(args.iter().copied()))
    }

    #[test]
    fn lock_takes_the_command_after_the_double_dash() {
        let cli =
            parse(&["lock", "k", "--ttl", "500ms", "--wait", "0", "--", "sh", "-c", "echo --ttl"]).expect("parses");
        let Command::Lock(a) = cli.command else { panic!("not lock") };
        assert_eq!(a.ttl, Duration::from_millis(500));
        assert_eq!(a.wait, Some(Duration::ZERO));
        assert_eq!(a.command, ["sh", "-c", "echo --ttl"].map(OsString::from));
    }

    #[test]
    fn defaults() {
        let cli = parse(&["lock", "k", "--", "true"]).expect("parses");
        let Command::Lock(a) = cli.command else { panic!("not lock") };
        assert_eq!((a.ttl, a.wait, a.grace), (Duration::from_secs(30), None, Duration::from_secs(5)));
        assert_eq!(a.conflict_exit_code, 75);
    }

    #[test]
    fn bad_durations_and_missing_commands_are_usage_errors() {
        assert!(parse(&["lock", "k", "--ttl", "soon", "--", "true"]).is_err());
        assert!(parse(&["lock", "k"]).is_err());
        assert_eq!(parse(&["lock", "k"]).expect_err("no command").exit_code(), 2);
    }

    #[test]
    fn the_bearer_token_and_the_fencing_token_are_distinct() {
        let cli = parse(&["--token", "secret", "release", "k", "7"]).expect("parses");
        assert_eq!(cli.bearer_token.as_deref(), Some("secret"));
        assert!(matches!(cli.command, Command::Release { token: Some(7), force: false, .. }));
    }

    #[test]
    fn tls_flags_are_ca_cert_and_key_and_come_in_pairs() {
        let cli = parse(&["--ca", "ca.pem", "--cert", "c.pem", "--key", "k.pem", "ls"]).expect("parses");
        assert_eq!(cli.tls_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!((cli.tls_cert.is_some(), cli.tls_key.is_some()), (true, true));
        assert!(parse(&["--cert", "c.pem", "ls"]).is_err());
        assert!(parse(&["--key", "k.pem", "ls"]).is_err());
        // The lock's key is a positional argument; --key is the TLS key file.
        let cli = parse(&["lock", "payment:42", "--", "true"]).expect("parses");
        assert!(cli.tls_key.is_none());
    }

    #[test]
    fn the_watchdog_is_hidden_from_help() {
        use clap::CommandFactory;
        assert!(matches!(parse(&[crate::child::WATCHDOG]).expect("parses").command, Command::Watchdog));
        let help = Cli::command().render_long_help().to_string();
        assert!(!help.contains("watchdog"), "{help}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
