//! Throughput of the etcd backend against etcd's own lock: the same
//! acquire/release load, with the same concurrency, through
//! `turnstiled --backend etcd` and straight through etcd's v3lock API (with
//! the etcd clients generated in turnstile-server), in one run against one etcd.
//!
//! Two loads, each run for both paths in alternation (twice), cycles/s summed:
//! - `spread`: every caller locks its own rotating keys (no contention);
//! - `hot`: every caller waits for one key (every grant is a hand-off).
//!
//! The v3lock path is what etcd's own lock costs a client that keeps one
//! session lease for all its locks. On the sidecar path each turnstile lease
//! is an etcd lease of its own, but the sidecar reuses the etcd leases of
//! released locks (no lease grant or revoke per lock once warm) and sends
//! concurrent writes of different keys as one transaction; it adds a gRPC hop.
//!
//! Run: `cargo bench -p turnstile-server --bench etcd` (needs `etcd`:
//! `apt-get install -y etcd-server`); `-- spread` or `-- hot` runs one load.
//! `TURNSTILE_BENCH_SECS` sets the length of each run (default 5).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};
use turnstile_server::backend::etcd::proto::etcdserverpb::{lease_client::LeaseClient, LeaseGrantRequest};
use turnstile_server::backend::etcd::proto::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use turnstile_testkit::{Etcd, Turnstiled};

/// Concurrent callers on each path.
const CONCURRENCY: usize = 50;
/// Connections each path's callers share (to turnstiled, or to etcd).
const CONNECTIONS: usize = 8;
/// Alternating runs of each path per load.
const ROUNDS: usize = 2;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let run = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    let secs = std::env::var("TURNSTILE_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let length = Duration::from_secs(secs);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let etcd = Etcd::start();
        let node = Turnstiled::start(["--backend", "etcd", "--etcd-endpoints", &etcd.url(), "--log", "error"]);
        let sidecar = sidecar_clients(node.grpc).await;
        let direct = etcd_clients(&etcd).await;
        println!("== etcd backend vs etcd's own lock: {CONCURRENCY} callers, {CONNECTIONS} connections per path");
        for (load, hot) in [("spread", false), ("hot", true)] {
            if !run(load) {
                continue;
            }
            // Warm-up: connections, etcd's first allocations.
            drive_sidecar(&sidecar, hot, Duration::from_millis(500)).await;
            drive_v3lock(&direct, hot, Duration::from_millis(500)).await;
            let (mut own, mut ours) = (Figures::default(), Figures::default());
            let pids = Pids { etcd: etcd.pid().unwrap_or(0), turnstiled: node.pid() };
            for _ in 0..ROUNDS {
                let cpu = pids.cpu();
                own.add(drive_v3lock(&direct, hot, length).await);
                own.add_cpu(cpu, pids.cpu());
                let (cpu, calls) = (pids.cpu(), etcd_calls(&etcd));
                ours.add(drive_sidecar(&sidecar, hot, length).await);
                ours.add_cpu(cpu, pids.cpu());
                ours.add_calls(&calls, &etcd_calls(&etcd));
            }
            println!("-- {load}: {}", if hot { "all callers wait for one key" } else { "each caller its own keys" });
            own.print("etcd v3lock (Lock+Unlock)");
            ours.print("turnstiled --backend etcd");
            ours.print_calls();
            println!(
                "sidecar path reaches {:.0} % of etcd's own lock throughput",
                100.0 * ours.per_sec() / own.per_sec()
            );
        }
    });
}

/// Processes whose CPU time a run costs.
struct Pids {
    etcd: u32,
    turnstiled: u32,
}

/// CPU seconds so far of etcd, turnstiled and this load generator.
type Cpu = [f64; 3];

impl Pids {
    fn cpu(&self) -> Cpu {
        [cpu_secs(self.etcd), cpu_secs(self.turnstiled), cpu_secs(std::process::id())]
    }
}

/// User + system CPU seconds of a process (Linux `/proc/<pid>/stat`; 0 elsewhere).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ is 100 on Linux
}

/// Cycles, latencies and CPU cost of one or more runs.
#[derive(Default)]
struct Figures {
    cycles: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    cpu: Cpu,
    /// etcd requests (unary calls and stream messages) by method.
    calls: Vec<(String, f64)>,
}

/// etcd requests received so far, by gRPC method (stream messages count one each).
fn etcd_calls(etcd: &Etcd) -> Vec<(String, f64)> {
    let page = etcd.metrics();
    let mut calls: Vec<(String, f64)> = Vec::new();
    for line in page.lines().filter(|l| l.starts_with("grpc_server_msg_received_total{")) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let method = series.split("grpc_method=\"").nth(1).and_then(|m| m.split('"').next()).unwrap_or("?");
        calls.push((method.to_owned(), value.parse().unwrap_or(0.0)));
    }
    calls
}

impl Figures {
    fn add_calls(&mut self, before: &[(String, f64)], after: &[(String, f64)]) {
        for (method, n) in after {
            let was = before.iter().find(|(m, _)| m == method).map_or(0.0, |(_, v)| *v);
            match self.calls.iter_mut().find(|(m, _)| m == method) {
                Some((_, total)) => *total += n - was,
                None => self.calls.push((method.clone(), n - was)),
            }
        }
    }

    fn print_calls(&self) {
        let per_cycle: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, n)| *n > 0.0)
            .map(|(m, n)| format!("{m} {:.2}", n / self.cycles.max(1) as f64))
            .collect();
        println!("{:<27} etcd requests per cycle: {}", "", per_cycle.join(", "));
    }

    fn add_cpu(&mut self, before: Cpu, after: Cpu) {
        for i in 0..3 {
            self.cpu[i] += after[i] - before[i];
        }
    }

    fn add(&mut self, other: Figures) {
        self.cycles += other.cycles;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    fn per_sec(&self) -> f64 {
        self.cycles as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&mut self, name: &str) {
        self.latencies.sort_unstable();
        let at = |q: usize| self.latencies.get(self.latencies.len() * q / 100).copied().unwrap_or_default();
        let per_k = |secs: f64| 1e6 * secs / self.cycles.max(1) as f64;
        println!(
            "{name:<27} {:>8.0} cycles/s   p50 {:>7.2} ms   p99 {:>7.2} ms   CPU ms per 1000 cycles: etcd {:.0}, turnstiled {:.0}, load generator {:.0}",
            self.per_sec(),
            at(50).as_secs_f64() * 1e3,
            at(99).as_secs_f64() * 1e3,
            per_k(self.cpu[0]),
            per_k(self.cpu[1]),
            per_k(self.cpu[2]),
        );
    }
}

/// Runs `CONCURRENCY` callers of `cycle(caller, i)` for `length`.
async fn drive<F, Fut>(length: Duration, cycle: F) -> Figures
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let deadline = start + length;
    let mut tasks = Vec::new();
    for caller in 0..CONCURRENCY {
        let cycle = cycle.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let begin = Instant::now();
                cycle(caller, i).await;
                latencies.push(begin.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut figures = Figures::default();
    for t in tasks {
        figures.latencies.extend(t.await.expect("caller"));
    }
    figures.elapsed = start.elapsed();
    figures.cycles = figures.latencies.len();
    figures
}

fn key(hot: bool, caller: usize, i: u64) -> String {
    if hot {
        "bench:hot".to_owned()
    } else {
        format!("bench:{caller}:{}", i % 100)
    }
}

async fn sidecar_clients(addr: SocketAddr) -> Vec<LockServiceClient<Channel>> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        let ch = Endpoint::from_shared(format!("http://{addr}")).expect("url").tcp_nodelay(true).connect().await;
        out.push(LockServiceClient::new(ch.expect("connect to turnstiled")));
    }
    out
}

/// Acquire (waiting, for the hot key) and release through turnstiled.
async fn drive_sidecar(clients: &[LockServiceClient<Channel>], hot: bool, length: Duration) -> Figures {
    let clients = clients.to_vec();
    drive(length, move |caller, i| {
        let mut c = clients[caller % CONNECTIONS].clone();
        async move {
            let key = key(hot, caller, i);
            let r = c
                .acquire(v1::AcquireRequest {
                    key: key.clone(),
                    owner: format!("bench-{caller}"),
                    ttl: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
                    wait_timeout: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                    share_result: false,
                })
                .await
                .expect("acquire")
                .into_inner();
            let token = r.lease.expect("granted").fencing_token;
            c.release(v1::ReleaseRequest { key, fencing_token: token, result: None }).await.expect("release");
        }
    })
    .await
}

/// One gRPC channel to etcd per connection, each caller with its own session lease.
struct Direct {
    clients: Vec<Channel>,
    leases: Vec<i64>,
}

async fn etcd_clients(etcd: &Etcd) -> Direct {
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let endpoint = Endpoint::from_shared(etcd.url()).expect("etcd's URL");
        clients.push(endpoint.connect().await.expect("connect to etcd"));
    }
    let mut leases = Vec::new();
    for caller in 0..CONCURRENCY {
        // Long enough for every run: a session lease, as etcd's own clients keep.
        let mut lease_client = LeaseClient::new(clients[caller % CONNECTIONS].clone());
        let lease = lease_client.lease_grant(LeaseGrantRequest { ttl: 600, id: 0 }).await.expect("lease grant");
        leases.push(lease.into_inner().id);
    }
    Direct { clients, leases }
}

/// Lock and Unlock through etcd's v3lock service, on the caller's session lease.
async fn drive_v3lock(direct: &Direct, hot: bool, length: Duration) -> Figures {
    let (clients, leases) = (direct.clients.clone(), direct.leases.clone());
    drive(length, move |caller, i| {
        let mut locks = LockClient::new(clients[caller % CONNECTIONS].clone());
        let lease = leases[caller];
        async move {
            let locked = locks.lock(LockRequest { name: key(hot, caller, i).into(), lease }).await;
            let key = locked.expect("lock").into_inner().key;
            locks.unlock(UnlockRequest { key }).await.expect("unlock");
        }
    })
    .await
}
