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
    /// Re-reads of the TLS and token files (SIGHUP), by file and result.
    reloads: Outcomes,
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
        let reloads = Outcomes::default();
        registry.register(
            "reloads",
            "Re-reads of the TLS and token files on SIGHUP, by file and result",
            reloads.clone(),
        );
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
            reloads,
        }
    }

    /// Counts a re-read of `file` (`tls` or `tokens`).
    pub fn reload(&self, file: &'static str, ok: bool) {
        self.reloads.get_or_create(&vec![("file", file), ("result", if ok { "ok" } else { "error" })]).inc();
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
/// filtered by `filter` (EnvFilter syntax).
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| format!("--log: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    res.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
