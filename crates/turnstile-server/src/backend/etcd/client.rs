//! The etcd calls the backend makes, over etcd's generated tonic clients
//! ([`super::proto`]): [`EtcdClient`], the connection; [`Txn`], a transaction
//! builder whose reads hand out a [`Read`] each, the only way to find their
//! answer in the [`TxnAnswer`], so no caller reads a response by its position;
//! and the [`Watch`] and [`KeepAlive`] streams.
//!
//! Nothing here knows turnstile's key layout or keeps state across calls: the
//! call timeout and etcd's health are the caller's (`Inner::call`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use super::proto::etcdserverpb::auth_client::AuthClient;
use super::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use super::proto::etcdserverpb::kv_client::KvClient;
use super::proto::etcdserverpb::lease_client::LeaseClient;
pub(super) use super::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use super::proto::etcdserverpb::watch_client::WatchClient;
use super::proto::etcdserverpb::watch_create_request::FilterType;
use super::proto::etcdserverpb::{
    request_op, response_op, watch_request, AuthenticateRequest, Compare, DeleteRangeRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest,
};
pub(super) use super::proto::etcdserverpb::{
    LeaseGrantResponse, LeaseTimeToLiveResponse, RangeResponse, WatchResponse,
};
pub(super) use super::proto::mvccpb::event::EventType;
pub(super) use super::proto::mvccpb::KeyValue;
use super::secure::{explain, Credentials, EtcdTls};

/// Why an etcd call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum CallError {
    /// etcd, or the connection to it, answered with this status.
    #[error("{}", explain(.0))]
    Status(#[from] tonic::Status),
    /// etcd refused `--etcd-user`'s credentials.
    #[error("authenticating as etcd user {user:?}: {reason}")]
    Authenticate {
        /// The user.
        user: String,
        /// etcd's answer, in words.
        reason: String,
    },
    /// No answer within the call timeout.
    #[error("no answer in time")]
    TimedOut,
    /// etcd closed a stream that should have answered (a watch, a keep-alive).
    #[error("the {0} stream ended")]
    StreamEnded(&'static str),
    /// The batcher's dispatcher is gone (the backend is being dropped).
    #[error("the etcd batcher has stopped")]
    BatcherStopped,
    /// etcd answered a batch of nested transactions with something else.
    #[error("etcd answered a batch with {0}")]
    Malformed(&'static str),
}

/// An etcd endpoint that is not a URL, or whose TLS settings do not load.
#[derive(Debug, thiserror::Error)]
#[error("etcd endpoint {endpoint}: {reason}")]
pub(super) struct BadEndpoint {
    endpoint: String,
    reason: String,
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub(super) struct ConnectOptions {
    /// Longest wait for a TCP connection, and for an HTTP/2 ping's answer.
    pub(super) timeout: Duration,
    /// Interval of HTTP/2 pings, sent even while no call is in flight.
    pub(super) ping_interval: Duration,
    /// TLS for `https://` endpoints (`--etcd-ca`, `--etcd-cert`, `--etcd-key`).
    pub(super) tls: Option<EtcdTls>,
    /// The user and password to authenticate with (`--etcd-user`).
    pub(super) credentials: Option<Credentials>,
}

/// The services' transport: the channel, with the auth token added to every call.
type Svc = InterceptedService<Channel, TokenHeader>;

/// Adds etcd's auth token, while there is one, to every request as the
/// `token` metadata header (what etcd's own client sends).
#[derive(Clone, Default)]
struct TokenHeader(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl TokenHeader {
    fn set(&self, token: Option<MetadataValue<Ascii>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    fn get(&self) -> Option<MetadataValue<Ascii>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Interceptor for TokenHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = self.get() {
            req.metadata_mut().insert("token", token);
        }
        Ok(req)
    }
}

/// The auth session with etcd: the credentials and the current token, which
/// is fetched again (once per call) when etcd no longer takes it.
struct Session {
    credentials: Credentials,
    auth: AuthClient<Channel>,
    token: TokenHeader,
    /// Counts the tokens fetched: a call re-authenticates only if no other
    /// call has done so since it sent its request.
    generation: AtomicU64,
    /// Serializes authentications (etcd's Authenticate is deliberately slow).
    refresh: tokio::sync::Mutex<()>,
}

impl Session {
    /// Fetches a new token unless one was fetched after generation `seen`.
    async fn authenticate(&self, seen: u64) -> Result<(), CallError> {
        let _one_at_a_time = self.refresh.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        let req =
            AuthenticateRequest { name: self.credentials.user.clone(), password: self.credentials.password.clone() };
        let token = match self.auth.clone().authenticate(req).await {
            Ok(resp) => {
                let token = resp.into_inner().token;
                let value = token.parse::<MetadataValue<Ascii>>().map_err(|_| CallError::Authenticate {
                    user: self.credentials.user.clone(),
                    reason: "etcd answered a token that is not ASCII".into(),
                })?;
                Some(value)
            }
            // etcd without `auth enable` takes every call without a token.
            Err(s) if s.message().contains("authentication is not enabled") => {
                tracing::warn!(user = %self.credentials.user, "--etcd-user is set but etcd has authentication disabled");
                None
            }
            Err(s) if s.code() == tonic::Code::InvalidArgument || s.code() == tonic::Code::PermissionDenied => {
                return Err(CallError::Authenticate { user: self.credentials.user.clone(), reason: explain(&s) });
            }
            Err(s) => return Err(CallError::Status(s)),
        };
        self.token.set(token);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Whether etcd refused a call for its token (expired, invalidated by an
/// etcd restart or `auth disable`, or missing since auth was enabled after
/// the last authentication): then authenticating again helps.
fn token_refused(s: &Status) -> bool {
    let m = s.message();
    s.code() == tonic::Code::Unauthenticated
        || m.contains("invalid auth token")
        || m.contains("revision of auth store is old")
        || m.contains("user name is empty")
}

/// The connection to etcd: one channel balanced over every endpoint, which
/// connects lazily and reconnects by itself. Clones share it.
#[derive(Clone)]
pub(super) struct EtcdClient {
    kv: KvClient<Svc>,
    watch: WatchClient<Svc>,
    lease: LeaseClient<Svc>,
    session: Option<Arc<Session>>,
}

impl EtcdClient {
    /// A client of `endpoints` (`http://host:port`, or `https://` with
    /// [`ConnectOptions::tls`]; a bare `host:port` means `http://`). Nothing
    /// is connected yet: an unreachable etcd fails calls, not this; nor is
    /// a token fetched ([`EtcdClient::authenticate`]).
    pub(super) fn new(endpoints: &[&str], options: &ConnectOptions) -> Result<Self, BadEndpoint> {
        let mut list = Vec::with_capacity(endpoints.len());
        for &e in endpoints {
            let bad = |reason: String| BadEndpoint { endpoint: e.to_owned(), reason };
            let url = if e.contains("://") { e.to_owned() } else { format!("http://{e}") };
            let mut endpoint = Endpoint::from_shared(url)
                .map_err(|_| bad("not a URL (http://host:port or https://host:port)".into()))?
                .connect_timeout(options.timeout)
                .http2_keep_alive_interval(options.ping_interval)
                .keep_alive_timeout(options.timeout)
                .keep_alive_while_idle(true);
            if let (Some(tls), true) = (&options.tls, endpoint.uri().scheme_str() == Some("https")) {
                endpoint =
                    endpoint.tls_config(tls.tonic.clone()).map_err(|e| bad(format!("TLS settings: {}", words(&e))))?;
            }
            list.push(endpoint);
        }
        let channel = Channel::balance_list(list.into_iter());
        let token = TokenHeader::default();
        let session = options.credentials.clone().map(|credentials| {
            Arc::new(Session {
                credentials,
                auth: AuthClient::new(channel.clone()),
                token: token.clone(),
                generation: AtomicU64::new(0),
                refresh: tokio::sync::Mutex::new(()),
            })
        });
        Ok(EtcdClient {
            kv: KvClient::with_interceptor(channel.clone(), token.clone()),
            watch: WatchClient::with_interceptor(channel.clone(), token.clone()),
            lease: LeaseClient::with_interceptor(channel, token),
            session,
        })
    }

    /// Fetches an auth token now (without credentials: nothing to do). A
    /// wrong password is [`CallError::Authenticate`].
    pub(super) async fn authenticate(&self) -> Result<(), CallError> {
        match &self.session {
            Some(session) => session.authenticate(session.generation.load(Ordering::Acquire)).await,
            None => Ok(()),
        }
    }

    /// Runs `call`; when etcd refuses its auth token, authenticates again
    /// (once, shared with every call refused meanwhile) and runs it again.
    async fn authed<T, F, Fut>(&self, call: F) -> Result<T, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let Some(session) = &self.session else { return Ok(call().await?) };
        let seen = session.generation.load(Ordering::Acquire);
        match call().await {
            Err(s) if token_refused(&s) => {
                tracing::info!(user = %session.credentials.user, "etcd refused the auth token ({}); authenticating again", explain(&s));
                session.authenticate(seen).await?;
                Ok(call().await?)
            }
            res => Ok(res?),
        }
    }

    /// Runs a transaction.
    pub(super) async fn txn(&self, txn: &Txn) -> Result<TxnAnswer, CallError> {
        let resp = self
            .authed(|| {
                let (mut kv, req) = (self.kv.clone(), txn.req.clone());
                async move { kv.txn(req).await }
            })
            .await?
            .into_inner();
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        Ok(TxnAnswer::new(resp, revision))
    }

    /// A plain read (not in a transaction).
    pub(super) async fn get(&self, get: Get) -> Result<RangeResponse, CallError> {
        Ok(self
            .authed(|| {
                let (mut kv, req) = (self.kv.clone(), get.0.clone());
                async move { kv.range(req).await }
            })
            .await?
            .into_inner())
    }

    /// Grants a lease of `ttl` seconds.
    pub(super) async fn grant(&self, ttl: i64) -> Result<LeaseGrantResponse, CallError> {
        Ok(self
            .authed(|| {
                let mut lease = self.lease.clone();
                async move { lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await }
            })
            .await?
            .into_inner())
    }

    /// Revokes lease `id`; etcd answers `NOT_FOUND` when it has ended already.
    pub(super) async fn revoke(&self, id: i64) -> Result<(), CallError> {
        self.authed(|| {
            let mut lease = self.lease.clone();
            async move { lease.lease_revoke(LeaseRevokeRequest { id }).await }
        })
        .await?;
        Ok(())
    }

    /// The remaining TTL of lease `id` (negative when it has ended).
    pub(super) async fn time_to_live(&self, id: i64) -> Result<LeaseTimeToLiveResponse, CallError> {
        let req = LeaseTimeToLiveRequest { id, keys: false };
        Ok(self
            .authed(|| {
                let mut lease = self.lease.clone();
                async move { lease.lease_time_to_live(req).await }
            })
            .await?
            .into_inner())
    }

    /// Watches `key` (every key under it, with `prefix`) from revision `from`,
    /// leaving out the events `skip` names. The first message is etcd's
    /// confirmation that the watch was created.
    pub(super) async fn watch(&self, key: &[u8], prefix: bool, from: i64, skip: Skip) -> Result<Watch, CallError> {
        let filter = match skip {
            Skip::Puts => FilterType::Noput,
            Skip::Deletes => FilterType::Nodelete,
        };
        let create = WatchCreateRequest {
            key: key.to_vec(),
            range_end: if prefix { prefix_end(key) } else { Vec::new() },
            start_revision: from,
            filters: vec![filter as i32],
            ..WatchCreateRequest::default()
        };
        let first = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
        let open = || async {
            let (requests, rx) = mpsc::channel(1);
            // Cannot fail: the receiver is alive and the buffer empty.
            let _ = requests.try_send(first.clone());
            let mut responses = self.watch.clone().watch(ReceiverStream::new(rx)).await?.into_inner();
            // etcd answers a create with a refused token by a cancelled watch,
            // not a status: make it one, so that `authed` authenticates again.
            let created = responses.message().await?;
            if let Some(w) = created.as_ref().filter(|w| w.canceled && self.session.is_some()) {
                if w.cancel_reason.contains("permission denied") {
                    return Err(Status::unauthenticated(format!("watch refused: {}", w.cancel_reason)));
                }
            }
            Ok::<_, Status>(Watch { _requests: requests, responses, created })
        };
        self.authed(open).await
    }

    /// Opens a keep-alive stream for lease `id` and restarts its TTL; `None`
    /// when the lease has ended (etcd answers TTL 0 and never renews it).
    pub(super) async fn keep_alive(&self, id: i64) -> Result<Option<KeepAlive>, CallError> {
        let open = || async {
            let (requests, rx) = mpsc::channel(1);
            let _ = requests.try_send(LeaseKeepAliveRequest { id });
            let responses = self.lease.clone().lease_keep_alive(ReceiverStream::new(rx)).await?.into_inner();
            Ok::<_, Status>((requests, responses))
        };
        let (requests, responses) = self.authed(open).await?;
        let mut keeper = KeepAlive { id, requests, responses };
        match keeper.next().await? {
            resp if resp.ttl > 0 => Ok(Some(keeper)),
            _ => Ok(None),
        }
    }
}

/// A transport error (e.g. TLS settings that do not load) and its causes, in words.
fn words(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Which events a [`Watch`] leaves out.
#[derive(Debug, Clone, Copy)]
pub(super) enum Skip {
    /// Puts: only deletions are reported.
    Puts,
    /// Deletions: only puts are reported.
    Deletes,
}

/// One watch on its own gRPC stream; dropping it ends the stream.
pub(super) struct Watch {
    /// Kept open: etcd keeps a watch for as long as its request stream lives.
    _requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
    /// etcd's first message (read when the watch was opened), until handed out.
    created: Option<WatchResponse>,
}

impl Watch {
    /// The next message; `None` when etcd ended the stream.
    pub(super) async fn message(&mut self) -> Result<Option<WatchResponse>, CallError> {
        if let Some(first) = self.created.take() {
            return Ok(Some(first));
        }
        Ok(self.responses.message().await?)
    }
}

/// A lease's keep-alive stream.
pub(super) struct KeepAlive {
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl KeepAlive {
    /// Restarts the lease's TTL; etcd's answer is its new TTL in seconds,
    /// zero or less when the lease has ended.
    pub(super) async fn renew(&mut self) -> Result<i64, CallError> {
        if self.requests.send(LeaseKeepAliveRequest { id: self.id }).await.is_err() {
            return Err(CallError::StreamEnded("lease keep-alive"));
        }
        Ok(self.next().await?.ttl)
    }

    async fn next(&mut self) -> Result<LeaseKeepAliveResponse, CallError> {
        self.responses.message().await?.ok_or(CallError::StreamEnded("lease keep-alive"))
    }
}

/// The end of the range of every key that starts with `prefix`: `prefix`
/// with its last byte below 0xff incremented (and what follows cut off), or
/// `\0` (no end) when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// A condition of a transaction, on one key (or every key under a prefix).
#[derive(Debug, Clone)]
pub(super) struct Cond(Compare);

impl Cond {
    fn equal(key: &[u8], target: CompareTarget, value: TargetUnion) -> Self {
        Cond(Compare {
            result: CompareResult::Equal as i32,
            target: target as i32,
            key: key.to_vec(),
            range_end: Vec::new(),
            target_union: Some(value),
        })
    }

    /// `key` exists with this create revision.
    pub(super) fn created_at(key: &[u8], rev: i64) -> Self {
        Cond::equal(key, CompareTarget::Create, TargetUnion::CreateRevision(rev))
    }

    /// `key` was last written at this revision.
    pub(super) fn modified_at(key: &[u8], rev: i64) -> Self {
        Cond::equal(key, CompareTarget::Mod, TargetUnion::ModRevision(rev))
    }

    /// `key` is attached to lease `lease`.
    pub(super) fn on_lease(key: &[u8], lease: i64) -> Self {
        Cond::equal(key, CompareTarget::Lease, TargetUnion::Lease(lease))
    }

    /// No key starts with `prefix`.
    pub(super) fn none_under(prefix: &[u8]) -> Self {
        let mut cond = Cond::equal(prefix, CompareTarget::Version, TargetUnion::Version(0));
        cond.0.range_end = prefix_end(prefix);
        cond
    }
}

/// A read: one key, every key under a prefix, or a range, with options.
#[derive(Debug, Clone)]
pub(super) struct Get(RangeRequest);

impl Get {
    /// The key `key`.
    pub(super) fn key(key: &[u8]) -> Self {
        Get(RangeRequest { key: key.to_vec(), ..RangeRequest::default() })
    }

    /// Every key that starts with `prefix`.
    pub(super) fn prefix(prefix: &[u8]) -> Self {
        Get(RangeRequest { key: prefix.to_vec(), range_end: prefix_end(prefix), ..RangeRequest::default() })
    }

    /// Every key in `[start, end)`.
    pub(super) fn range(start: Vec<u8>, end: Vec<u8>) -> Self {
        Get(RangeRequest { key: start, range_end: end, ..RangeRequest::default() })
    }

    /// Sorted by `target`, in `order`.
    pub(super) fn sorted(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.0.sort_target = target as i32;
        self.0.sort_order = order as i32;
        self
    }

    /// At most `n` keys.
    pub(super) fn limit(mut self, n: i64) -> Self {
        self.0.limit = n;
        self
    }

    /// Keys without values.
    pub(super) fn keys_only(mut self) -> Self {
        self.0.keys_only = true;
        self
    }

    /// Only the number of keys.
    pub(super) fn count_only(mut self) -> Self {
        self.0.count_only = true;
        self
    }

    /// Only keys created at or before revision `rev`.
    pub(super) fn created_until(mut self, rev: i64) -> Self {
        self.0.max_create_revision = rev;
        self
    }

    /// Only keys last written at or after revision `rev`.
    pub(super) fn modified_since(mut self, rev: i64) -> Self {
        self.0.min_mod_revision = rev;
        self
    }

    /// As the store was at revision `rev`.
    pub(super) fn at_revision(mut self, rev: i64) -> Self {
        self.0.revision = rev;
        self
    }
}

/// A write in a transaction.
#[derive(Debug, Clone)]
pub(super) struct Write(request_op::Request);

impl Write {
    /// Puts `value` at `key`, attached to lease `lease`.
    pub(super) fn put(key: &[u8], value: Vec<u8>, lease: i64) -> Self {
        Write(request_op::Request::RequestPut(PutRequest { key: key.to_vec(), value, lease, ..PutRequest::default() }))
    }

    /// Rewrites `key` with its value unchanged, attached to lease `lease`
    /// (a new mod revision).
    pub(super) fn touch(key: &[u8], lease: i64) -> Self {
        let put = PutRequest { key: key.to_vec(), lease, ignore_value: true, ..PutRequest::default() };
        Write(request_op::Request::RequestPut(put))
    }

    /// Deletes `key`.
    pub(super) fn delete(key: &[u8]) -> Self {
        Write(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..DeleteRangeRequest::default()
        }))
    }
}

/// The branch of a transaction an operation runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Branch {
    /// When every condition holds (always, without conditions).
    Then,
    /// When a condition fails.
    Else,
}

/// A read added to a [`Txn`]: where its answer is in the [`TxnAnswer`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Read {
    branch: Branch,
    index: usize,
}

/// A transaction: conditions, and the operations of each branch.
#[derive(Debug, Clone, Default)]
pub(super) struct Txn {
    req: TxnRequest,
}

impl Txn {
    /// A transaction without conditions: its [`Branch::Then`] runs.
    pub(super) fn new() -> Self {
        Txn::default()
    }

    /// A transaction whose [`Branch::Then`] runs when every condition holds.
    pub(super) fn when(conditions: impl IntoIterator<Item = Cond>) -> Self {
        Txn { req: TxnRequest { compare: conditions.into_iter().map(|c| c.0).collect(), ..TxnRequest::default() } }
    }

    fn ops(&mut self, branch: Branch) -> &mut Vec<RequestOp> {
        match branch {
            Branch::Then => &mut self.req.success,
            Branch::Else => &mut self.req.failure,
        }
    }

    /// Adds a read to `branch`; its answer is [`TxnAnswer::range`] of the handle.
    pub(super) fn read(&mut self, branch: Branch, get: Get) -> Read {
        let ops = self.ops(branch);
        ops.push(RequestOp { request: Some(request_op::Request::RequestRange(get.0)) });
        Read { branch, index: ops.len() - 1 }
    }

    /// Adds a write to `branch`.
    pub(super) fn write(&mut self, branch: Branch, write: Write) {
        self.ops(branch).push(RequestOp { request: Some(write.0) });
    }

    /// [`Txn::write`], chained.
    pub(super) fn with(mut self, branch: Branch, write: Write) -> Self {
        self.write(branch, write);
        self
    }

    /// One transaction that runs each of `txns` as a nested transaction
    /// (etcd 3.3 and later); [`TxnAnswer::nested`] splits its answer.
    pub(super) fn batch<'a>(txns: impl IntoIterator<Item = &'a Txn>) -> Txn {
        let nested =
            txns.into_iter().map(|t| RequestOp { request: Some(request_op::Request::RequestTxn(t.req.clone())) });
        Txn { req: TxnRequest { success: nested.collect(), ..TxnRequest::default() } }
    }
}

/// A transaction's answer.
#[derive(Debug)]
pub(super) struct TxnAnswer {
    /// Whether its conditions held ([`Branch::Then`] ran).
    pub(super) succeeded: bool,
    /// The store revision it ran at: for one that wrote, the revision of its
    /// writes (the create revision of the keys it created).
    pub(super) revision: i64,
    /// The answers of the operations of the branch that ran, in order.
    responses: Vec<ResponseOp>,
}

impl TxnAnswer {
    fn new(resp: TxnResponse, revision: i64) -> Self {
        TxnAnswer { succeeded: resp.succeeded, revision, responses: resp.responses }
    }

    /// The answer of `read`; `None` when its branch did not run.
    pub(super) fn range(&self, read: Read) -> Option<&RangeResponse> {
        if (read.branch == Branch::Then) != self.succeeded {
            return None;
        }
        match self.responses.get(read.index)?.response.as_ref()? {
            response_op::Response::ResponseRange(r) => Some(r),
            _ => None,
        }
    }

    /// The keys `read` found (none when its branch did not run).
    pub(super) fn kvs(&self, read: Read) -> &[KeyValue] {
        self.range(read).map_or(&[], |r| &r.kvs)
    }

    /// The first key `read` found.
    pub(super) fn first(&self, read: Read) -> Option<&KeyValue> {
        self.kvs(read).first()
    }

    /// The number of keys `read` matched (zero when its branch did not run).
    pub(super) fn count(&self, read: Read) -> i64 {
        self.range(read).map_or(0, |r| r.count)
    }

    /// The answers of the nested transactions of a [`Txn::batch`], in its
    /// order, each at the batch's revision.
    pub(super) fn nested(self) -> Result<Vec<TxnAnswer>, CallError> {
        let revision = self.revision;
        self.responses
            .into_iter()
            .map(|op| match op.response {
                Some(response_op::Response::ResponseTxn(t)) => Ok(TxnAnswer::new(t, revision)),
                _ => Err(CallError::Malformed("an answer that is not a transaction's")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! The builder's handles and the answer's branch check, without etcd.

    use super::*;

    fn range_answer(kvs: Vec<KeyValue>, count: i64) -> ResponseOp {
        let range = RangeResponse { kvs, count, ..RangeResponse::default() };
        ResponseOp { response: Some(response_op::Response::ResponseRange(range)) }
    }

    fn kv(key: &[u8]) -> KeyValue {
        KeyValue { key: key.to_vec(), ..KeyValue::default() }
    }

    #[test]
    fn a_prefix_ends_after_its_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"a\0b"), b"a\0c");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn a_read_is_answered_by_its_own_handle_only_in_the_branch_that_ran() {
        let mut txn = Txn::when([Cond::none_under(b"q")]);
        txn.write(Branch::Then, Write::put(b"q1", Vec::new(), 7));
        txn.write(Branch::Else, Write::put(b"q1", Vec::new(), 7));
        let first = txn.read(Branch::Else, Get::prefix(b"q").limit(1));
        let count = txn.read(Branch::Else, Get::prefix(b"q").count_only());
        assert_eq!(txn.req.failure.len(), 3);
        let put = ResponseOp { response: Some(response_op::Response::ResponsePut(Default::default())) };
        let failed = TxnAnswer {
            succeeded: false,
            revision: 9,
            responses: vec![put.clone(), range_answer(vec![kv(b"q0")], 0), range_answer(vec![], 2)],
        };
        assert_eq!(failed.first(first).map(|kv| kv.key.as_slice()), Some(&b"q0"[..]));
        assert_eq!(failed.count(count), 2);
        let succeeded = TxnAnswer { succeeded: true, revision: 9, responses: vec![put] };
        assert!(succeeded.first(first).is_none(), "the else branch did not run");
        assert_eq!(succeeded.count(count), 0);
    }

    #[test]
    fn a_batch_nests_each_transaction_and_splits_the_answer_at_the_batch_revision() {
        let (mut a, b) = (Txn::new(), Txn::when([Cond::created_at(b"k", 3)]));
        let read = a.read(Branch::Then, Get::key(b"x"));
        let batch = Txn::batch([&a, &b]);
        assert_eq!(batch.req.success.len(), 2);
        let nested = |succeeded, responses| ResponseOp {
            response: Some(response_op::Response::ResponseTxn(TxnResponse { succeeded, responses, header: None })),
        };
        let answer = TxnAnswer {
            succeeded: true,
            revision: 12,
            responses: vec![nested(true, vec![range_answer(vec![kv(b"x")], 1)]), nested(false, vec![])],
        };
        let answers = answer.nested().expect("two transactions' answers");
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0].first(read).map(|kv| kv.key.as_slice()), Some(&b"x"[..]));
        assert!(!answers[1].succeeded);
        assert!(answers.iter().all(|a| a.revision == 12));
        let bad = TxnAnswer { succeeded: true, revision: 1, responses: vec![range_answer(vec![], 0)] };
        assert!(matches!(bad.nested(), Err(CallError::Malformed(_))));
    }
}
