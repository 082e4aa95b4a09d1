//! Out of file descriptors, the gRPC accept loop backs off and says so, at
//! most once per 10 s, instead of spinning silently at 100% CPU; once
//! descriptors are free again, the connection waiting in the backlog is
//! served. A test binary of its own: it takes every descriptor this
//! process may open. Virtual time (tokio's paused clock): 30 s of failing accepts take
//! no real time, and a loop that spun would never let that time pass.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};
use turnstile_server::backend::memory::MemoryBackend;
use turnstile_server::config::Config;
use turnstile_server::server::run;
use turnstile_server::telemetry::Metrics;

/// The log, in memory (writing it needs no file descriptor).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

#[tokio::test(start_paused = true)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_logs_once_per_10s() {
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt().with_writer(log.clone()).with_ansi(false).finish();
    let _log = tracing::subscriber::set_default(subscriber);

    let config = Config::try_parse_from(["turnstiled", "--data-dir", "", "--shards", "1"]).expect("flags");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let metrics = Arc::new(Metrics::new());
    let backend = Arc::new(MemoryBackend::start(&config, metrics.clone()).expect("backend"));
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        run(backend, &config, metrics, Box::new(|| None), grpc, http, shutdown).await.expect("server");
    });
    tokio::task::yield_now().await;

    // A client in the backlog (connected by the kernel, not yet accepted),
    // then every descriptor taken: the server's accept fails with EMFILE.
    let waiting = std::net::TcpStream::connect(addr).expect("connect");
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
    }
    // The scenario: 30 s of (paused) time pass with every descriptor taken;
    // the log must then show at most one line per 10 s.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let text = String::from_utf8(log.0.lock().expect("log").clone()).expect("utf-8");
    let lines = text.lines().filter(|l| l.contains("accepting gRPC connections fails")).count();
    assert!((1..=4).contains(&lines), "{lines} log lines about failing accepts in 30 s:\n{text}");

    // Descriptors free again: the waiting connection is accepted and served.
    drop(hog);
    drop(waiting);
    let mut c = LockServiceClient::connect(format!("http://{addr}")).await.expect("connect");
    c.get_lock(v1::GetLockRequest { key: "k".into() }).await.expect("served again");
}
