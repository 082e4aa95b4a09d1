//! The `turnstile.v1.LockService` gRPC service: thin handlers that validate
//! ([`crate::validate`]), call the [`Backend`], and map the result.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use turnstile_proto::v1::{self, lock_service_server::LockService};

use crate::backend::{AcquireOutcome, Backend};
use crate::convert::lock_info;
use crate::error::BackendError;
use crate::telemetry::Metrics;
use crate::validate::{self, Limits};

/// The gRPC service over a backend.
pub struct LockServiceImpl<B> {
    backend: Arc<B>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl<B: Backend> LockServiceImpl<B> {
    /// A service answering from `backend` with the given validation limits.
    pub fn new(backend: Arc<B>, limits: Limits, metrics: Arc<Metrics>) -> Self {
        LockServiceImpl { backend, limits, metrics }
    }

    /// Counts refused calls by RPC and code.
    fn observe<T>(&self, rpc: &'static str, res: Result<T, Status>) -> Result<Response<T>, Status> {
        match res {
            Ok(v) => Ok(Response::new(v)),
            Err(s) => {
                self.metrics.error(rpc, s.code());
                Err(s)
            }
        }
    }

    async fn acquire_inner(&self, req: v1::AcquireRequest) -> Result<v1::AcquireResponse, Status> {
        let req = validate::acquire(&req, &self.limits)?;
        Ok(match self.backend.acquire(req).await? {
            AcquireOutcome::Acquired(grant) => {
                v1::AcquireResponse { acquired: true, lease: Some((&grant).into()), ..Default::default() }
            }
            AcquireOutcome::NotAcquired(current) => {
                v1::AcquireResponse { current: Some(lock_info(&current)), ..Default::default() }
            }
            AcquireOutcome::Shared { result, current } => v1::AcquireResponse {
                current: Some(lock_info(&current)),
                shared_result: Some(result.to_vec()),
                ..Default::default()
            },
        })
    }

    async fn renew_inner(&self, req: v1::RenewRequest) -> Result<v1::RenewResponse, Status> {
        let (key, token, ttl) = validate::renew(&req, &self.limits)?;
        let grant = self.backend.renew(key, token, ttl).await?;
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
        }
        Ok(v1::ReleaseResponse { released })
    }

    async fn list_inner(&self, req: v1::ListLocksRequest) -> Result<v1::ListLocksResponse, Status> {
        let (prefix, after, size) = validate::list(&req)?;
        // One more than a page tells whether another page follows.
        let mut locks = self.backend.list(prefix, after, size + 1).await?;
        let next_page_token = if locks.len() > size {
            locks.truncate(size);
            locks.last().map(|l| l.key.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(v1::ListLocksResponse { locks: locks.iter().map(lock_info).collect(), next_page_token })
    }
}

#[tonic::async_trait]
impl<B: Backend> LockService for LockServiceImpl<B> {
    async fn acquire(&self, request: Request<v1::AcquireRequest>) -> Result<Response<v1::AcquireResponse>, Status> {
        let res = self.acquire_inner(request.into_inner()).await;
        self.observe("Acquire", res)
    }

    async fn renew(&self, request: Request<v1::RenewRequest>) -> Result<Response<v1::RenewResponse>, Status> {
        let res = self.renew_inner(request.into_inner()).await;
        self.observe("Renew", res)
    }

    async fn release(&self, request: Request<v1::ReleaseRequest>) -> Result<Response<v1::ReleaseResponse>, Status> {
        let res = self.release_inner(request.into_inner()).await;
        self.observe("Release", res)
    }

    async fn get_lock(&self, request: Request<v1::GetLockRequest>) -> Result<Response<v1::LockInfo>, Status> {
        let req = request.into_inner();
        let res = match validate::key("key", &req.key) {
            Ok(()) => self.backend.get(req.key).await.map(|i| lock_info(&i)).map_err(Status::from),
            Err(e) => Err(e.into()),
        };
        self.observe("GetLock", res)
    }

    async fn list_locks(
        &self,
        request: Request<v1::ListLocksRequest>,
    ) -> Result<Response<v1::ListLocksResponse>, Status> {
        let res = self.list_inner(request.into_inner()).await;
        self.observe("ListLocks", res)
    }
}
