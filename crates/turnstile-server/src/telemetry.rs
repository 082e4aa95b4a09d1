//! Telemetry: Prometheus metrics ([`Metrics`]) and log set-up ([`init_logging`]).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::LogFormat;

type Outcomes = Family<Vec<(&'static str, &'static str)>, Counter>;

/// The server's metrics. Counters are resolved once at start-up, so counting
/// on the hot path is one atomic add.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Acquires granted (new leases and refreshes).
    pub acquired: Counter,
    /// Try-locks answered "held by someone else".
    pub contended: Counter,
    /// Waits that ended without a grant.
    pub wait_timeouts: Counter,
    /// Waiters answered with a holder's result.
    pub shared_results: Counter,
    /// Waiters removed because their call went away.
    pub waiters_cancelled: Counter,
    /// Grants taken back because their waiter was gone (G6).
    pub grants_taken_back: Counter,
    /// Leases that ran out without renewal.
    pub leases_expired: Counter,
    /// Renews that extended a lease.
    pub renewed: Counter,
    /// Releases that ended a live lease.
    pub released: Counter,
    /// Calls refused, by RPC and status code.
    errors: Family<Vec<(&'static str, String)>, Counter>,
    /// Leases held now (set at scrape time).
    pub leases_held: Gauge,
    /// Seconds until grants resume on every key after a crash (scrape time).
    pub recovery_seconds_left: Gauge,
    /// Keys held back after a crash for their long leases (scrape time).
    pub keys_held_back: Gauge,
    /// Writes of the state file (brought up to date at scrape time).
    pub state_writes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `turnstile_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("turnstile");
        let outcomes = Outcomes::default();
        registry.register("acquire", "Acquire calls by outcome", outcomes.clone());
        let outcome = |o: &'static str| outcomes.get_or_create(&vec![("outcome", o)]).clone();
        let (acquired, contended, wait_timeouts, shared_results, waiters_cancelled, grants_taken_back) = (
            outcome("acquired"),
            outcome("contended"),
            outcome("wait_timeout"),
            outcome("shared_result"),
            outcome("cancelled"),
            outcome("taken_back"),
        );
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let leases_expired = counter("leases_expired", "Leases that ran out without renewal");
        let renewed = counter("renewed", "Leases extended by Renew");
        let released = counter("released", "Leases ended by Release");
        let errors = Family::default();
        registry.register("errors", "Calls refused, by RPC and gRPC status code", errors.clone());
        let leases_held = Gauge::default();
        registry.register("leases_held", "Leases held now", leases_held.clone());
        let recovery_seconds_left = Gauge::default();
        registry.register(
            "recovery_seconds_left",
            "Seconds until grants resume on every key after a crash (0 when not recovering)",
            recovery_seconds_left.clone(),
        );
        let keys_held_back = Gauge::default();
        registry.register(
            "keys_held_back",
            "Keys held back after a crash until their long leases end",
            keys_held_back.clone(),
        );
        let state_writes = Counter::default();
        registry.register("state_writes", "Writes of the state file (fsync + rename)", state_writes.clone());
        Metrics {
            registry,
            acquired,
            contended,
            wait_timeouts,
            shared_results,
            waiters_cancelled,
            grants_taken_back,
            leases_expired,
            renewed,
            released,
            errors,
            leases_held,
            recovery_seconds_left,
            keys_held_back,
            state_writes,
        }
    }

    /// Counts a refused call.
    pub fn error(&self, rpc: &'static str, code: tonic::Code) {
        self.errors.get_or_create(&vec![("rpc", rpc.to_owned()), ("code", format!("{code:?}"))]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Installs the global tracing subscriber: text or JSON lines on stderr,
/// filtered by `filter` (EnvFilter syntax, see [`effective_filter`]). Colours
/// only when stderr is a terminal; JSON lines are flat (`message` and the
/// event's fields at the top level), one object per line.
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(effective_filter(filter)).map_err(|e| format!("--log: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    res.map_err(|e| e.to_string())
}

/// The transport crates log every HTTP/2 frame at debug: `--log debug` is
/// for turnstile's own events (grants, expiries, take-backs), so those
/// crates stay at `info` unless the filter names one of them itself.
const TRANSPORT_CRATES: [&str; 5] = ["h2", "hyper", "hyper_util", "tower", "tonic"];

/// `--log` as given, with the transport crates held at `info` unless it
/// names one of them (`--log debug,h2=trace` shows the frames).
pub fn effective_filter(filter: &str) -> String {
    let names_one = filter.split(',').any(|d| {
        let target = d.split('=').next().unwrap_or("").trim();
        TRANSPORT_CRATES.iter().any(|c| target == *c || target.starts_with(&format!("{c}::")))
    });
    if names_one || filter.trim().is_empty() {
        return filter.to_owned();
    }
    let quiet: Vec<String> = TRANSPORT_CRATES.iter().map(|c| format!("{c}=info")).collect();
    format!("{filter},{}", quiet.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_logs_leave_the_transport_at_info_unless_asked() {
        assert_eq!(effective_filter("debug"), "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info");
        assert_eq!(effective_filter("info,turnstile_server=debug").matches("=info").count(), 5);
        assert_eq!(effective_filter("debug,h2=trace"), "debug,h2=trace");
        assert_eq!(effective_filter("hyper::proto=debug"), "hyper::proto=debug");
        assert!(tracing_subscriber::EnvFilter::try_new(effective_filter("warn")).is_ok());
    }

    #[test]
    fn exposition_names_counters_and_labels() {
        let m = Metrics::new();
        m.acquired.inc();
        m.error("Renew", tonic::Code::NotFound);
        let text = m.encode();
        assert!(text.contains(r#"turnstile_acquire_total{outcome="acquired"} 1"#), "{text}");
        assert!(text.contains(r#"turnstile_errors_total{rpc="Renew",code="NotFound"} 1"#), "{text}");
    }
}
