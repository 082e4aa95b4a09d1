//! Helpers the integration tests share: a real `turnstiled` on a free
//! loopback port, clients of it, and polling with a deadline.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::{Duration, Instant};

use turnstile_client::Client;
use turnstile_testkit::Turnstiled;

/// A `turnstiled` without restart state.
pub fn server() -> Turnstiled {
    Turnstiled::start(["--data-dir", ""])
}

/// A `turnstiled` with `args` on a port outside the kernel's ephemeral range
/// (below 32768), so that it can be restarted on the same port: no port-0
/// bind or outgoing connection of a concurrent test can take it meanwhile.
/// Returns the server and its `--listen` address.
pub fn start_restartable(args: &[String]) -> (Turnstiled, String) {
    use std::hash::{BuildHasher, RandomState};
    let mut last_err = String::new();
    for attempt in 0..20u32 {
        let port = 20_000 + RandomState::new().hash_one((attempt, std::process::id())) % 12_000;
        let listen = format!("127.0.0.1:{port}");
        let mut all = args.to_vec();
        all.extend(["--listen".to_owned(), listen.clone()]);
        match Turnstiled::try_start(all) {
            Ok(node) => return (node, listen),
            Err(e) => last_err = e,
        }
    }
    panic!("no free fixed port for turnstiled: {last_err}");
}

/// Starts `turnstiled` again with `args` on `listen`.
pub fn restart_on(args: &[String], listen: &str) -> Turnstiled {
    let mut all = args.to_vec();
    all.extend(["--listen".to_owned(), listen.to_owned()]);
    Turnstiled::start(all)
}

/// A client of `node` asking for `ttl`.
pub async fn client(node: &Turnstiled, ttl: Duration) -> Client {
    client_at(&node.url(), ttl).await
}

/// A client of `url` asking for `ttl`.
pub async fn client_at(url: &str, ttl: Duration) -> Client {
    Client::builder(url).ttl(ttl).call_timeout(Duration::from_secs(5)).connect().await.expect("connect to turnstiled")
}

/// Polls `check` every 10 ms until it returns `Some`, failing the test with
/// `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut`, failing the test with `what` after `within`.
pub async fn within<T>(within: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(within, fut).await {
        Ok(v) => v,
        Err(_) => panic!("not within {within:?}: {what}"),
    }
}
