//! [`InProcess`]: a server run inside the test process, on free loopback
//! ports, with the lifecycle of a child process: started once it is ready,
//! stopped gracefully through its shutdown future, or killed.
//!
//! Each server gets a tokio runtime of its own, the stand-in for a process:
//! every task it spawns (per-connection tasks, timers, background work) lives
//! there, so [`InProcess::kill`] drops them all at once without running any
//! shutdown code, and open connections break, as after a SIGKILL. Tests of
//! the server's rules then run fast and under a debugger, while real processes
//! stay for what only they can show (signals, exit codes, a binary's flags).
//!
//! The server itself is a closure of the caller's: it gets the bound
//! listeners, a [`Ready`] to announce itself (as `turnstiled`'s ready line)
//! and the [`Shutdown`] future, and returns when it has stopped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// How long a kill waits for the server's worker threads to leave the task
/// they are polling (a task is dropped at its next `.await`).
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A server running in this process on its own runtime. Killed on drop.
#[derive(Debug)]
pub struct InProcess {
    /// The gRPC address it listens on.
    pub grpc: SocketAddr,
    /// The HTTP address it listens on.
    pub http: SocketAddr,
    runtime: Option<Runtime>,
    stop: Option<oneshot::Sender<()>>,
    done: mpsc::Receiver<Result<(), String>>,
}

/// What a server started by [`InProcess::start`] is handed.
#[derive(Debug)]
pub struct Bound {
    /// The gRPC listener, on a free loopback port.
    pub grpc: TcpListener,
    /// The HTTP listener, on a free loopback port.
    pub http: TcpListener,
    /// Completes when the test asks for a graceful stop.
    pub shutdown: Shutdown,
    /// To announce, once, that the server is open for calls.
    pub ready: Ready,
}

/// Announces that a server is ready, as a process's ready line does.
#[derive(Debug)]
pub struct Ready(Option<mpsc::SyncSender<Result<(), String>>>);

impl Ready {
    /// The server is open for calls: [`InProcess::start`] returns.
    pub fn announce(mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Ok(()));
        }
    }
}

/// The graceful-stop signal: completes when [`InProcess::terminate`] is
/// called (or the [`InProcess`] is gone).
#[derive(Debug)]
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl InProcess {
    /// Binds two free loopback ports, runs `serve` on a runtime of its own and
    /// waits until it calls [`Ready::announce`]. A server that returns
    /// before announcing is an `Err` with its error (as a process that exits
    /// before its ready line).
    ///
    /// Blocks the calling thread while the server starts, as reading a
    /// process's ready line does; the server runs on its own threads, so
    /// this never waits on the caller's runtime.
    pub fn start<F, Fut>(serve: F) -> Result<InProcess, String>
    where
        F: FnOnce(Bound) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let bind = || -> Result<std::net::TcpListener, String> {
            let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("bind a loopback port: {e}"))?;
            l.set_nonblocking(true).map_err(|e| format!("set the listener non-blocking: {e}"))?;
            Ok(l)
        };
        let (grpc, http) = (bind()?, bind()?);
        let addr = |l: &std::net::TcpListener| l.local_addr().map_err(|e| format!("bound address: {e}"));
        let (grpc_addr, http_addr) = (addr(&grpc)?, addr(&http)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("in-process-server")
            .enable_all()
            .build()
            .map_err(|e| format!("build the server's runtime: {e}"))?;
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (done_tx, done) = mpsc::sync_channel(1);
        let (stop, stopped) = oneshot::channel();
        let failed = ready_tx.clone();
        runtime.spawn(async move {
            // Registered with this runtime's reactor, hence here.
            let listeners = TcpListener::from_std(grpc).and_then(|g| Ok((g, TcpListener::from_std(http)?)));
            let res = match listeners {
                Ok((grpc, http)) => {
                    serve(Bound { grpc, http, shutdown: Shutdown(stopped), ready: Ready(Some(ready_tx)) }).await
                }
                Err(e) => Err(format!("register the listeners: {e}")),
            };
            // Ends a start that is still waiting (the ready slot is free then).
            let _ = failed.try_send(res.clone().and(Err("the server stopped before it was ready".into())));
            let _ = done_tx.send(res);
        });
        let server = InProcess { grpc: grpc_addr, http: http_addr, runtime: Some(runtime), stop: Some(stop), done };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(server),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the server panicked before it was ready".into()),
        }
    }

    /// `http://<grpc addr>`, for gRPC clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Completes the server's [`Shutdown`] and waits until it returns (the
    /// graceful path), then ends whatever it left running, as a process's
    /// exit does. Its result, or the panic that ended it.
    pub fn terminate(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let res = self.done.recv().unwrap_or_else(|_| Err("the server panicked".into()));
        self.shut_runtime();
        res
    }

    /// Drops the server and every task it spawned without running any
    /// shutdown code (a crash), and returns once none of them runs any more.
    pub fn kill(mut self) {
        self.shut_runtime();
    }

    fn shut_runtime(&mut self) {
        let Some(runtime) = self.runtime.take() else { return };
        // A runtime that waits for its threads may not be shut down from an
        // async context; a plain thread may.
        let _ = std::thread::spawn(move || runtime.shutdown_timeout(KILL_TIMEOUT)).join();
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shut_runtime();
    }
}
