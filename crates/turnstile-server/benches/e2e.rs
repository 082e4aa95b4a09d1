//! End-to-end benchmark of `turnstiled` over real gRPC on loopback:
//!
//! - `cycles`: acquire+release cycles/s through a do-nothing LockService
//!   (every Acquire granted, nothing stored: the gRPC floor) and through
//!   `turnstiled`, with the same load generator, in one run;
//! - `handoff`: latency from a holder's Release to the parked waiter's grant
//!   on one hot key;
//! - `memory`: process RSS of `turnstiled` holding 1,000,000 leases.
//!
//! Run: `cargo bench -p turnstile-server --bench e2e` (all three), or name
//! some: `cargo bench -p turnstile-server --bench e2e -- cycles handoff`.
//! The do-nothing server runs in a child process (this binary re-executed
//! with `--serve-null`), so both servers are measured the same way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use turnstile_proto::v1::lock_service_client::LockServiceClient;
use turnstile_proto::v1::lock_service_server::{LockService, LockServiceServer};
use turnstile_proto::v1::{self};
use turnstile_testkit::Turnstiled;

const CONNECTIONS: usize = 8;
const CONCURRENCY: usize = 50;
const RUN: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve-null") {
        return serve_null();
    }
    // cargo bench passes --bench; anything else names a benchmark.
    let wanted: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with("--")).collect();
    let run = |name: &str| wanted.is_empty() || wanted.contains(&name);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        if run("cycles") {
            cycles().await;
        }
        if run("handoff") {
            handoff().await;
        }
        if run("memory") {
            memory().await;
        }
    });
}

// ---------- the do-nothing service ----------

/// Grants every Acquire, stores nothing.
struct Null {
    token: AtomicU64,
}

#[tonic::async_trait]
impl LockService for Null {
    async fn acquire(&self, r: Request<v1::AcquireRequest>) -> Result<Response<v1::AcquireResponse>, Status> {
        let r = r.into_inner();
        let lease = v1::Lease {
            key: r.key,
            owner: r.owner,
            fencing_token: self.token.fetch_add(1, Ordering::Relaxed),
            ttl: r.ttl,
        };
        Ok(Response::new(v1::AcquireResponse { acquired: true, lease: Some(lease), ..Default::default() }))
    }
    async fn renew(&self, _: Request<v1::RenewRequest>) -> Result<Response<v1::RenewResponse>, Status> {
        Ok(Response::new(v1::RenewResponse::default()))
    }
    async fn release(&self, _: Request<v1::ReleaseRequest>) -> Result<Response<v1::ReleaseResponse>, Status> {
        Ok(Response::new(v1::ReleaseResponse { released: true }))
    }
    async fn get_lock(&self, _: Request<v1::GetLockRequest>) -> Result<Response<v1::LockInfo>, Status> {
        Ok(Response::new(v1::LockInfo::default()))
    }
    async fn list_locks(&self, _: Request<v1::ListLocksRequest>) -> Result<Response<v1::ListLocksResponse>, Status> {
        Ok(Response::new(v1::ListLocksResponse::default()))
    }
    async fn force_release(
        &self,
        _: Request<v1::ForceReleaseRequest>,
    ) -> Result<Response<v1::ForceReleaseResponse>, Status> {
        Ok(Response::new(v1::ForceReleaseResponse::default()))
    }
}

/// Child-process mode: serve the do-nothing service, print the port, run until killed.
fn serve_null() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("null grpc={}", listener.local_addr().expect("addr"));
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(LockServiceServer::new(Null { token: AtomicU64::new(1) }))
            .serve_with_incoming(incoming)
            .await
            .expect("serve");
    });
}

struct Child(std::process::Child, SocketAddr);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_null() -> Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--serve-null")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn null server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
    let addr = line.trim().strip_prefix("null grpc=").and_then(|a| a.parse().ok()).expect("address");
    Child(child, addr)
}

// ---------- load ----------

async fn channels(addr: SocketAddr) -> Vec<LockServiceClient<Channel>> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        let ch = Endpoint::from_shared(format!("http://{addr}")).expect("url").tcp_nodelay(true).connect().await;
        out.push(LockServiceClient::new(ch.expect("connect")));
    }
    out
}

struct Figures {
    cycles_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// CONCURRENCY tasks over CONNECTIONS connections, each cycling
/// acquire+release on its own rotating keys, for RUN.
async fn drive(addr: SocketAddr) -> Figures {
    let clients = channels(addr).await;
    let start = Instant::now();
    let deadline = start + RUN;
    let mut tasks = Vec::new();
    for t in 0..CONCURRENCY {
        let mut c = clients[t % CONNECTIONS].clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(50_000);
            let mut i = 0u64;
            let owner = format!("bench-{t}");
            while Instant::now() < deadline {
                let key = format!("bench:{t}:{}", i % 1000);
                i += 1;
                let begin = Instant::now();
                let r = c
                    .acquire(v1::AcquireRequest {
                        key: key.clone(),
                        owner: owner.clone(),
                        ttl: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
                        ..Default::default()
                    })
                    .await
                    .expect("acquire")
                    .into_inner();
                let token = r.lease.expect("uncontended acquire is granted").fencing_token;
                c.release(v1::ReleaseRequest { key, fencing_token: token, result: None }).await.expect("release");
                lat.push(begin.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Figures {
        cycles_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
    }
}

async fn cycles() {
    println!(
        "== cycles: acquire+release, {CONCURRENCY} concurrent callers over {CONNECTIONS} connections, {RUN:?} each"
    );
    let null = spawn_null();
    let base = drive(null.1).await;
    drop(null);
    let node = Turnstiled::start(["--data-dir", "", "--log", "error"]);
    let ts = drive(node.grpc).await;
    drop(node);
    for (name, f) in [("do-nothing gRPC service", &base), ("turnstiled (memory)", &ts)] {
        println!(
            "{name:<26} {:>9.0} cycles/s   p50 {:>7.3} ms   p99 {:>7.3} ms",
            f.cycles_per_sec,
            ms(f.p50),
            ms(f.p99)
        );
    }
    println!(
        "turnstiled costs {:.1} % over the do-nothing service",
        (1.0 - ts.cycles_per_sec / base.cycles_per_sec) * 100.0
    );
}

/// Two clients alternate on one key: the holder releases while the other
/// waits server-side; time from the Release being sent to the waiter's grant.
async fn handoff() {
    const ROUNDS: usize = 2000;
    println!("== handoff: release -> parked waiter granted, one hot key, {ROUNDS} rounds");
    let node = Turnstiled::start(["--data-dir", "", "--log", "error"]);
    let clients = channels(node.grpc).await;
    let (mut a, b) = (clients[0].clone(), clients[1].clone());
    let acquire = |owner: &str, wait: i64| v1::AcquireRequest {
        key: "hot".into(),
        owner: owner.into(),
        ttl: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
        wait_timeout: Some(prost_types::Duration { seconds: wait, nanos: 0 }),
        share_result: false,
    };
    let mut held = a.acquire(acquire("a", 0)).await.expect("acquire").into_inner().lease.expect("granted");
    let mut holder = a.clone();
    let mut other = b.clone();
    let mut lat = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let owner = if round % 2 == 0 { "b" } else { "a" };
        let mut w = other.clone();
        let req = acquire(owner, 10);
        let waiter = tokio::spawn(async move {
            let r = w.acquire(req).await.expect("wait").into_inner();
            (Instant::now(), r.lease.expect("granted"))
        });
        // Wait until the waiter is parked (polling is the bench's own set-up, not measured).
        loop {
            let info = holder.get_lock(v1::GetLockRequest { key: "hot".into() }).await.expect("get").into_inner();
            if info.waiters == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let sent = Instant::now();
        holder
            .release(v1::ReleaseRequest { key: "hot".into(), fencing_token: held.fencing_token, result: None })
            .await
            .expect("release");
        let (granted_at, lease) = waiter.await.expect("waiter");
        lat.push(granted_at.duration_since(sent));
        held = lease;
        std::mem::swap(&mut holder, &mut other);
    }
    lat.sort_unstable();
    println!(
        "handoff latency  p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms",
        ms(lat[ROUNDS / 2]),
        ms(lat[ROUNDS * 99 / 100]),
        ms(lat[ROUNDS - 1])
    );
}

/// RSS of turnstiled before and after 1,000,000 leases are held.
async fn memory() {
    // TURNSTILE_BENCH_LEASES overrides the count (e.g. for a heap profile under valgrind).
    let leases_env = std::env::var("TURNSTILE_BENCH_LEASES").ok().and_then(|v| v.parse().ok());
    let leases: usize = leases_env.unwrap_or(1_000_000);
    println!("== memory: turnstiled RSS with {leases} held leases");
    let node = Turnstiled::start(["--data-dir", "", "--log", "error"]);
    let clients = channels(node.grpc).await;
    let before = rss_bytes(node.pid());
    let mut tasks = Vec::new();
    let per = leases / CONCURRENCY;
    for t in 0..CONCURRENCY {
        let mut c = clients[t % CONNECTIONS].clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let r = c
                    .acquire(v1::AcquireRequest {
                        key: format!("lease:{t}:{i:06}"),
                        owner: format!("owner-{t}"),
                        ttl: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
                        ..Default::default()
                    })
                    .await
                    .expect("acquire")
                    .into_inner();
                assert!(r.acquired);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let after = rss_bytes(node.pid());
    println!(
        "RSS before {:.1} MiB, after {:.1} MiB: {:.0} bytes per lease (delta), {:.0} bytes per lease (whole process)",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after - before) as f64 / leases as f64,
        after as f64 / leases as f64
    );
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
