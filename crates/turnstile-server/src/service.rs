//! The `turnstile.v1.LockService` gRPC service: thin handlers that validate
//! ([`crate::validate`]), call the [`Backend`], and map the result. Each first
//! checks the caller's token ([`crate::auth`]): a refusal changes nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Request, Response, Status};
use turnstile_proto::v1::{self, lock_service_server::LockService};

use crate::auth::{self, Access, Verb};
use crate::backend::{AcquireOutcome, Backend};
use crate::call::{CallDeadline, CallSlot, ResponseBudget, ResponseHold, TakeBack};
use crate::convert::lock_info;
use crate::error::BackendError;
use crate::telemetry::Metrics;
use crate::validate::{self, Limits};

/// The gRPC service over a backend.
pub struct LockServiceImpl<B> {
    backend: Arc<B>,
    limits: Limits,
    metrics: Arc<Metrics>,
    deadline_margin: Duration,
    access: Access,
    budget: Option<ResponseBudget>,
}

/// The most a `LockInfo` of a ListLocks page takes encoded: a key of 512
/// bytes, an owner of 256, and the rest of its fields and framing.
const MAX_LOCK_INFO_BYTES: usize = 512 + 256 + 64;

/// Default of [`LockServiceImpl::with_deadline_margin`] (`--deadline-margin`).
pub const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_millis(50);

impl<B: Backend> LockServiceImpl<B> {
    /// A service answering from `backend` with the given validation limits.
    pub fn new(backend: Arc<B>, limits: Limits, metrics: Arc<Metrics>) -> Self {
        LockServiceImpl {
            backend,
            limits,
            metrics,
            deadline_margin: DEFAULT_DEADLINE_MARGIN,
            access: Access::Open,
            budget: None,
        }
    }

    /// Bounds the bytes of large responses in flight (shared results,
    /// ListLocks pages) by `budget` (default: unbounded).
    pub fn with_response_budget(mut self, budget: ResponseBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// How long before the call's own deadline (`grpc-timeout`) a wait ends,
    /// at most; never more than half the time the call has left. A grant
    /// made in that margin still reaches the client before it gives up.
    pub fn with_deadline_margin(mut self, margin: Duration) -> Self {
        self.deadline_margin = margin;
        self
    }

    /// Who may call (default: everyone).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Whether the caller may do `verb` on `key`; a refusal is counted.
    fn authorize<T>(
        &self,
        started: Instant,
        rpc: &'static str,
        request: &Request<T>,
        verb: Verb,
        key: &str,
    ) -> Result<(), Status> {
        self.access
            .check(request.metadata(), verb, key)
            .inspect_err(|s| self.metrics.call(rpc, s.code(), started.elapsed()))
    }

    /// The wait an acquire may spend in the queue: its `wait_timeout`, ended
    /// a margin before the call's deadline so that nothing is granted into
    /// a call its client has already given up on.
    fn wait_within(&self, wait: Duration, deadline: Option<CallDeadline>) -> Duration {
        let Some(CallDeadline(at)) = deadline else { return wait };
        let left = at.saturating_duration_since(tokio::time::Instant::now());
        wait.min(left.saturating_sub(self.deadline_margin.min(left / 2)))
    }

    /// Releases `grant` if its reply never reaches the wire (G6).
    fn take_back(&self, key: Arc<str>, token: u64) -> TakeBack {
        let (backend, metrics) = (self.backend.clone(), self.metrics.clone());
        TakeBack::new(move || {
            metrics.grants_taken_back.inc();
            tracing::debug!(%key, token, "the grant's reply never reached the client: released");
            // Off the transport's task: a release may be a network call (etcd).
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = backend.release(key.to_string(), token, None).await {
                        tracing::warn!(%key, token, error = %e, "could not take back an undelivered grant; it expires with its TTL");
                    }
                });
            }
        })
    }

    /// Counts the call by RPC and status code, with its latency since `started`.
    fn observe<T>(&self, rpc: &'static str, started: Instant, res: Result<T, Status>) -> Result<Response<T>, Status> {
        let code = res.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.call(rpc, code, started.elapsed());
        res.map(Response::new)
    }

    /// The answer, and a take-back when it hands out a new lease.
    async fn acquire_inner(
        &self,
        req: v1::AcquireRequest,
        deadline: Option<CallDeadline>,
    ) -> Result<(v1::AcquireResponse, Option<TakeBack>), Status> {
        let mut req = validate::acquire(&req, &self.limits)?;
        req.wait = self.wait_within(req.wait, deadline);
        Ok(match self.backend.acquire(req).await? {
            AcquireOutcome::Acquired(grant) => {
                let take_back = self.take_back(grant.key.clone(), grant.token);
                let res = v1::AcquireResponse { acquired: true, lease: Some((&grant).into()), ..Default::default() };
                (res, Some(take_back))
            }
            // The owner held it before this call: never taken back.
            AcquireOutcome::Refreshed(grant) => {
                (v1::AcquireResponse { acquired: true, lease: Some((&grant).into()), ..Default::default() }, None)
            }
            AcquireOutcome::NotAcquired(current) => {
                (v1::AcquireResponse { current: Some(lock_info(&current)), ..Default::default() }, None)
            }
            AcquireOutcome::Shared { result, current } => (
                v1::AcquireResponse {
                    current: Some(lock_info(&current)),
                    shared_result: Some(result),
                    ..Default::default()
                },
                None,
            ),
        })
    }

    async fn renew_inner(&self, req: v1::RenewRequest) -> Result<v1::RenewResponse, Status> {
        let (key, token, ttl) = validate::renew(&req, &self.limits)?;
        let grant = match self.backend.renew(key, token, ttl).await {
            Ok(g) => g,
            Err(e @ BackendError::Core(turnstile_core::CoreError::LeaseNotFound { .. })) => {
                self.metrics.renew_not_found.inc();
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        self.metrics.renewed.inc();
        Ok(v1::RenewResponse { lease: Some((&grant).into()) })
    }

    async fn release_inner(&self, req: v1::ReleaseRequest) -> Result<v1::ReleaseResponse, Status> {
        let (key, token) = validate::release(&req)?;
        if let Some(r) = &req.result {
            if r.len() > self.limits.max_result_bytes {
                return Err(BackendError::ResultTooLarge { size: r.len(), limit: self.limits.max_result_bytes }.into());
            }
        }
        let released = self.backend.release(key, token, req.result).await?;
        if released {
            self.metrics.released.inc();
        } else {
            self.metrics.release_already_ended.inc();
        }
        Ok(v1::ReleaseResponse { released })
    }

    /// The admin's force release: checked (admin verb on the key), validated,
    /// carried out, logged at warn with who asked, and counted.
    async fn force_release_inner(
        &self,
        request: Request<v1::ForceReleaseRequest>,
    ) -> Result<v1::ForceReleaseResponse, Status> {
        // Before anything else, so that a refusal changes nothing; counted by `observe`.
        let caller = self.access.caller(request.metadata())?;
        if let Some(g) = &caller {
            g.check(Verb::Admin, &request.get_ref().key)?;
        }
        let peer = peer_addr(&request).map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let (key, token) = validate::force_release(request.get_ref())?;
        let out = self.backend.force_release(key.clone(), token).await?;
        let previous = lock_info(&out.previous);
        if out.released {
            self.metrics.force_releases.inc();
            tracing::warn!(
                key = %key,
                owner = %previous.owner,
                token = previous.fencing_token,
                waiters = previous.waiters,
                caller = caller.as_ref().map_or("(no token: open access)", |g| g.name.as_str()),
                peer = %peer,
                "force release: the lease was ended by an operator, as if it had expired"
            );
        }
        Ok(v1::ForceReleaseResponse { released: out.released, previous: Some(previous) })
    }

    async fn list_inner(&self, req: Request<v1::ListLocksRequest>) -> Result<v1::ListLocksResponse, Status> {
        let scopes = self.access.list_scopes(req.metadata(), &req.get_ref().prefix)?;
        let (prefix, after, size) = validate::list(req.get_ref())?;
        // One more than a page tells whether another page follows.
        let mut locks = auth::list_scoped(&*self.backend, &scopes, after, size + 1).await?;
        let next_page_token = if locks.len() > size {
            locks.truncate(size);
            locks.last().map(|l| validate::page_token::encode(&prefix, &l.key)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(v1::ListLocksResponse { locks: locks.iter().map(lock_info).collect(), next_page_token })
    }
}

#[tonic::async_trait]
impl<B: Backend> LockService for LockServiceImpl<B> {
    async fn acquire(&self, request: Request<v1::AcquireRequest>) -> Result<Response<v1::AcquireResponse>, Status> {
        let started = Instant::now();
        self.authorize(started, "Acquire", &request, Verb::Lock, &request.get_ref().key)?;
        let deadline = request.extensions().get::<CallDeadline>().copied();
        if request.get_ref().wait_timeout.as_ref().is_some_and(|w| w.seconds > 0 || w.nanos > 0) {
            // A waiter is long-lived: it counts among --max-waiters, not
            // among the short calls of --max-concurrent-calls.
            if let Some(slot) = request.extensions().get::<CallSlot>() {
                slot.release();
            }
        }
        let res = self.acquire_inner(request.into_inner(), deadline).await;
        let (res, take_back) = match res {
            Ok((r, t)) => (Ok(r), t),
            Err(e) => (Err(e), None),
        };
        // A shared result waits for room among the response bytes in flight:
        // however many waiters share it, only so many are encoded at once.
        let hold = match (&res, &self.budget) {
            (Ok(r), Some(budget)) if r.shared_result.is_some() => {
                Some(budget.reserve(prost::Message::encoded_len(r)).await)
            }
            _ => None,
        };
        let mut res = self.observe("Acquire", started, res)?;
        if let Some(h) = hold {
            res.extensions_mut().insert(h);
        }
        if let Some(t) = take_back {
            // From here on, a reply that does not reach the wire releases the
            // lease (crate::call); dropped with it before, it does too.
            res.extensions_mut().insert(t);
        }
        Ok(res)
    }

    async fn renew(&self, request: Request<v1::RenewRequest>) -> Result<Response<v1::RenewResponse>, Status> {
        let started = Instant::now();
        self.authorize(started, "Renew", &request, Verb::Lock, &request.get_ref().key)?;
        let res = self.renew_inner(request.into_inner()).await;
        self.observe("Renew", started, res)
    }

    async fn release(&self, request: Request<v1::ReleaseRequest>) -> Result<Response<v1::ReleaseResponse>, Status> {
        let started = Instant::now();
        self.authorize(started, "Release", &request, Verb::Lock, &request.get_ref().key)?;
        let res = self.release_inner(request.into_inner()).await;
        self.observe("Release", started, res)
    }

    async fn get_lock(&self, request: Request<v1::GetLockRequest>) -> Result<Response<v1::LockInfo>, Status> {
        let started = Instant::now();
        self.authorize(started, "GetLock", &request, Verb::Inspect, &request.get_ref().key)?;
        let req = request.into_inner();
        let res = match validate::key("key", &req.key) {
            Ok(()) => self.backend.get(req.key).await.map(|i| lock_info(&i)).map_err(Status::from).map(|mut info| {
                // A free key is not grantable while recovering: say so, and for how long.
                info.grants_resume_in = self.backend.recovery_left().map(crate::convert::duration);
                info
            }),
            Err(e) => Err(e.into()),
        };
        self.observe("GetLock", started, res)
    }

    async fn force_release(
        &self,
        request: Request<v1::ForceReleaseRequest>,
    ) -> Result<Response<v1::ForceReleaseResponse>, Status> {
        let started = Instant::now();
        let res = self.force_release_inner(request).await;
        self.observe("ForceRelease", started, res)
    }

    async fn list_locks(
        &self,
        request: Request<v1::ListLocksRequest>,
    ) -> Result<Response<v1::ListLocksResponse>, Status> {
        let started = Instant::now();
        // Room for the largest page this call can return, or it is shed.
        let hold = match &self.budget {
            Some(budget) => {
                let size = validate::list(request.get_ref()).map_or(1, |(_, _, size)| size);
                let most = (size + 1) * MAX_LOCK_INFO_BYTES;
                match budget.try_reserve(most) {
                    Some(h) => Some(h),
                    None => {
                        let s = response_budget_exhausted(budget, most);
                        return self.observe("ListLocks", started, Err(s));
                    }
                }
            }
            None => None,
        };
        let res = self.list_inner(request).await;
        let mut res = self.observe("ListLocks", started, res)?;
        if let Some(h) = hold {
            h.shrink_to(prost::Message::encoded_len(res.get_ref()));
            res.extensions_mut().insert::<ResponseHold>(h);
        }
        Ok(res)
    }
}

/// The address of the peer that sent `request`: from the [`ConnInfo`] that
/// our own accept loop (plaintext or TLS) puts in every request's extensions,
/// else tonic's own (`TcpIncoming`, as in tests that serve another way).
///
/// [`ConnInfo`]: crate::listen::ConnInfo
fn peer_addr<T>(request: &Request<T>) -> Option<std::net::SocketAddr> {
    request
        .extensions()
        .get::<crate::listen::ConnInfo>()
        .and_then(|c| c.tcp.remote_addr)
        .or_else(|| request.remote_addr())
}

/// A ListLocks page shed because `--max-response-bytes-in-flight` has no
/// room for it now: `RESOURCE_EXHAUSTED`, reason `OVERLOADED`.
fn response_budget_exhausted(budget: &ResponseBudget, wanted: usize) -> Status {
    let mut details = tonic_types::ErrorDetails::with_error_info(
        "OVERLOADED",
        crate::error::ERROR_DOMAIN,
        [("limit".to_owned(), budget.total().to_string()), ("bytes".to_owned(), wanted.to_string())],
    );
    details.set_retry_info(Some(Duration::from_millis(100)));
    <Status as tonic_types::StatusExt>::with_error_details(
        tonic::Code::ResourceExhausted,
        format!(
            "turnstiled is overloaded: no room for a page of up to {wanted} bytes among the {} response bytes in flight (max response bytes in flight); retry shortly, or ask for a smaller page",
            budget.total()
        ),
        details,
    )
}
