//! [`Node`]: one running coordinator the suite talks to, either a real
//! `turnstiled` process or the same server run in the test process
//! ([`turnstile_testkit::InProcess`]), with one way to stop each gracefully
//! or to crash it.

use std::fmt;
use std::process::ExitStatus;

use turnstile_testkit::{InProcess, Turnstiled};

#[path = "../support/memory.rs"]
mod memory;

/// A running coordinator.
#[derive(Debug)]
pub(crate) enum Node {
    /// A `turnstiled` child process.
    Process(Turnstiled),
    /// [`run`] on port-0 listeners in this process, on a runtime of its own.
    InProcess(InProcess),
}

/// How a node stopped after [`Node::terminate`].
#[derive(Debug)]
pub(crate) enum Exit {
    /// The process's exit status.
    Process(ExitStatus),
    /// What [`run`] returned (or how it failed).
    InProcess(Result<(), String>),
}

impl Exit {
    /// Whether the stop was clean: exit 0, or [`run`] returned `Ok`.
    pub(crate) fn success(&self) -> bool {
        match self {
            Exit::Process(status) => status.success(),
            Exit::InProcess(res) => res.is_ok(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Process(status) => status.fmt(f),
            Exit::InProcess(Ok(())) => f.write_str("run() returned Ok"),
            Exit::InProcess(Err(e)) => write!(f, "run() failed: {e}"),
        }
    }
}

impl Node {
    /// `http://<grpc addr>`, for gRPC clients.
    pub(crate) fn url(&self) -> String {
        match self {
            Node::Process(p) => p.url(),
            Node::InProcess(s) => s.url(),
        }
    }

    /// The graceful stop (SIGTERM, or the shutdown future of [`run`]), waited
    /// for; with what a process wrote to stderr.
    pub(crate) fn terminate(self) -> (Exit, String) {
        match self {
            Node::Process(p) => {
                let (status, log) = p.terminate();
                (Exit::Process(status), log)
            }
            Node::InProcess(s) => (Exit::InProcess(s.terminate()), String::new()),
        }
    }

    /// A crash: SIGKILL, or every task of the in-process server dropped
    /// without any shutdown code. Either loses what was not yet on disk and
    /// nothing else, since the memory backend fsyncs every state write.
    pub(crate) fn kill(self) {
        match self {
            Node::Process(p) => p.kill(),
            Node::InProcess(s) => s.kill(),
        }
    }
}

/// The memory backend in this process with `turnstiled`'s flags `args`
/// (see `support/memory.rs`), as a [`Node`].
pub(crate) fn memory_in_process(args: &[String]) -> Node {
    Node::InProcess(memory::memory_in_process(args))
}
