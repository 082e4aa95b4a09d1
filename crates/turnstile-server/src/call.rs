//! What the server does around every call, between the transport and the
//! handlers ([`CallLayer`]):
//!
//! - **The call's deadline.** A client's `grpc-timeout` becomes a
//!   [`CallDeadline`] in the request's extensions, which the Acquire handler
//!   uses to end a wait a little before the client gives up, so that nothing
//!   is granted into a call already abandoned. A call still running at its
//!   deadline is answered `DEADLINE_EXCEEDED` (what gRPC clients expect;
//!   tonic's own timeout answers `CANCELLED`), a few milliseconds before
//!   tonic's timer would, and its handler is dropped, which cancels its wait.
//! - **A grant that never reached the wire is taken back (G6).** A handler
//!   that hands out a new lease attaches a [`TakeBack`] to its response. The
//!   response body is then watched: unless the body was sent to its end
//!   (trailers included), because the stream was reset, the connection
//!   went, or the response was dropped, the lease is released at once and
//!   passes on to the next waiter. A reply that was sent and lost afterwards
//!   is not seen here: that lease runs out, and the owner's retry gets the
//!   same lease back (G5).
//! - **A request too large to decode** is refused by tonic's codec with
//!   `OUT_OF_RANGE` before any handler runs; docs/design.md answers every
//!   limit breach with `RESOURCE_EXHAUSTED`, so it is answered that way here,
//!   naming the call that was too large (and, for a Release, its `result`).
//! - **A request that cannot be decoded** (malformed protobuf, or malformed
//!   gRPC framing) is refused by tonic's codec with `INTERNAL`; it is the
//!   client's fault, so it is answered `INVALID_ARGUMENT` here (G8).
//! - **Calls in progress are bounded** (`--max-concurrent-calls`, across all
//!   connections): one more is shed at once with `RESOURCE_EXHAUSTED`
//!   (`OVERLOADED`, with a `RetryInfo`). Release, Renew and ForceRelease are
//!   never counted nor shed, so a lock can always be freed and kept; health
//!   checks and reflection (which grpcurl needs first) neither.
//!   An Acquire that waits gives its place back before it parks ([`CallSlot`]):
//!   parked waiters are bounded by `--max-waiters` instead, and never crowd
//!   out short calls. A call holds its place until its response has ended.
//! - **Large responses in flight are bounded** ([`ResponseBudget`],
//!   `--max-response-bytes-in-flight`): a handler reserves the bytes of a
//!   shared result or a ListLocks page, and the reservation ([`ResponseHold`])
//!   is held until the response body has been handed to the connection to
//!   its end, or dropped. So however many responses a client leaves unread,
//!   at most that many bytes of them are encoded at once.
//! - **A connection's calls are counted** for its idle timeout
//!   ([`crate::listen`]): from the request until the response body ends.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::http::{HeaderValue, Request, Response};
use tonic::codegen::{Bytes, Service};
use tonic::Status;

/// How much earlier than the client's deadline this layer answers
/// `DEADLINE_EXCEEDED`, so that it answers rather than tonic's own timer
/// (tokio's timers have a resolution of one millisecond).
const AHEAD_OF_TONIC: Duration = Duration::from_millis(5);

/// The instant a call's `grpc-timeout` ends, on tokio's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDeadline(pub Instant);

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`), as the gRPC over HTTP/2 spec says.
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Releases a lease whose grant did not reach the wire. Attach it to the
/// response's extensions; [`CallLayer`] runs it unless the body was sent.
#[derive(Clone)]
pub struct TakeBack(Arc<Mutex<Option<Undo>>>);

/// What a [`TakeBack`] runs.
type Undo = Box<dyn FnOnce() + Send>;

impl TakeBack {
    /// A take-back that runs `undo` (once) if the response is not delivered.
    pub fn new(undo: impl FnOnce() + Send + 'static) -> Self {
        TakeBack(Arc::new(Mutex::new(Some(Box::new(undo)))))
    }

    fn run(&self) {
        let undo = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(undo) = undo {
            undo();
        }
    }

    fn disarm(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl std::fmt::Debug for TakeBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TakeBack")
    }
}

/// Runs its [`TakeBack`] when dropped, unless disarmed first.
struct Armed(Option<TakeBack>);

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.run();
        }
    }
}

/// A short call's place among `--max-concurrent-calls`, in the request's
/// extensions. An Acquire that is about to park gives it back ([`CallSlot::release`]).
#[derive(Debug, Clone)]
pub struct CallSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl CallSlot {
    /// Gives the place back now (the call goes on, uncounted).
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Whether `path` is never counted against nor shed by the concurrency
/// limit: Release and Renew (locks must always be freed and kept),
/// ForceRelease (an operator must be able to free a key under overload),
/// health, and reflection (grpcurl asks it before every call, so without it
/// an operator by hand could neither release nor force-release).
fn never_shed(path: &str) -> bool {
    matches!(
        path,
        "/turnstile.v1.LockService/Release"
            | "/turnstile.v1.LockService/Renew"
            | "/turnstile.v1.LockService/ForceRelease"
    ) || path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Room for the bytes of large responses in flight, across all connections
/// (`--max-response-bytes-in-flight`).
#[derive(Debug, Clone)]
pub struct ResponseBudget {
    room: Arc<Semaphore>,
    total: usize,
}

impl ResponseBudget {
    /// A budget of `total` bytes (at most `u32::MAX`).
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, u32::MAX as usize);
        ResponseBudget { room: Arc::new(Semaphore::new(total)), total }
    }

    /// The budget's size.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.room.available_permits()
    }

    fn permits(&self, bytes: usize) -> u32 {
        // A response larger than the whole budget waits for all of it.
        u32::try_from(bytes.clamp(1, self.total)).unwrap_or(u32::MAX)
    }

    /// Waits (first come, first served) until `bytes` are free, and reserves them.
    pub async fn reserve(&self, bytes: usize) -> ResponseHold {
        let permit = self.room.clone().acquire_many_owned(self.permits(bytes)).await.ok();
        ResponseHold(Arc::new(Mutex::new(permit)))
    }

    /// Reserves `bytes` if they are free now.
    pub fn try_reserve(&self, bytes: usize) -> Option<ResponseHold> {
        let permit = self.room.clone().try_acquire_many_owned(self.permits(bytes)).ok()?;
        Some(ResponseHold(Arc::new(Mutex::new(Some(permit)))))
    }
}

/// Bytes of a [`ResponseBudget`] reserved for one response. Put it in the
/// response's extensions: [`CallLayer`] holds it until the body has ended.
#[derive(Debug, Clone)]
pub struct ResponseHold(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl ResponseHold {
    /// Gives back what is reserved beyond `bytes`.
    pub fn shrink_to(&self, bytes: usize) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = held.as_mut() {
            let excess = p.num_permits().saturating_sub(bytes.max(1));
            drop(p.split(excess));
        }
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, |p| p.num_permits())
    }
}

/// The [`tower::Layer`] of this module: deadlines, take-backs, size
/// refusals, the concurrency limit, and what a response holds until it ends.
#[derive(Debug, Clone)]
pub struct CallLayer {
    limits: SizeLimits,
    calls: Option<(Arc<Semaphore>, usize)>,
}

/// What a too-large request is told.
#[derive(Debug, Clone, Copy)]
struct SizeLimits {
    max_result: usize,
    max_request: usize,
}

impl CallLayer {
    /// A layer for a server whose Release results may be `max_result` bytes
    /// and whose requests may be `max_request` bytes in all.
    pub fn new(max_result: usize, max_request: usize) -> Self {
        CallLayer { limits: SizeLimits { max_result, max_request }, calls: None }
    }

    /// At most `max` calls in progress at once (Release, Renew and health
    /// not counted); one more is shed with `RESOURCE_EXHAUSTED`.
    pub fn with_max_calls(mut self, max: usize) -> Self {
        self.calls = Some((Arc::new(Semaphore::new(max)), max));
        self
    }
}

impl<S> tower::Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> CallService<S> {
        CallService { inner, limits: self.limits, calls: self.calls.clone() }
    }
}

/// The service [`CallLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct CallService<S> {
    inner: S,
    limits: SizeLimits,
    calls: Option<(Arc<Semaphore>, usize)>,
}

impl<S, B> Service<Request<B>> for CallService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let timeout = req.headers().get("grpc-timeout").and_then(parse_grpc_timeout);
        let deadline = timeout.map(|t| Instant::now() + t);
        if let Some(d) = deadline {
            req.extensions_mut().insert(CallDeadline(d));
        }
        let method = req.uri().path().to_owned();
        let active = req.extensions().get::<crate::listen::ConnInfo>().map(|c| c.activity.call());
        let slot = match &self.calls {
            Some((room, max)) if !never_shed(&method) => match room.clone().try_acquire_owned() {
                Ok(permit) => Some(CallSlot(Arc::new(Mutex::new(Some(permit))))),
                Err(_) => {
                    let shed = crate::error::overloaded(*max).into_http();
                    return Box::pin(async move {
                        drop(active);
                        Ok(shed)
                    });
                }
            },
            _ => None,
        };
        if let Some(s) = &slot {
            req.extensions_mut().insert(s.clone());
        }
        let limits = self.limits;
        let call = self.inner.call(req);
        Box::pin(async move {
            let res = match deadline {
                None => call.await?,
                Some(d) => match tokio::time::timeout_at(d.checked_sub(AHEAD_OF_TONIC).unwrap_or(d), call).await {
                    Ok(res) => res?,
                    Err(_) => {
                        let t = timeout.unwrap_or_default();
                        return Ok(Status::deadline_exceeded(format!(
                            "deadline exceeded: the call's grpc-timeout of {t:?} ran out before it finished"
                        ))
                        .into_http());
                    }
                },
            };
            let holds = Holds { active, slot, bytes: None };
            Ok(guard_delivery(undecodable_is_invalid(too_large_is_exhausted(res, &method, limits)), holds))
        })
    }
}

/// Turns the codec's `OUT_OF_RANGE` for an oversized request into
/// `RESOURCE_EXHAUSTED` naming what was too large. Only the codec answers
/// `OUT_OF_RANGE` here.
fn too_large_is_exhausted(mut res: Response<Body>, method: &str, limits: SizeLimits) -> Response<Body> {
    if res.headers().get("grpc-status") != Some(&HeaderValue::from(tonic::Code::OutOfRange as i32)) {
        return res;
    }
    let name = method.rsplit('/').next().unwrap_or(method);
    let status = if method == "/turnstile.v1.LockService/Release" {
        let message = format!(
            "Release request too large: result may be at most {} bytes (--max-result-bytes); the release did not happen",
            limits.max_result
        );
        let meta = [("field", "result".to_owned()), ("limit", limits.max_result.to_string())];
        crate::error::status_with_info(tonic::Code::ResourceExhausted, message, "RESULT_TOO_LARGE", &meta)
    } else {
        let message = if method.starts_with("/turnstile.v1.LockService/") {
            format!("{name} request too large: it may be at most {} bytes", limits.max_request)
        } else {
            format!("{name} request too large for {method}")
        };
        let meta = [("method", method.to_owned())];
        crate::error::status_with_info(tonic::Code::ResourceExhausted, message, "REQUEST_TOO_LARGE", &meta)
    };
    // The codec's status travelled as headers only (no body): replace them.
    let (parts, _) = status.into_http::<Body>().into_parts();
    for (name, value) in parts.headers.iter() {
        if name.as_str().starts_with("grpc-") {
            res.headers_mut().insert(name.clone(), value.clone());
        }
    }
    res
}

/// tonic's codec answers a request it cannot decode with `INTERNAL` before
/// any handler runs: malformed protobuf or a string field that is not UTF-8,
/// and malformed gRPC framing (a compressed flag without `grpc-encoding`, or
/// not 0 or 1; a body that ends inside a message; no message at all). It is
/// bad input, so it is answered `INVALID_ARGUMENT` (G8), naming the field
/// when the decoder does (`AcquireRequest.key: invalid string value`), the
/// `request` otherwise. Only those messages of the codec's are turned, and
/// only without details (turnstile's own statuses always carry some): any
/// other `INTERNAL` stays as it is.
fn undecodable_is_invalid(mut res: Response<Body>) -> Response<Body> {
    if res.headers().get("grpc-status") != Some(&HeaderValue::from(tonic::Code::Internal as i32))
        || res.headers().contains_key("grpc-status-details-bin")
    {
        return res;
    }
    let Some(status) = Status::from_header_map(res.headers()) else { return res };
    let Some(invalid) = why_undecodable(status.message()) else { return res };
    let (parts, _) = Status::from(invalid).into_http::<Body>().into_parts();
    for (name, value) in parts.headers.iter() {
        if name.as_str().starts_with("grpc-") {
            res.headers_mut().insert(name.clone(), value.clone());
        }
    }
    res
}

/// What is wrong with the request, if `message` is one of tonic's codec's
/// for a request it cannot decode (tonic 0.14's texts, matched exactly).
fn why_undecodable(message: &str) -> Option<crate::error::InvalidArgument> {
    const DECODE: &str = "failed to decode Protobuf message: ";
    const FLAG: &str = "protocol error: received message with invalid compression flag: ";
    let invalid = |field: &str, reason: String| crate::error::InvalidArgument { field: request_field(field), reason };
    if let Some(why) = message.strip_prefix(DECODE) {
        let field = why
            .split_once(": ")
            .and_then(|(path, _)| path.rsplit('.').next())
            .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or("request");
        return Some(invalid(field, format!("cannot be decoded ({why})")));
    }
    if let Some(flag) =
        message.strip_prefix(FLAG).and_then(|m| m.strip_suffix(" (valid flags are 0 and 1), while sending request"))
    {
        return Some(invalid(
            "request",
            format!(
                "its gRPC message has compressed flag {flag}; the flag must be 0 (not compressed) or 1 (compressed)"
            ),
        ));
    }
    let reason = match message {
        "protocol error: received message with compressed-flag but no grpc-encoding was specified" => {
            "its gRPC message has the compressed flag set but the call has no grpc-encoding header"
        }
        "Unexpected EOF decoding stream." => {
            "the request body ended before the end of its message: a gRPC frame is cut short (the 5-byte header, or fewer bytes than its declared length)"
        }
        "Missing request message." => "the request body has no message: it ended before any gRPC frame",
        _ => return None,
    };
    Some(invalid("request", reason.to_owned()))
}

/// A request field name of turnstile.v1 as a `'static` string (`request`
/// when the decoder named none of them).
fn request_field(field: &str) -> &'static str {
    const FIELDS: [&str; 11] = [
        "key",
        "owner",
        "ttl",
        "wait_timeout",
        "share_result",
        "fencing_token",
        "result",
        "prefix",
        "page_size",
        "page_token",
        "request",
    ];
    FIELDS.into_iter().find(|f| *f == field).unwrap_or("request")
}

/// What a call holds until its response body has ended (or is dropped).
#[derive(Debug, Default)]
struct Holds {
    /// Counted among its connection's calls.
    active: Option<crate::listen::ActiveCall>,
    /// Its place among `--max-concurrent-calls`.
    slot: Option<CallSlot>,
    /// Its bytes of the [`ResponseBudget`].
    bytes: Option<ResponseHold>,
}

/// Watches the body of a response: a [`TakeBack`] runs unless it is sent
/// to its end, and `holds` (with a [`ResponseHold`] of the response) are
/// given back when it ends.
fn guard_delivery(mut res: Response<Body>, mut holds: Holds) -> Response<Body> {
    let take_back = res.extensions_mut().remove::<TakeBack>();
    holds.bytes = res.extensions_mut().remove::<ResponseHold>();
    if take_back.is_none() && holds.active.is_none() && holds.slot.is_none() && holds.bytes.is_none() {
        return res;
    }
    res.map(|body| Body::new(Delivered { inner: body, armed: Armed(take_back), holds: Some(holds) }))
}

/// A response body that disarms its take-back once sent to the end, and
/// gives back what its call holds when it ends.
struct Delivered {
    inner: Body,
    armed: Armed,
    holds: Option<Holds>,
}

impl http_body::Body for Delivered {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let done = match &polled {
            // Trailers are the last frame the transport asks for.
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            Poll::Ready(None) => true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        if done {
            if let Some(t) = self.armed.0.take() {
                t.disarm();
            }
            self.holds = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    /// What frees or keeps a lock, and what an operator needs to do so by
    /// hand, is never shed; short reads and acquires are.
    #[test]
    fn releases_renewals_force_releases_health_and_reflection_are_never_shed() {
        for path in [
            "/turnstile.v1.LockService/Release",
            "/turnstile.v1.LockService/Renew",
            "/turnstile.v1.LockService/ForceRelease",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(super::never_shed(path), "{path} may be shed");
        }
        for path in [
            "/turnstile.v1.LockService/Acquire",
            "/turnstile.v1.LockService/GetLock",
            "/turnstile.v1.LockService/ListLocks",
        ] {
            assert!(!super::never_shed(path), "{path} is never shed");
        }
    }

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body::Body as _;

    use super::*;

    #[test]
    fn grpc_timeout_values_parse_as_the_spec_says() {
        let p = |s: &str| parse_grpc_timeout(&HeaderValue::from_str(s).expect("header"));
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("2M"), Some(Duration::from_secs(120)));
        assert_eq!(p("3S"), Some(Duration::from_secs(3)));
        assert_eq!(p("250m"), Some(Duration::from_millis(250)));
        assert_eq!(p("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(p("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S", " 1S"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    /// A call still running at its grpc-timeout is answered DEADLINE_EXCEEDED
    /// (tonic's own timer, a little later, would say CANCELLED), and its
    /// handler is dropped; the handler sees the deadline in its extensions.
    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_grpc_timeout_is_answered_deadline_exceeded() {
        use tower::{Layer, ServiceExt};
        let seen = Arc::new(Mutex::new(None));
        let seen2 = seen.clone();
        let slow = tower::service_fn(move |req: Request<()>| {
            *seen2.lock().expect("lock") = req.extensions().get::<CallDeadline>().copied();
            async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
            }
        });
        let start = Instant::now();
        let req = Request::builder().header("grpc-timeout", "100m").body(()).expect("request");
        let res = CallLayer::new(10, 100).layer(slow).oneshot(req).await.expect("answered");
        assert_eq!(res.headers().get("grpc-status"), Some(&HeaderValue::from(tonic::Code::DeadlineExceeded as i32)));
        assert_eq!(*seen.lock().expect("lock"), Some(CallDeadline(start + Duration::from_millis(100))));
        assert_eq!(Instant::now() - start, Duration::from_millis(95), "answered ahead of tonic's own timer");
    }

    /// The codec's OUT_OF_RANGE for an oversized request becomes
    /// RESOURCE_EXHAUSTED naming the call, and `result` only for a Release.
    #[tokio::test]
    async fn a_request_too_large_is_named_by_its_call() {
        use tower::{Layer, ServiceExt};
        let codec = tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Status::out_of_range("decoded message length too large").into_http())
        });
        let layered = CallLayer::new(1024, 66_560).layer(codec);
        for (path, says) in [
            ("/turnstile.v1.LockService/Release", "result may be at most 1024 bytes"),
            ("/turnstile.v1.LockService/Renew", "Renew request too large: it may be at most 66560 bytes"),
            ("/grpc.health.v1.Health/Check", "Check request too large for /grpc.health.v1.Health/Check"),
        ] {
            let req = Request::builder().uri(path).body(()).expect("request");
            let res = layered.clone().oneshot(req).await.expect("answered");
            let status = Status::from_header_map(res.headers()).expect("a status");
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{path}");
            assert!(status.message().contains(says), "{path}: {}", status.message());
            assert_eq!(status.message().contains("result"), path.ends_with("Release"), "{path}");
            use tonic_types::StatusExt;
            let reason = status.get_details_error_info().expect("ErrorInfo").reason;
            assert_eq!(reason, if path.ends_with("Release") { "RESULT_TOO_LARGE" } else { "REQUEST_TOO_LARGE" });
        }
    }

    /// A request the codec cannot decode is INVALID_ARGUMENT naming the field (G8).
    #[tokio::test]
    async fn an_undecodable_request_is_invalid_argument_naming_the_field() {
        use tower::{Layer, ServiceExt};
        let codec = tower::service_fn(|_: Request<()>| async {
            let s = Status::internal("failed to decode Protobuf message: AcquireRequest.key: invalid string value");
            Ok::<_, std::convert::Infallible>(s.into_http())
        });
        let req = Request::builder().uri("/turnstile.v1.LockService/Acquire").body(()).expect("request");
        let res = CallLayer::new(10, 100).layer(codec).oneshot(req).await.expect("answered");
        let status = Status::from_header_map(res.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("invalid key: cannot be decoded"), "{}", status.message());
    }

    /// Only the codec's own decode failures become INVALID_ARGUMENT: any
    /// other INTERNAL, or one carrying details (which the codec's never
    /// do), is left as it is.
    #[tokio::test]
    async fn an_internal_error_that_is_not_a_decode_failure_stays_internal() {
        use tower::{Layer, ServiceExt};
        let with_details = || {
            use tonic_types::{ErrorDetails, StatusExt};
            let details = ErrorDetails::with_error_info("BROKEN", "turnstile", std::collections::HashMap::new());
            Status::with_error_details(tonic::Code::Internal, "Missing request message.", details)
        };
        for s in [Status::internal("the lock table is broken"), Status::internal("Unexpected EOF"), with_details()] {
            let message = s.message().to_owned();
            let codec = tower::service_fn(move |_: Request<()>| {
                let s = s.clone();
                async move { Ok::<_, std::convert::Infallible>(s.into_http()) }
            });
            let req = Request::builder().uri("/turnstile.v1.LockService/Acquire").body(()).expect("request");
            let res = CallLayer::new(10, 100).layer(codec).oneshot(req).await.expect("answered");
            let status = Status::from_header_map(res.headers()).expect("a status");
            assert_eq!(status.code(), tonic::Code::Internal, "{message}");
            assert_eq!(status.message(), message);
        }
    }

    fn counting() -> (TakeBack, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (
            TakeBack::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
            }),
            n,
        )
    }

    fn with_take_back(body: Body, t: TakeBack) -> Response<Body> {
        let mut res = Response::new(body);
        res.extensions_mut().insert(t);
        guard_delivery(res, Holds::default())
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_the_grant_back() {
        let (t, n) = counting();
        let res = with_take_back(Body::new(http_body_util_full(b"grant")), t);
        drop(res);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_sent_to_its_end_keeps_the_grant() {
        let (t, n) = counting();
        let mut body = with_take_back(Body::new(http_body_util_full(b"grant")), t).into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            frame.expect("frame");
        }
        drop(body);
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }

    /// A one-frame body without trailers.
    fn http_body_util_full(bytes: &'static [u8]) -> impl http_body::Body<Data = Bytes, Error = Status> + Send {
        struct Full(Option<Bytes>);
        impl http_body::Body for Full {
            type Data = Bytes;
            type Error = Status;
            fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
                Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
            }
        }
        Full(Some(Bytes::from_static(bytes)))
    }
}
