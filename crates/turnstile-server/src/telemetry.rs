//! Telemetry: Prometheus metrics ([`Metrics`], OpenMetrics text through
//! prometheus-client) and log set-up ([`init_logging`]).

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::LogFormat;

/// The Content-Type of [`Metrics::encode`]'s output (OpenMetrics).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Content-Type of [`Metrics::encode_text`]'s output (Prometheus text 0.0.4).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Outcomes = Family<Vec<(&'static str, &'static str)>, Counter>;
/// Labels are fixed-size arrays of static strings: counting a call looks its
/// series up without allocating.
type Labelled = Family<[(&'static str, &'static str); 2], Counter>;
type Latencies = Family<[(&'static str, &'static str); 1], Histogram>;

/// Seconds from 50 µs to about 100 s, doubling.
fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

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
    /// Renews of a lease that had ended (NOT_FOUND).
    pub renew_not_found: Counter,
    /// Releases that ended a live lease.
    pub released: Counter,
    /// Releases of a lease that had ended already (`released: false`).
    pub release_already_ended: Counter,
    /// Leases ended by an operator's ForceRelease (`turnstile_force_releases_total`).
    pub force_releases: Counter,
    /// Calls answered, by RPC and gRPC status code.
    calls: Labelled,
    /// Call latency, by RPC.
    latency: Latencies,
    /// How long acquires waited in a queue before their answer.
    pub wait_seconds: Histogram,
    /// From the end of a lease (release or expiry) to the next waiter's
    /// handler holding the grant.
    pub handoff_seconds: Histogram,
    /// How long leases were held: from the grant to the release, expiry or
    /// force release. Memory backend only: an etcd lease ends in etcd, where
    /// no one sidecar sees both its grant and its end.
    pub hold_seconds: Histogram,
    /// Leases held now (set at scrape time).
    pub leases_held: Gauge,
    /// Acquires parked in a queue now.
    pub waiters: Gauge,
    /// Whether the backend can serve (1) or not (0), at scrape time.
    pub backend_up: Gauge,
    /// Seconds until grants resume on every key after a crash (scrape time).
    pub recovery_seconds_left: Gauge,
    /// Keys held back after a crash for their long leases (scrape time).
    pub keys_held_back: Gauge,
    /// Writes of the state file (brought up to date at scrape time).
    pub state_writes: Counter,
    /// Re-reads of the TLS and token files (SIGHUP), by file and result.
    reloads: Outcomes,
    process: Process,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric: turnstile's under the `turnstile_` prefix,
    /// the process's (`process_*`) as Prometheus client libraries name them.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let process = Process::register(&mut root);
        let registry = root.sub_registry_with_prefix("turnstile");
        let build_info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build_info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))]).set(1);
        registry.register("build_info", "The turnstiled build (value 1)", build_info);
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
        let renews = Outcomes::default();
        registry.register("renew", "Renew calls by outcome", renews.clone());
        let renewed = renews.get_or_create(&vec![("outcome", "renewed")]).clone();
        let renew_not_found = renews.get_or_create(&vec![("outcome", "not_found")]).clone();
        let releases = Outcomes::default();
        registry.register("release", "Release calls by outcome", releases.clone());
        let released = releases.get_or_create(&vec![("outcome", "released")]).clone();
        let release_already_ended = releases.get_or_create(&vec![("outcome", "already_ended")]).clone();
        let leases_expired = Counter::default();
        registry.register("leases_expired", "Leases that ran out without renewal", leases_expired.clone());
        let force_releases = Counter::default();
        registry.register(
            "force_releases",
            "Leases ended by an operator's ForceRelease (admin), as if they had expired",
            force_releases.clone(),
        );
        let calls = Labelled::default();
        registry.register("calls", "Calls answered, by RPC and gRPC status code", calls.clone());
        let latency = Latencies::new_with_constructor(seconds_buckets as fn() -> Histogram);
        registry.register("call_seconds", "Call latency by RPC, in seconds", latency.clone());
        let wait_seconds = seconds_buckets();
        registry.register("wait_seconds", "Time acquires spent queued before their answer", wait_seconds.clone());
        let handoff_seconds = seconds_buckets();
        registry.register(
            "handoff_seconds",
            "From the end of a lease (release or expiry) to the next waiter holding it",
            handoff_seconds.clone(),
        );
        // Leases run from 100 ms to an hour: 1 ms .. 70 min.
        let hold_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 23));
        registry.register(
            "hold_seconds",
            "How long leases were held, from the grant to the release or expiry",
            hold_seconds.clone(),
        );
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let leases_held = gauge("leases_held", "Leases held now");
        let waiters = gauge("waiters", "Acquires parked in a queue now");
        let backend_up = gauge("backend_up", "Whether the backend can serve (1) or not (0)");
        let recovery_seconds_left = gauge(
            "recovery_seconds_left",
            "Seconds until grants resume on every key after a crash (0 when not recovering)",
        );
        let keys_held_back = gauge("keys_held_back", "Keys held back after a crash until their long leases end");
        let state_writes = Counter::default();
        registry.register("state_writes", "Writes of the state file (fsync + rename)", state_writes.clone());
        let reloads = Outcomes::default();
        registry.register(
            "reloads",
            "Re-reads of the TLS and token files on SIGHUP, by file and result",
            reloads.clone(),
        );
        Metrics {
            registry: root,
            acquired,
            contended,
            wait_timeouts,
            shared_results,
            waiters_cancelled,
            grants_taken_back,
            leases_expired,
            renewed,
            renew_not_found,
            released,
            release_already_ended,
            force_releases,
            calls,
            latency,
            wait_seconds,
            handoff_seconds,
            hold_seconds,
            leases_held,
            waiters,
            backend_up,
            recovery_seconds_left,
            keys_held_back,
            state_writes,
            reloads,
            process,
        }
    }

    /// Counts a re-read of `file` (`tls` or `tokens`).
    pub fn reload(&self, file: &'static str, ok: bool) {
        self.reloads.get_or_create(&vec![("file", file), ("result", if ok { "ok" } else { "error" })]).inc();
    }

    /// Counts an answered call and its latency.
    pub fn call(&self, rpc: &'static str, code: tonic::Code, took: Duration) {
        self.calls.get_or_create(&[("rpc", rpc), ("code", code_name(code))]).inc();
        self.latency.get_or_create(&[("rpc", rpc)]).observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition of every metric ([`OPENMETRICS`]).
    pub fn encode(&self) -> String {
        self.process.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The same in the Prometheus text format 0.0.4 ([`PROMETHEUS_TEXT`]),
    /// for scrapers and tools (`promtool check metrics`) that do not ask for
    /// OpenMetrics.
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }
}

/// Prometheus text 0.0.4 from OpenMetrics text: a counter's family is named
/// with its `_total` suffix in `# HELP`/`# TYPE`, there is no `# UNIT` and no
/// `# EOF`. Samples are the same in both.
fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) { "_total" } else { "" };
                out.push_str(&format!("{tag}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The name of a gRPC status code as tonic's `Debug` spells it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The process's own metrics, read from `/proc/self` at scrape time (Linux;
/// elsewhere they stay 0).
#[derive(Debug)]
struct Process {
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    threads: Gauge,
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    start_time: Gauge,
}

impl Process {
    fn register(root: &mut Registry) -> Process {
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            root.register(name, help, g.clone());
            g
        };
        let resident_bytes = gauge("process_resident_memory_bytes", "Resident memory size in bytes");
        let virtual_bytes = gauge("process_virtual_memory_bytes", "Virtual memory size in bytes");
        let open_fds = gauge("process_open_fds", "Open file descriptors");
        let threads = gauge("process_threads", "OS threads");
        let start_time =
            gauge("process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds");
        let cpu_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        root.register("process_cpu_seconds", "User and system CPU time spent, in seconds", cpu_seconds.clone());
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        start_time.set(i64::try_from(started).unwrap_or(0));
        Process { resident_bytes, virtual_bytes, open_fds, threads, cpu_seconds, start_time }
    }

    fn refresh(&self) {
        let _ = &self.start_time;
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { return };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // proc(5): utime 14, stime 15, num_threads 20, vsize 23, rss 24 (1-based,
        // counted from the pid); here 0-based from the state field (3).
        let ticks = 100.0; // USER_HZ on Linux
        let cpu = (num(11) + num(12)) as f64 / ticks;
        let seen = self.cpu_seconds.get();
        if cpu > seen {
            self.cpu_seconds.inc_by(cpu - seen);
        }
        self.threads.set(i64::try_from(num(17)).unwrap_or(0));
        self.virtual_bytes.set(i64::try_from(num(20)).unwrap_or(0));
        self.resident_bytes.set(i64::try_from(num(21).saturating_mul(4096)).unwrap_or(0));
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(i64::try_from(dir.count()).unwrap_or(0));
        }
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
    fn exposition_names_counters_labels_histograms_and_the_process() {
        let m = Metrics::new();
        m.acquired.inc();
        m.call("Renew", tonic::Code::NotFound, Duration::from_millis(2));
        let text = m.encode();
        assert!(text.contains(r#"turnstile_acquire_total{outcome="acquired"} 1"#), "{text}");
        assert!(text.contains(r#"turnstile_calls_total{rpc="Renew",code="NotFound"} 1"#), "{text}");
        assert!(text.contains(r#"turnstile_call_seconds_count{rpc="Renew"} 1"#), "{text}");
        assert!(text.contains(r#"turnstile_build_info{version=""#), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
        let plain = m.encode_text();
        assert!(plain.contains("# HELP turnstile_acquire_total Acquire calls by outcome"), "{plain}");
        assert!(plain.contains("# TYPE turnstile_acquire_total counter"), "{plain}");
        assert!(plain.contains("# TYPE turnstile_call_seconds histogram"), "{plain}");
        assert!(!plain.contains("# EOF"), "{plain}");
    }
}
