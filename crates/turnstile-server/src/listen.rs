//! Accepting gRPC connections, for the plaintext and the TLS port alike
//! ([`incoming`]), and the bounds every connection lives under ([`Conn`]):
//!
//! - **Accept errors back off.** A failed accept (out of file descriptors,
//!   most often) pauses the loop for [`ACCEPT_BACKOFF`] instead of spinning,
//!   and is logged once per [`ACCEPT_LOG_EVERY`] with how many failed since.
//! - **Handshake timeout.** A connection must finish its handshake (TLS, when
//!   configured) and send its first bytes within `--handshake-timeout`.
//! - **Connections are bounded** (`--max-connections`): at the limit the
//!   loop stops accepting, and new connections wait in the listen backlog
//!   until one closes. Each costs a few hundred KiB at most (HTTP/2 state,
//!   its streams' calls), so their number bounds the server's memory.
//! - **Idle timeout.** A connection with no call in progress for
//!   `--idle-timeout` is closed. Calls are counted by [`crate::call::CallLayer`]
//!   through the [`ConnInfo`] tonic puts in every request's extensions.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one log line per this long about failed accepts.
pub const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Connections accepted and ready, waiting for tonic to take them.
const QUEUE: usize = 64;

/// How many connections there may be, and how long they may stay quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// Connections open at once (`--max-connections`); more wait in the backlog.
    pub max_connections: usize,
    /// Handshake (TLS, when configured) and first bytes must come within this long.
    pub handshake: Duration,
    /// A connection without a call in progress is closed after this long (`None`: never).
    pub idle: Option<Duration>,
}

/// What one connection is doing, shared by its [`Conn`] and the calls on it.
#[derive(Debug)]
pub struct Activity {
    /// Calls in progress (from the request's arrival until its response body ends).
    calls: AtomicUsize,
    /// When the last call ended (or the connection was accepted), in
    /// nanoseconds since `base`.
    idle_since: AtomicU64,
    base: Instant,
    /// The reader of the connection, woken when it becomes idle.
    reader: Mutex<Option<Waker>>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            calls: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            base: Instant::now(),
            reader: Mutex::new(None),
        }
    }

    /// Counts a call in progress until the returned guard is dropped.
    pub fn call(self: &Arc<Self>) -> ActiveCall {
        self.calls.fetch_add(1, Ordering::AcqRel);
        ActiveCall(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.base + Duration::from_nanos(self.idle_since.load(Ordering::Acquire))
    }
}

/// A call in progress on a connection; dropped when its response has ended.
#[derive(Debug)]
pub struct ActiveCall(Arc<Activity>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        let a = &self.0;
        let since = u64::try_from(a.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        a.idle_since.store(since, Ordering::Release);
        if a.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The connection's reader arms its idle timer when polled next.
            if let Some(w) = a.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
                w.wake();
            }
        }
    }
}

/// What tonic puts in each request's extensions for a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's and our address.
    pub tcp: TcpConnectInfo,
    /// The connection's calls in progress.
    pub activity: Arc<Activity>,
}

/// A gRPC connection (TCP, or TLS over TCP) with its handshake and idle timeouts.
pub struct Conn<IO> {
    io: IO,
    tcp: TcpConnectInfo,
    activity: Arc<Activity>,
    timeouts: ConnTimeouts,
    /// Whether any byte came from the client yet.
    heard: AtomicBool,
    accepted: Instant,
    timer: Pin<Box<Sleep>>,
    /// Its place among `--max-connections`, given back when it closes.
    _slot: Option<OwnedSemaphorePermit>,
}

impl<IO> std::fmt::Debug for Conn<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("tcp", &self.tcp).field("activity", &self.activity).finish_non_exhaustive()
    }
}

impl<IO> Conn<IO> {
    /// Wraps `io`, accepted at `accepted` from the connection `tcp`.
    pub fn new(io: IO, tcp: TcpConnectInfo, timeouts: ConnTimeouts, accepted: Instant) -> Self {
        Self::with_slot(io, tcp, timeouts, accepted, None)
    }

    fn with_slot(
        io: IO,
        tcp: TcpConnectInfo,
        timeouts: ConnTimeouts,
        accepted: Instant,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Conn {
            io,
            tcp,
            activity: Arc::new(Activity::new()),
            timeouts,
            heard: AtomicBool::new(false),
            accepted,
            timer: Box::pin(tokio::time::sleep_until(accepted + timeouts.handshake)),
            _slot: slot,
        }
    }

    /// Whether the connection has been quiet for too long: polled with the
    /// reader's context, so that it is woken at the deadline.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = if !self.heard.load(Ordering::Relaxed) {
            self.accepted + self.timeouts.handshake
        } else {
            let Some(idle) = self.timeouts.idle else { return false };
            *self.activity.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            if self.activity.calls.load(Ordering::Acquire) > 0 {
                return false;
            }
            self.activity.idle_since().max(self.accepted) + idle
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo { tcp: self.tcp.clone(), activity: self.activity.clone() }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.timed_out(cx) {
            let heard = self.heard.load(Ordering::Relaxed);
            tracing::debug!(peer = ?self.tcp.remote_addr, heard, "closing a quiet connection");
            // The end of the stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Logs failed accepts at most once per [`ACCEPT_LOG_EVERY`], with the count.
#[derive(Debug, Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    since: u64,
}

impl AcceptErrors {
    fn failed(&mut self, e: &io::Error) {
        self.since += 1;
        let now = Instant::now();
        if self.last_logged.is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY) {
            tracing::warn!(
                error = %e,
                failed = self.since,
                "accepting gRPC connections fails (out of file descriptors?); pausing {ACCEPT_BACKOFF:?} after each failure, logging at most every {ACCEPT_LOG_EVERY:?}"
            );
            self.last_logged = Some(now);
            self.since = 0;
        }
    }
}

/// Accepts TCP connections on `listener` and prepares each with `prepare`
/// (a TLS handshake, or nothing) concurrently, within the handshake
/// timeout; yields those it returns. After a failed accept the loop pauses
/// [`ACCEPT_BACKOFF`]. The accept task ends when the stream is dropped (tonic
/// drops it when it stops serving).
pub fn incoming<IO, F, Fut>(
    listener: TcpListener,
    timeouts: ConnTimeouts,
    prepare: F,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn<IO>>>
where
    IO: Send + 'static,
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = Option<IO>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let mut errors = AcceptErrors::default();
        let slots = Arc::new(Semaphore::new(timeouts.max_connections.max(1)));
        let mut full_logged: Option<Instant> = None;
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    if full_logged.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                        tracing::warn!(
                            max = timeouts.max_connections,
                            "--max-connections connections are open: new ones wait in the listen backlog until one closes"
                        );
                        full_logged = Some(Instant::now());
                    }
                    tokio::select! {
                        () = tx.closed() => return,
                        slot = slots.clone().acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => return,
                        },
                    }
                }
            };
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    errors.failed(&e);
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            };
            let _ = tcp.set_nodelay(true);
            let info = TcpConnectInfo { local_addr: tcp.local_addr().ok(), remote_addr: Some(peer) };
            let at = Instant::now();
            let (ready, tx) = (prepare(tcp, peer), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout_at(at + timeouts.handshake, ready).await {
                    Ok(Some(io)) => {
                        let _ = tx.send(Ok(Conn::with_slot(io, info, timeouts, at, Some(slot)))).await;
                    }
                    Ok(None) => {}
                    Err(_) => tracing::debug!(%peer, "handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// [`incoming`] for plaintext gRPC: no handshake beyond HTTP/2's own.
pub fn plaintext(
    listener: TcpListener,
    timeouts: ConnTimeouts,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn<TcpStream>>> {
    incoming(listener, timeouts, |tcp, _| std::future::ready(Some(tcp)))
}
