//! [`Inner`]: what a client holds (the gRPC stub, settings, credentials),
//! and the one place where RPCs are sent: timeouts, the bearer token, and
//! retries after a lost connection.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use turnstile_proto::v1::{self, lock_service_client::LockServiceClient};

use crate::error::{is_transport, timed_out, transport_words, Error};
use crate::schedule::backoff;

/// What a [`Client`](crate::Client) holds, shared with the renewal tasks of its guards.
pub(crate) struct Inner {
    rpc: LockServiceClient<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    /// The owner prefix; each acquisition sends `{owner}/{n}`.
    pub(crate) owner: String,
    seq: AtomicU64,
    /// The TTL asked for on every acquisition.
    pub(crate) ttl: Duration,
    /// How long one call may take beyond the time it waits for a lock.
    pub(crate) call_timeout: Duration,
    auth: Option<MetadataValue<Ascii>>,
    /// The coordinator's `host:port`, for messages.
    pub(crate) addr: String,
    /// Whether the coordinator has ever answered this client (or `connect`
    /// reached it): past that, an outage is a restart to ride out; before
    /// it, most likely a wrong address.
    reached: AtomicBool,
}

/// Which failures a call retries (always with backoff, within its deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Nothing: the caller retries itself (the acquire loop, which asks anew
    /// with the wait left).
    Never,
    /// Only failures to reach the coordinator at all (a try-lock: the
    /// coordinator's own UNAVAILABLE, e.g. recovering, is answered at once).
    Transport,
    /// Failures to reach the coordinator, and UNAVAILABLE sent by it
    /// (shutting down, recovering).
    Unavailable,
}

impl Inner {
    /// A client state over `channel`; `owner` is the prefix of every owner sent.
    pub(crate) fn new(
        channel: Channel,
        owner: String,
        ttl: Duration,
        call_timeout: Duration,
        auth: Option<MetadataValue<Ascii>>,
        addr: String,
    ) -> Inner {
        Inner {
            health: tonic_health::pb::health_client::HealthClient::new(channel.clone()),
            rpc: LockServiceClient::new(channel),
            owner,
            seq: AtomicU64::new(0),
            ttl,
            call_timeout,
            auth,
            addr,
            reached: AtomicBool::new(false),
        }
    }

    /// One grpc.health.v1 check of the server as a whole, within the call
    /// timeout: whether it says SERVING.
    pub(crate) async fn serving(&self) -> Result<bool, crate::Error> {
        use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
        let mut health = self.health.clone();
        let check = health.check(HealthCheckRequest { service: String::new() });
        match tokio::time::timeout(self.call_timeout, check).await {
            Ok(Ok(r)) => Ok(r.into_inner().status() == ServingStatus::Serving),
            Ok(Err(status)) => Err(self.error(status)),
            Err(_) => Err(crate::Error::Timeout { operation: "Health.Check", after: self.call_timeout }),
        }
    }

    /// Makes sure the coordinator answers at all before a call that may wait
    /// long for its answer (a queued Acquire): one that accepts connections
    /// but never speaks HTTP/2 would otherwise keep the call until the end of
    /// its wait. One gRPC health check (no token needed), its failures to
    /// reach the coordinator retried with backoff, all within the call
    /// timeout; any answer, NOT_SERVING or an error status included, will do.
    pub(crate) async fn probe(&self, operation: &'static str) -> Result<(), Error> {
        use tonic_health::pb::HealthCheckRequest;
        let deadline = Instant::now() + self.call_timeout;
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut health = self.health.clone();
            let check = health.check(HealthCheckRequest { service: String::new() });
            match tokio::time::timeout(left, check).await {
                Err(_) => return Err(Error::Timeout { operation, after: self.call_timeout }),
                Ok(Ok(_)) => break,
                Ok(Err(status)) if !is_transport(&status) => break,
                Ok(Err(status)) => {
                    let pause = backoff(attempt);
                    if Instant::now() + pause >= deadline {
                        return Err(self.error(status));
                    }
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
            }
        }
        self.mark_reached();
        Ok(())
    }

    /// The error for `status`: one made by the transport names the
    /// coordinator's address and says what happened in words.
    pub(crate) fn error(&self, status: Status) -> Error {
        if is_transport(&status) {
            let words = if timed_out(&status) {
                format!("no answer within {}", crate::human_duration(self.call_timeout))
            } else {
                transport_words(&status)
            };
            let message = format!("cannot reach turnstiled at {}: {words}", self.addr);
            return Error::Unavailable { message };
        }
        Error::from_status(status)
    }

    /// Whether the coordinator has answered this client at least once.
    pub(crate) fn has_reached(&self) -> bool {
        self.reached.load(Ordering::Relaxed)
    }

    /// Notes that the coordinator answered (or a connection to it was made).
    pub(crate) fn mark_reached(&self) {
        self.reached.store(true, Ordering::Relaxed);
    }

    /// A fresh owner string for one acquisition. Each acquisition has its own,
    /// because an Acquire by the owner that holds the key returns that same
    /// lease: two tasks sharing a client must not share an owner.
    pub(crate) fn next_owner(&self) -> String {
        format!("{}/{}", self.owner, self.seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Sends one RPC, retrying the failures `retry` names with backoff until
    /// `deadline`. Every attempt carries the time left as its gRPC timeout and
    /// is cut off client-side at the deadline too.
    pub(crate) async fn call<T, R, F, Fut>(
        &self,
        operation: &'static str,
        msg: T,
        deadline: Instant,
        retry: Retry,
        send: F,
    ) -> Result<R, Error>
    where
        T: Clone,
        F: Fn(LockServiceClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        self.call_noting(operation, msg, deadline, retry, send, &mut false).await
    }

    /// [`call`](Inner::call), also setting `maybe_done` when a failed attempt
    /// may have been carried out by the coordinator although its answer was
    /// lost (see [`may_have_reached_server`]).
    async fn call_noting<T, R, F, Fut>(
        &self,
        operation: &'static str,
        msg: T,
        deadline: Instant,
        retry: Retry,
        send: F,
        maybe_done: &mut bool,
    ) -> Result<R, Error>
    where
        T: Clone,
        F: Fn(LockServiceClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let budget = deadline.saturating_duration_since(Instant::now());
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout { operation, after: budget });
            }
            let req = self.request(msg.clone(), left);
            let status = match tokio::time::timeout(left, send(self.rpc.clone(), req)).await {
                Err(_) => return Err(Error::Timeout { operation, after: budget }),
                Ok(Ok(resp)) => {
                    self.mark_reached();
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) => status,
            };
            if !is_transport(&status) {
                self.mark_reached(); // the coordinator itself answered
            }
            let retryable = match retry {
                Retry::Never => false,
                Retry::Transport => is_transport(&status),
                Retry::Unavailable => is_transport(&status) || status.code() == tonic::Code::Unavailable,
            };
            *maybe_done |= may_have_reached_server(&status);
            let pause = backoff(attempt);
            if !retryable || Instant::now() + pause >= deadline {
                return Err(self.error(status));
            }
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// A request with its timeout and credentials.
    fn request<T>(&self, msg: T, timeout: Duration) -> Request<T> {
        let mut req = Request::new(msg);
        req.set_timeout(timeout);
        if let Some(auth) = &self.auth {
            req.metadata_mut().insert("authorization", auth.clone());
        }
        req
    }

    /// Ends the lease `(key, token)`, optionally handing `result` to sharing
    /// waiters. `Ok(false)`: it had already ended.
    pub(crate) async fn release(&self, key: &str, token: u64, result: Option<Vec<u8>>) -> Result<bool, Error> {
        let msg = v1::ReleaseRequest { key: key.to_owned(), fencing_token: token, result: result.map(Into::into) };
        let deadline = Instant::now() + self.call_timeout;
        let mut maybe_done = false;
        let resp = self
            .call_noting(
                "Release",
                msg,
                deadline,
                Retry::Unavailable,
                |mut c, r| async move { c.release(r).await },
                &mut maybe_done,
            )
            .await?;
        // `released: false` after an attempt whose answer was lost most likely
        // means that that attempt did the release: not a lost lease. After
        // attempts that never reached the coordinator (connection refused, or
        // its own UNAVAILABLE) the answer stands: the lease had ended.
        Ok(resp.released || maybe_done)
    }

    /// Extends the lease `(key, token)` by one attempt bounded by `timeout`;
    /// returns the TTL granted.
    pub(crate) async fn renew_once(&self, key: &str, token: u64, timeout: Duration) -> Result<Duration, Status> {
        let msg = v1::RenewRequest { key: key.to_owned(), fencing_token: token, ttl: None };
        let req = self.request(msg, timeout);
        let mut rpc = self.rpc.clone();
        let resp = match tokio::time::timeout(timeout, rpc.renew(req)).await {
            Ok(r) => r?,
            Err(_) => return Err(Status::deadline_exceeded("renew timed out")),
        };
        resp.into_inner()
            .lease
            .and_then(|l| crate::info::duration(l.ttl))
            .ok_or_else(|| Status::internal("renew answered without a lease ttl"))
    }
}

/// Whether the coordinator may have carried out a call that failed with
/// `status`: false only when the call is known not to have been acted on,
/// because no connection could be made (refused, unreachable, connect
/// timeout) or because the coordinator itself answered UNAVAILABLE (shutting
/// down, recovering), which it does before touching any lease. A transport
/// failure on an established connection (reset, closed, cut off) may have
/// come after the coordinator acted.
fn may_have_reached_server(status: &Status) -> bool {
    if !is_transport(status) {
        return status.code() != tonic::Code::Unavailable;
    }
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        if c.is::<tonic::ConnectError>() {
            return false;
        }
        cause = c.source();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connect_failures_and_server_unavailable_are_known_not_to_reach_the_server() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert!(is_transport(&connect));
        assert!(!may_have_reached_server(&connect));
        assert!(!may_have_reached_server(&Status::unavailable("shutting down")));
        let reset = Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert!(is_transport(&reset));
        assert!(may_have_reached_server(&reset));
        assert!(may_have_reached_server(&Status::deadline_exceeded("late")));
    }
}
