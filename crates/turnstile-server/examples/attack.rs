//! What one hostile or broken client can make `turnstiled` hold, measured:
//! runs one attack against a running server and prints the server's peak
//! and current RSS (`/proc/<pid>/status`: VmHWM, VmRSS) while the attack
//! holds and after its connections have closed.
//!
//! ```sh
//! cargo build --release --bin turnstiled --example attack
//! target/release/turnstiled --data-dir '' & PID=$!
//! target/release/examples/attack --pid $PID streams    # 4,000 unread ListLocks pages of 1,000 long keys
//! target/release/examples/attack --pid $PID share      # 2,000 share_result waiters, a 1 MiB result, unread
//! target/release/examples/attack --pid $PID waiters    # 200,000 waiters on distinct keys
//! ```
//!
//! Every connection grants the server a zero HTTP/2 window when the attack
//! wants its answers unread, so nothing the server sends is ever taken off
//! its hands; the attack then closes everything and reports what stayed.

use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tonic::transport::Channel;
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};

type H2 = h2::client::SendRequest<Bytes>;

struct Args {
    addr: String,
    pid: u32,
    attack: String,
    conns: usize,
}

fn args() -> Args {
    let mut a = Args { addr: "127.0.0.1:7700".into(), pid: 0, attack: String::new(), conns: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--addr" => a.addr = it.next().expect("--addr ADDR"),
            "--pid" => a.pid = it.next().and_then(|p| p.parse().ok()).expect("--pid PID"),
            "--conns" => a.conns = it.next().and_then(|p| p.parse().ok()).expect("--conns N"),
            other => a.attack = other.to_owned(),
        }
    }
    assert!(a.pid > 0, "usage: attack --pid PID [--addr HOST:PORT] [--conns N] streams|share|waiters");
    a
}

/// VmHWM and VmRSS of `pid`, in MiB.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server's /proc status");
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(status.contains("turnstiled"), "--pid {pid} is not turnstiled");
    (kib("VmHWM:") / 1024.0, kib("VmRSS:") / 1024.0)
}

fn report(pid: u32, when: &str) {
    let (hwm, now) = rss(pid);
    println!("{when:<44} peak RSS {hwm:8.1} MiB   RSS now {now:8.1} MiB");
}

fn pd(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn acquire(key: String, owner: &str, wait: Duration, share_result: bool) -> v1::AcquireRequest {
    v1::AcquireRequest {
        key,
        owner: owner.into(),
        ttl: Some(pd(Duration::from_secs(3600))),
        wait_timeout: Some(pd(wait)),
        share_result,
    }
}

fn grpc_body(msg: &impl prost::Message) -> Bytes {
    let mut buf = vec![0u8; 5];
    msg.encode(&mut buf).expect("encode");
    let len = u32::try_from(buf.len() - 5).expect("small");
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    buf.into()
}

/// A raw HTTP/2 connection granting the server `window` bytes per stream;
/// `None` when the server does not take it (its listen
/// backlog is full: it has --max-connections open) within 3 s.
async fn raw(addr: &str, window: u32) -> Option<H2> {
    let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await.ok()?.ok()?;
    let (h2, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .max_concurrent_reset_streams(0)
        .handshake(tcp)
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(h2)
}

/// Opens up to `n` calls of `method` on `h2`, as fast as the server's
/// stream limit lets; stops when no stream opens within a second (the
/// server's limit on concurrent streams is reached).
async fn open_calls(h2: &mut H2, addr: &str, method: &str, n: usize, msg: impl Fn(usize) -> Bytes) -> Vec<Held> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let ready = tokio::time::timeout(Duration::from_secs(1), std::future::poll_fn(|cx| h2.poll_ready(cx))).await;
        let Ok(Ok(())) = ready else { break };
        let req = tonic::codegen::http::Request::post(format!("http://{addr}/turnstile.v1.LockService/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let Ok((resp, mut send)) = h2.send_request(req, false) else { break };
        if send.send_data(msg(i), true).is_err() {
            break;
        }
        held.push(Held { _resp: resp, _send: send });
    }
    held
}

/// A call left unread.
struct Held {
    _resp: h2::client::ResponseFuture,
    _send: h2::SendStream<Bytes>,
}

async fn client(addr: &str) -> LockServiceClient<Channel> {
    LockServiceClient::connect(format!("http://{addr}")).await.expect("connect").max_decoding_message_size(64 << 20)
}

/// Holds `keys` locks, each on a key from `key(i)`, owner of 256 bytes.
async fn hold(addr: &str, keys: usize, key: impl Fn(usize) -> String + Send + Sync + 'static) {
    let key = std::sync::Arc::new(key);
    let owner: &'static str = Box::leak("o".repeat(256).into_boxed_str());
    let mut tasks = Vec::new();
    let per = 50;
    for t in 0..per {
        let (mut c, key) = (client(addr).await, key.clone());
        tasks.push(tokio::spawn(async move {
            for i in (t..keys).step_by(per) {
                let r = c.acquire(acquire(key(i), owner, Duration::ZERO, false)).await.expect("grant");
                assert!(r.into_inner().acquired, "key {i} is free");
            }
        }));
    }
    for t in tasks {
        t.await.expect("grant task");
    }
}

/// Waits until the server's RSS has not changed by more than 1 MiB for 3 s
/// (at most 60 s), then reports.
async fn settle_and_report(pid: u32, when: &str) {
    let mut last = rss(pid).1;
    let mut steady = 0;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss(pid).1;
        steady = if (now - last).abs() <= 1.0 { steady + 1 } else { 0 };
        last = now;
        if steady >= 6 {
            break;
        }
    }
    report(pid, when);
}

#[tokio::main]
async fn main() {
    let a = args();
    let (addr, pid) = (a.addr.as_str(), a.pid);
    report(pid, "before");
    match a.attack.as_str() {
        "streams" => {
            // 1,000 keys of 500 bytes with owners of 256: a page is ~800 KB.
            hold(addr, 1000, |i| format!("{i:04}{}", "k".repeat(496))).await;
            report(pid, "1,000 long keys held");
            let conns = a.conns.max(1);
            let list =
                grpc_body(&v1::ListLocksRequest { prefix: String::new(), page_size: 1000, page_token: String::new() });
            let mut all = Vec::new();
            let mut opened = 0;
            for _ in 0..conns {
                let Some(mut h2) = raw(addr, 0).await else { break };
                let held = open_calls(&mut h2, addr, "ListLocks", 4000, |_| list.clone()).await;
                opened += held.len();
                all.push((h2, held));
            }
            println!("sent {opened} ListLocks calls on {conns} connection(s), window 0, never read (the h2 client holds back those past the server's stream limit)");
            settle_and_report(pid, "while held").await;
            drop(all);
            settle_and_report(pid, "after the connections closed").await;
        }
        "share" => {
            let waiters: usize = 2000;
            let mut c = client(addr).await;
            let lease = c
                .acquire(acquire("fetch".into(), "holder", Duration::ZERO, false))
                .await
                .expect("grant")
                .into_inner()
                .lease
                .expect("lease");
            let conns = a.conns.max(waiters.div_ceil(100));
            let per = waiters.div_ceil(conns);
            let mut all = Vec::new();
            for n in 0..conns {
                let Some(mut h2) = raw(addr, 0).await else { break };
                let held = open_calls(&mut h2, addr, "Acquire", per, |i| {
                    grpc_body(&acquire("fetch".into(), &format!("w{n}-{i}"), Duration::from_secs(300), true))
                })
                .await;
                all.push((h2, held));
            }
            loop {
                let info = c.get_lock(v1::GetLockRequest { key: "fetch".into() }).await.expect("get").into_inner();
                if info.waiters as usize >= waiters {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("{waiters} share_result waiters on {conns} connections, window 0, never read");
            report(pid, "waiters parked");
            let release = v1::ReleaseRequest {
                key: "fetch".into(),
                fencing_token: lease.fencing_token,
                result: Some(Bytes::from(vec![b'r'; 1 << 20])),
            };
            c.release(release).await.expect("release");
            settle_and_report(pid, "1 MiB result released to them").await;
            drop(all);
            settle_and_report(pid, "after the connections closed").await;
        }
        "waiters" => {
            let keys = 200_000;
            hold(addr, keys, |i| format!("w{i}")).await;
            report(pid, "200,000 keys held");
            let conns = a.conns.max(keys / 100);
            let mut all = Vec::new();
            let per = keys.div_ceil(conns);
            for n in 0..conns {
                let Some(mut h2) = raw(addr, 65_535).await else { break };
                let held = open_calls(&mut h2, addr, "Acquire", per, |i| {
                    grpc_body(&acquire(format!("w{}", n * per + i), "waiter", Duration::from_secs(300), false))
                })
                .await;
                all.push((h2, held));
            }
            let sent: usize = all.iter().map(|(_, held)| held.len()).sum();
            println!(
                "{sent} waiters sent on {} of {conns} connections (the others not taken: --max-connections); past --max-waiters they are refused",
                all.len()
            );
            settle_and_report(pid, "while parked").await;
            drop(all);
            settle_and_report(pid, "after the connections closed").await;
        }
        other => panic!("unknown attack {other:?}: streams, share or waiters"),
    }
}
