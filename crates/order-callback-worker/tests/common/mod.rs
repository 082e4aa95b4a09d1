//! Test support shared by this crate's end-to-end tests: starts the sample
//! binary on a free loopback port (it prints `... listening http=ADDR` on
//! stdout), a tiny HTTP/1.1 client over `tokio::net::TcpStream`, and a
//! poll-with-deadline helper. (The same file serves both sample crates.)

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running sample binary. Killed (SIGKILL) on drop.
pub(crate) struct Service {
    child: Child,
    /// The HTTP address it bound.
    pub(crate) addr: SocketAddr,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Service {
    /// Starts `bin --listen 127.0.0.1:0 ARGS...` and waits for its ready line.
    pub(crate) fn start(bin: &str, args: &[&str]) -> Service {
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--log", "info"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let addr = line.split_whitespace().find_map(|w| w.strip_prefix("http=")).and_then(|a| a.parse().ok());
        match addr {
            Some(addr) => Service { child, addr, stderr: Some(stderr) },
            None => {
                let status = child.wait().expect("wait");
                panic!("{bin} did not start ({status}): {line}{}", stderr.join().unwrap_or_default());
            }
        }
    }

    /// Sends a signal (e.g. `libc::SIGSTOP`).
    pub(crate) fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// SIGKILL (a crash), waits for the exit, and returns what it logged.
    pub(crate) fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }

    /// SIGTERM, waits for the exit, and returns what it logged.
    pub(crate) fn stop(mut self) -> String {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
        self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    /// Status code.
    pub(crate) status: u16,
    /// Lower-cased header names with their values.
    pub(crate) headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when empty).
    pub(crate) json: serde_json::Value,
}

impl Response {
    /// The value of header `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One request over a fresh connection (`Connection: close`).
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<Response> {
    let stream = TcpStream::connect(addr).await?;
    send(stream, addr, method, path, body).await
}

/// Sends one request on an open connection and reads the whole answer.
pub(crate) async fn send(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<Response> {
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse(&raw).ok_or_else(|| std::io::Error::other(format!("bad HTTP answer: {}", String::from_utf8_lossy(&raw))))
}

fn parse(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let json = if body.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(body).ok()? };
    Some(Response { status, headers, json })
}

/// `n` identical requests that reach the service together: every connection
/// is opened first, then all requests are written at once.
pub(crate) async fn concurrent(
    addr: SocketAddr,
    n: usize,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Vec<Response> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (barrier, method, path, body) =
            (barrier.clone(), method.to_owned(), path.to_owned(), body.map(str::to_owned));
        tasks.spawn(async move {
            barrier.wait().await;
            send(stream, addr, &method, &path, body.as_deref()).await.expect("request")
        });
    }
    tasks.join_all().await
}

/// Calls `check` until it returns `Some`, at most until `within` has passed.
pub(crate) async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        // Polling interval of a state the test cannot await directly.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
