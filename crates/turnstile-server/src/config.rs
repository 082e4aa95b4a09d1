//! [`Config`]: every setting of `turnstiled`, as flags with `TURNSTILE_*`
//! environment variables, and [`Config::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where lock state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// In this process, restart-safe through `--data-dir`.
    Memory,
    /// In an etcd cluster that any number of turnstiled sidecars front.
    Etcd,
}

/// turnstiled: a lock coordinator handing out expiring leases with fencing
/// tokens over gRPC. Every flag can also be set with the environment variable
/// named beside it.
#[derive(Debug, Clone, Parser)]
#[command(name = "turnstiled", version, args_override_self = true)]
pub struct Config {
    /// gRPC address to listen on (LockService, health, reflection). Port 0 picks a free port.
    #[arg(long, env = "TURNSTILE_LISTEN", default_value = "127.0.0.1:7700", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// HTTP address for /metrics (Prometheus), /healthz and /readyz. Port 0 picks a free port.
    #[arg(long, env = "TURNSTILE_HTTP_LISTEN", default_value = "127.0.0.1:7701", value_parser = parse_listen)]
    pub http_listen: SocketAddr,

    /// Where lock state lives: `memory` (this process, restart-safe through --data-dir)
    /// or `etcd` (an etcd cluster shared by any number of turnstiled sidecars).
    #[arg(long, env = "TURNSTILE_BACKEND", value_enum, default_value = "memory")]
    pub backend: BackendKind,

    /// etcd endpoints for `--backend etcd`, comma-separated.
    #[arg(long, env = "TURNSTILE_ETCD_ENDPOINTS", value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,

    /// Prefix of every etcd key turnstile writes; sidecars with the same prefix share their locks.
    #[arg(long, env = "TURNSTILE_ETCD_PREFIX", default_value = "turnstile/")]
    pub etcd_prefix: String,

    /// Longest wait for one etcd call; past it the RPC gets UNAVAILABLE.
    #[arg(long, env = "TURNSTILE_ETCD_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub etcd_timeout: Duration,

    /// PEM file of the CA certificate(s) that etcd's certificate must chain to. Required
    /// with `https://` endpoints: turnstiled trusts no system roots for etcd.
    #[arg(long, env = "TURNSTILE_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,

    /// PEM file of the client certificate shown to etcd (for etcd's --client-cert-auth),
    /// with --etcd-key.
    #[arg(long, env = "TURNSTILE_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,

    /// PEM file of the private key of --etcd-cert.
    #[arg(long, env = "TURNSTILE_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,

    /// etcd user to authenticate as (etcd's `auth enable`); its password comes from
    /// --etcd-password-file or TURNSTILE_ETCD_PASSWORD.
    #[arg(long, env = "TURNSTILE_ETCD_USER")]
    pub etcd_user: Option<String>,

    /// Password of --etcd-user. Prefer the variable or --etcd-password-file: a flag's
    /// value is visible to every user of the machine in the process list.
    #[arg(long, env = "TURNSTILE_ETCD_PASSWORD", hide_env_values = true, requires = "etcd_user")]
    pub etcd_password: Option<String>,

    /// File whose content is the password of --etcd-user (one trailing newline is ignored).
    #[arg(long, env = "TURNSTILE_ETCD_PASSWORD_FILE", requires = "etcd_user", conflicts_with = "etcd_password")]
    pub etcd_password_file: Option<PathBuf>,

    /// Directory for the restart state of the memory backend (token block, lease
    /// horizon, shutdown snapshot); created if missing. An empty value runs without
    /// state: then mutual exclusion and fencing hold only within one process lifetime.
    #[arg(long, env = "TURNSTILE_DATA_DIR", default_value = "./turnstile-data", value_parser = parse_data_dir)]
    pub data_dir: PathBuf,

    /// TTL granted when a request leaves it unset.
    #[arg(long, env = "TURNSTILE_DEFAULT_TTL", default_value = "15s", value_parser = parse_duration)]
    pub default_ttl: Duration,

    /// Shortest TTL granted; shorter requests are raised to it.
    #[arg(long, env = "TURNSTILE_MIN_TTL", default_value = "100ms", value_parser = parse_duration)]
    pub min_ttl: Duration,

    /// Longest TTL granted; longer requests are lowered to it.
    #[arg(long, env = "TURNSTILE_MAX_TTL", default_value = "1h", value_parser = parse_duration)]
    pub max_ttl: Duration,

    /// Longest time an Acquire waits in a queue; longer wait_timeouts are lowered to it.
    #[arg(long, env = "TURNSTILE_MAX_WAIT", default_value = "5m", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// Waiters one key may queue; one more gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "TURNSTILE_MAX_WAITERS_PER_KEY", default_value_t = 10_000)]
    pub max_waiters_per_key: usize,

    /// Waiters parked at once across all keys (each costs a few KiB: its call, its
    /// stream, its queue entry); one more gets RESOURCE_EXHAUSTED (TOO_MANY_WAITERS).
    #[arg(long, env = "TURNSTILE_MAX_WAITERS", default_value_t = 20_000)]
    pub max_waiters: usize,

    /// Leases held at once across all keys; one more gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "TURNSTILE_MAX_LEASES", default_value_t = 10_000_000)]
    pub max_leases: usize,

    /// Largest result a Release may hand to sharing waiters; larger gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "TURNSTILE_MAX_RESULT_BYTES", default_value_t = 1024 * 1024)]
    pub max_result_bytes: usize,

    /// A wait ends this long before the call's own deadline (grpc-timeout), at most
    /// half the time the call has left, so that a grant still reaches the client in time.
    #[arg(long, env = "TURNSTILE_DEADLINE_MARGIN", default_value = "50ms", value_parser = parse_duration)]
    pub deadline_margin: Duration,

    /// Concurrent HTTP/2 streams (calls) one connection may open; the client is told
    /// in SETTINGS and more are refused by HTTP/2 (REFUSED_STREAM).
    #[arg(long, env = "TURNSTILE_MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    pub max_concurrent_streams: u32,

    /// Calls in progress at once across all connections, parked waiters, Release and
    /// Renew not counted (a release must always get through); more are shed at once
    /// with RESOURCE_EXHAUSTED (OVERLOADED).
    #[arg(long, env = "TURNSTILE_MAX_CONCURRENT_CALLS", default_value_t = 1024)]
    pub max_concurrent_calls: usize,

    /// Bytes of large responses (shared results, ListLocks pages) that may be in flight
    /// at once, from the handler until their last byte is handed to the connection:
    /// a shared result waits for room, a ListLocks call is shed (RESOURCE_EXHAUSTED).
    #[arg(long, env = "TURNSTILE_MAX_RESPONSE_BYTES_IN_FLIGHT", default_value_t = 64 * 1024 * 1024)]
    pub max_response_bytes_in_flight: usize,

    /// gRPC connections open at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "TURNSTILE_MAX_CONNECTIONS", default_value_t = 1000)]
    pub max_connections: usize,

    /// A connection with no call in progress for this long is closed (0: never).
    #[arg(long, env = "TURNSTILE_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// A new connection must complete its TLS handshake and send its first bytes
    /// within this long, or it is closed.
    #[arg(long, env = "TURNSTILE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// HTTP/2 PING sent on a connection after this long without frames from the client (0: never).
    #[arg(long, env = "TURNSTILE_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// A PING not acknowledged within this long closes the connection (a half-open
    /// one): its calls end and its waiters leave their queues.
    #[arg(long, env = "TURNSTILE_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Lock-table shards of the memory backend (each behind its own mutex, with its own expiry timer).
    #[arg(long, env = "TURNSTILE_SHARDS", default_value_t = 64)]
    pub shards: usize,

    /// Fencing tokens reserved per write of the state file.
    #[arg(long, env = "TURNSTILE_TOKEN_BLOCK", default_value_t = 1_000_000, hide_short_help = true)]
    pub token_block: u64,

    /// How far beyond a new lease expiry the persisted lease horizon is pushed.
    #[arg(long, env = "TURNSTILE_HORIZON_STEP", default_value = "10s", value_parser = parse_duration, hide_short_help = true)]
    pub horizon_step: Duration,

    /// Leases with a longer TTL are recorded one by one in the state file, so that after a
    /// crash only their own keys wait for them; shorter ones share one horizon, which a
    /// crash makes every key wait for (at most this plus --horizon-step).
    #[arg(long, env = "TURNSTILE_LONG_LEASE", default_value = "60s", value_parser = parse_duration, hide_short_help = true)]
    pub long_lease: Duration,

    /// Most keys recorded for long leases; past it a long lease is covered by the shared horizon.
    #[arg(long, env = "TURNSTILE_MAX_LONG_LEASES", default_value_t = 1024, hide_short_help = true)]
    pub max_long_leases: usize,

    /// After a crash, grant at once instead of waiting for leases the crashed process may
    /// have granted. Only when you know every holder from before the crash has stopped:
    /// mutual exclusion is then yours to ensure. Tokens are never reused either way.
    #[arg(long, env = "TURNSTILE_OVERRIDE_RECOVERY")]
    pub override_recovery: bool,

    /// PEM file of the server's certificate chain: serve gRPC over TLS (with --tls-key).
    /// Re-read on SIGHUP.
    #[arg(long, env = "TURNSTILE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file of the private key of --tls-cert. Re-read on SIGHUP.
    #[arg(long, env = "TURNSTILE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM file of the CA(s) whose client certificates are accepted: mutual TLS.
    /// A client without such a certificate is refused at the handshake. Re-read on SIGHUP.
    #[arg(long, env = "TURNSTILE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// File of bearer tokens, one JSON object per line, each with the key prefixes and
    /// verbs (lock, inspect, admin) it grants; every LockService call must then carry
    /// `authorization: Bearer <token>`. Re-read on SIGHUP. See README "Security".
    #[arg(long, env = "TURNSTILE_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Allow --listen on a non-loopback address without TLS and tokens: anyone who
    /// can reach the port can then take, hold and end every lock.
    #[arg(long, env = "TURNSTILE_INSECURE")]
    pub insecure: bool,

    /// Log format.
    #[arg(long, env = "TURNSTILE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `turnstile_server=debug`).
    #[arg(long, env = "TURNSTILE_LOG", default_value = "info")]
    pub log: String,
}

/// A setting that makes no sense, named by its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    /// The flag, without dashes.
    pub flag: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl Config {
    /// Checks that the settings fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |flag, reason: &str| Err(ConfigError { flag, reason: reason.to_owned() });
        if self.min_ttl.is_zero() {
            return err("min-ttl", "must be greater than zero");
        }
        if self.min_ttl > self.max_ttl {
            return err("min-ttl", "must not exceed --max-ttl");
        }
        if self.default_ttl < self.min_ttl || self.default_ttl > self.max_ttl {
            return err("default-ttl", "must lie between --min-ttl and --max-ttl");
        }
        if self.max_waiters_per_key == 0 {
            return err("max-waiters-per-key", "must be at least 1");
        }
        if self.max_waiters == 0 {
            return err("max-waiters", "must be at least 1");
        }
        if self.max_concurrent_streams == 0 {
            return err("max-concurrent-streams", "must be at least 1");
        }
        if self.max_connections == 0 {
            return err("max-connections", "must be at least 1");
        }
        if self.max_connections > MAX_CONNECTIONS {
            return err("max-connections", "must be at most 10000000");
        }
        if self.max_concurrent_calls == 0 {
            return err("max-concurrent-calls", "must be at least 1");
        }
        if self.max_concurrent_calls > MAX_CONCURRENT_CALLS {
            return err("max-concurrent-calls", "must be at most 10000000");
        }
        if self.max_response_bytes_in_flight < 64 * 1024 {
            return err("max-response-bytes-in-flight", "must be at least 64 KiB");
        }
        if self.max_response_bytes_in_flight > MAX_RESPONSE_BYTES_IN_FLIGHT {
            return err("max-response-bytes-in-flight", "must be at most 4294967295 (4 GiB - 1)");
        }
        if self.handshake_timeout.is_zero() {
            return err("handshake-timeout", "must be greater than zero");
        }
        if self.max_leases == 0 {
            return err("max-leases", "must be at least 1");
        }
        if self.shards == 0 || self.shards > 4096 {
            return err("shards", "must be between 1 and 4096");
        }
        if self.token_block == 0 {
            return err("token-block", "must be at least 1");
        }
        if self.max_result_bytes > 64 * 1024 * 1024 {
            return err("max-result-bytes", "must be at most 64 MiB (it must fit in one gRPC message)");
        }
        self.validate_security()?;
        if self.backend == BackendKind::Etcd {
            if self.etcd_endpoints.iter().all(|e| e.trim().is_empty()) {
                return err("etcd-endpoints", "must name at least one endpoint, e.g. http://127.0.0.1:2379");
            }
            self.validate_etcd_tls()?;
            if self.etcd_user.as_deref().is_some_and(str::is_empty) {
                return err("etcd-user", "must not be empty");
            }
            if self.etcd_user.is_some() && self.etcd_password.is_none() && self.etcd_password_file.is_none() {
                return err("etcd-user", "needs a password: --etcd-password-file or TURNSTILE_ETCD_PASSWORD");
            }
            if self.etcd_prefix.is_empty() {
                return err("etcd-prefix", "must not be empty");
            }
            // The etcd key layout ends the prefix with a `\0`; one inside it
            // could let two prefixes name one lock.
            if self.etcd_prefix.chars().any(char::is_control) {
                return err("etcd-prefix", "must not contain control characters");
            }
            if self.etcd_timeout.is_zero() {
                return err("etcd-timeout", "must be greater than zero");
            }
        }
        Ok(())
    }

    /// Endpoints are all `https://` or all `http://` (a bare `host:port` is
    /// `http://`); `https://` needs `--etcd-ca`, and the TLS files need
    /// `https://` (else they would silently not be used).
    fn validate_etcd_tls(&self) -> Result<(), ConfigError> {
        let endpoints: Vec<&str> = self.etcd_endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
        let (tls, plain): (Vec<&str>, Vec<&str>) =
            endpoints.iter().partition(|e| e.to_ascii_lowercase().starts_with("https://"));
        let err = |flag, reason: String| Err(ConfigError { flag, reason });
        match (tls.first(), plain.first()) {
            (Some(t), Some(p)) => err(
                "etcd-endpoints",
                format!("mixes https ({t}) and http ({p}) endpoints; use https:// for every member, or http:// for every one"),
            ),
            (Some(t), None) if self.etcd_ca.is_none() => err(
                "etcd-ca",
                format!("is needed with https:// endpoints ({t}): the PEM CA that signed etcd's certificate"),
            ),
            (None, _) if self.etcd_ca.is_some() || self.etcd_cert.is_some() => {
                let flag = if self.etcd_ca.is_some() { "etcd-ca" } else { "etcd-cert" };
                err(flag, "needs https:// endpoints in --etcd-endpoints (they are http://, so it would not be used)".into())
            }
            _ => Ok(()),
        }
    }

    /// A gRPC port that the network can reach needs TLS and tokens, or an
    /// explicit `--insecure`: without them anyone who reaches it can take,
    /// hold and end every lock, and read every key and owner.
    fn validate_security(&self) -> Result<(), ConfigError> {
        if self.listen.ip().is_loopback() || self.insecure {
            return Ok(());
        }
        let missing = match (self.tls_cert.is_some(), self.auth_token_file.is_some()) {
            (true, true) => return Ok(()),
            (false, false) => "TLS (--tls-cert, --tls-key) and tokens (--auth-token-file)",
            (false, true) => "TLS (--tls-cert, --tls-key)",
            (true, false) => "tokens (--auth-token-file)",
        };
        Err(ConfigError {
            flag: "listen",
            reason: format!(
                "{} is not a loopback address, and without {missing} anyone who can reach it could take, \
                 hold and end every lock; give them, or --insecure to listen like this anyway",
                self.listen
            ),
        })
    }

    /// The data dir, or `None` when state is disabled with `--data-dir ''`.
    pub fn state_dir(&self) -> Option<&std::path::Path> {
        (!self.data_dir.as_os_str().is_empty()).then_some(self.data_dir.as_path())
    }
}

/// A listen address: `IP:PORT`, or `HOST:PORT` resolved now (`localhost:7700`;
/// an IPv4 address is preferred when the name has both).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> =
        s.to_socket_addrs().map_err(|e| format!("{s:?} is not IP:PORT or HOST:PORT that resolves ({e})"))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// A data dir path; unlike clap's `PathBuf` parser this accepts the empty
/// value that disables state.
fn parse_data_dir(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// Largest `--max-connections`: each is a tokio semaphore permit, and a far
/// larger value once panicked the server after its ready line.
pub const MAX_CONNECTIONS: usize = 10_000_000;

/// Largest `--max-concurrent-calls`: each is a tokio semaphore permit, and a
/// far larger value once panicked the server at start.
pub const MAX_CONCURRENT_CALLS: usize = 10_000_000;

/// Largest `--max-response-bytes-in-flight` (4 GiB - 1): the bytes are
/// permits of one tokio semaphore, which the budget caps at `u32::MAX`.
pub const MAX_RESPONSE_BYTES_IN_FLIGHT: usize = u32::MAX as usize;

/// Parses `500ms`, `15s`, `1m`, `1h30m`, as humantime does.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 15s, 1m)"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("turnstiled").chain(args.iter().copied())).expect("parses")
    }

    #[test]
    fn defaults_match_design_md() {
        let c = parse(&[]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:7700");
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:7701");
        assert_eq!(c.default_ttl, Duration::from_secs(15));
        assert_eq!(c.min_ttl, Duration::from_millis(100));
        assert_eq!(c.max_ttl, Duration::from_secs(3600));
        assert_eq!(c.max_wait, Duration::from_secs(300));
        assert_eq!(c.max_waiters_per_key, 10_000);
        assert_eq!(c.max_leases, 10_000_000);
        assert_eq!(c.max_result_bytes, 1 << 20);
        assert_eq!(c.max_waiters, 20_000);
        assert_eq!(c.max_concurrent_streams, 100);
        assert_eq!(c.max_concurrent_calls, 1024);
        assert_eq!(c.max_connections, 1000);
        assert_eq!(c.max_response_bytes_in_flight, 64 << 20);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.http2_keepalive_interval, Duration::from_secs(30));
        assert_eq!(c.http2_keepalive_timeout, Duration::from_secs(10));

        assert!(c.validate().is_ok());
    }

    #[test]
    fn validate_names_the_flag_at_fault() {
        let c = parse(&["--min-ttl", "2s", "--max-ttl", "1s"]);
        assert_eq!(c.validate().unwrap_err().flag, "min-ttl");
        let c = parse(&["--default-ttl", "2h"]);
        assert_eq!(c.validate().unwrap_err().flag, "default-ttl");
    }

    #[test]
    fn validate_refuses_limits_too_large_for_a_semaphore() {
        // These once panicked in tokio ("a semaphore may not have more than
        // MAX_PERMITS") at start, or after the ready line.
        for flag in ["max-concurrent-calls", "max-connections", "max-response-bytes-in-flight"] {
            let c = parse(&[&format!("--{flag}"), "2305843009213693952"]);
            let e = c.validate().expect_err(flag);
            assert_eq!(e.flag, flag, "{e:?}");
            assert!(e.reason.contains("at most"), "{e:?}");
        }
        // The largest values README suggests to lift the limits still pass.
        let c = parse(&[
            "--max-concurrent-calls",
            "1000000",
            "--max-connections",
            "100000",
            "--max-response-bytes-in-flight",
            "4294967295",
        ]);
        c.validate().expect("README's large limits are accepted");
    }

    #[test]
    fn listen_takes_a_host_name_or_an_address_and_names_a_bad_one() {
        let c = Config::try_parse_from(["turnstiled", "--listen", "localhost:7700"]).expect("localhost parses");
        assert!(c.listen.ip().is_loopback() && c.listen.port() == 7700, "{}", c.listen);
        let c = Config::try_parse_from(["turnstiled", "--http-listen", "[::1]:0"]).expect("IPv6 parses");
        assert!(c.http_listen.is_ipv6());
        let e = Config::try_parse_from(["turnstiled", "--listen", "no port here"]).unwrap_err().to_string();
        assert!(e.contains("--listen") && e.contains("no port here"), "{e}");
    }

    #[test]
    fn etcd_flags_parse_and_validate() {
        let c = parse(&[]);
        assert_eq!(c.backend, BackendKind::Memory);
        assert_eq!(c.etcd_prefix, "turnstile/");
        let c = parse(&["--backend", "etcd", "--etcd-endpoints", "http://a:2379,http://b:2379"]);
        assert_eq!(c.backend, BackendKind::Etcd);
        assert_eq!(c.etcd_endpoints, ["http://a:2379", "http://b:2379"]);
        assert!(c.validate().is_ok());
        let c = parse(&["--backend", "etcd", "--etcd-prefix", ""]);
        assert_eq!(c.validate().unwrap_err().flag, "etcd-prefix");
        let c = parse(&["--backend", "etcd", "--etcd-prefix", "turnstile\t/"]);
        assert_eq!(c.validate().unwrap_err().flag, "etcd-prefix");
        // Any other prefix is a lock space of its own: no trailing `/` needed.
        assert!(parse(&["--backend", "etcd", "--etcd-prefix", "turnstile/pay"]).validate().is_ok());
    }

    #[test]
    fn etcd_tls_flags_fit_the_endpoints() {
        let etcd = |args: &[&str]| parse(&[&["--backend", "etcd"], args].concat()).validate();
        let mixed = etcd(&["--etcd-endpoints", "https://a:2379,http://b:2379", "--etcd-ca", "ca.pem"]).unwrap_err();
        assert_eq!(mixed.flag, "etcd-endpoints");
        assert!(mixed.to_string().contains("https://a:2379") && mixed.to_string().contains("http://b:2379"), "{mixed}");
        // A bare host:port is http://.
        assert_eq!(
            etcd(&["--etcd-endpoints", "HTTPS://a:2379,b:2379", "--etcd-ca", "c"]).unwrap_err().flag,
            "etcd-endpoints"
        );
        assert_eq!(etcd(&["--etcd-endpoints", "https://a:2379"]).unwrap_err().flag, "etcd-ca");
        assert!(etcd(&["--etcd-endpoints", "https://a:2379,https://b:2379", "--etcd-ca", "ca.pem"]).is_ok());
        let mtls = ["--etcd-endpoints", "https://a:2379", "--etcd-ca", "ca", "--etcd-cert", "c", "--etcd-key", "k"];
        assert!(etcd(&mtls).is_ok());
        assert_eq!(etcd(&["--etcd-ca", "ca.pem"]).unwrap_err().flag, "etcd-ca");
        assert_eq!(etcd(&["--etcd-cert", "c", "--etcd-key", "k"]).unwrap_err().flag, "etcd-cert");
        assert!(parse_err(&["--etcd-cert", "c.pem"]).contains("--etcd-key"));
        assert!(parse_err(&["--etcd-key", "k.pem"]).contains("--etcd-cert"));
    }

    #[test]
    fn etcd_user_needs_one_password_source() {
        let etcd = |args: &[&str]| parse(&[&["--backend", "etcd"], args].concat()).validate();
        assert_eq!(etcd(&["--etcd-user", "turnstile"]).unwrap_err().flag, "etcd-user");
        assert!(etcd(&["--etcd-user", "turnstile", "--etcd-password", "pw"]).is_ok());
        assert!(etcd(&["--etcd-user", "turnstile", "--etcd-password-file", "pw.txt"]).is_ok());
        assert!(parse_err(&["--etcd-user", "u", "--etcd-password", "pw", "--etcd-password-file", "f"])
            .contains("--etcd-password-file"));
        assert!(parse_err(&["--etcd-password", "pw"]).contains("--etcd-user"));
        // --help names the variable; its value is never shown (hide_env_values).
        let help = Config::command().render_long_help().to_string();
        assert!(help.contains("TURNSTILE_ETCD_PASSWORD"), "{help}");
    }

    #[test]
    fn a_non_loopback_listener_needs_tls_and_tokens_or_insecure() {
        for loopback in ["127.0.0.1:0", "[::1]:0"] {
            assert!(parse(&["--listen", loopback]).validate().is_ok(), "{loopback}");
        }
        let err = parse(&["--listen", "0.0.0.0:7700"]).validate().unwrap_err();
        assert_eq!(err.flag, "listen");
        assert!(err.to_string().contains("TLS (--tls-cert, --tls-key) and tokens (--auth-token-file)"), "{err}");
        assert!(err.to_string().contains("--insecure"), "{err}");
        let tls = ["--listen", "10.0.0.1:7700", "--tls-cert", "c.pem", "--tls-key", "k.pem"];
        let err = parse(&tls).validate().unwrap_err();
        assert!(err.to_string().contains("without tokens (--auth-token-file)"), "{err}");
        let err = parse(&["--listen", "10.0.0.1:7700", "--auth-token-file", "t"]).validate().unwrap_err();
        assert!(err.to_string().contains("without TLS (--tls-cert, --tls-key) anyone"), "{err}");
        assert!(parse(&[&tls[..], &["--auth-token-file", "t"]].concat()).validate().is_ok());
        assert!(parse(&["--listen", "0.0.0.0:7700", "--insecure"]).validate().is_ok());
    }

    #[test]
    fn tls_files_come_in_pairs() {
        assert!(parse_err(&["--tls-cert", "c.pem"]).contains("--tls-key"));
        assert!(parse_err(&["--tls-key", "k.pem"]).contains("--tls-cert"));
        assert!(parse_err(&["--tls-client-ca", "ca.pem"]).contains("--tls-cert"));
    }

    fn parse_err(args: &[&str]) -> String {
        Config::try_parse_from(std::iter::once("turnstiled").chain(args.iter().copied()))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn empty_data_dir_disables_state() {
        assert!(parse(&["--data-dir", ""]).state_dir().is_none());
        assert!(parse(&["--data-dir="]).state_dir().is_none());
        assert!(parse(&[]).state_dir().is_some());
    }
}
