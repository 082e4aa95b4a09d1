//! [`run`]: serves gRPC (LockService, health, reflection) and HTTP (metrics,
//! health probes) on given listeners until `shutdown` completes, then shuts
//! down gracefully: health NOT_SERVING, waiters answered UNAVAILABLE, new
//! calls refused, in-flight calls finished, backend state saved. The gRPC
//! port is guarded by [`Security`]: TLS and bearer tokens, when configured.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use turnstile_proto::v1::lock_service_server::LockServiceServer;

use crate::backend::Backend;
use crate::config::Config;
use crate::error::BackendError;
use crate::security::{Security, SecurityError};
use crate::service::LockServiceImpl;
use crate::telemetry::Metrics;
use crate::validate::Limits;

/// Decoding room for a request beyond its result: key, owner and framing.
const REQUEST_OVERHEAD: usize = 64 * 1024;

/// HTTP/2 flow-control windows the server grants each stream and each
/// connection: what a client may send before the server reads it.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

/// How long graceful shutdown waits for in-flight calls.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection descriptors could not be loaded.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
    /// The backend failed to shut down cleanly (e.g. the snapshot was not written).
    #[error("backend shutdown: {0}")]
    Backend(#[from] BackendError),
    /// The TLS or token files named in the config did not load.
    #[error(transparent)]
    Security(#[from] SecurityError),
}

/// The listeners [`run_secured`] serves on.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC: LockService, health, reflection.
    pub grpc: TcpListener,
    /// HTTP: metrics and probes.
    pub http: TcpListener,
}

/// State behind the HTTP endpoints.
struct Http<B> {
    backend: Arc<B>,
    metrics: Arc<Metrics>,
    leases_held: Box<dyn Fn() -> Option<usize> + Send + Sync>,
    serving: AtomicBool,
}

/// Serves until `shutdown` completes, then shuts down gracefully.
/// `leases_held` feeds the `turnstile_leases_held` gauge where the backend knows it.
/// TLS and tokens are loaded from the files `config` names, and not re-read:
/// [`run_secured`] takes a [`Security`] the caller can reload.
pub async fn run<B: Backend>(
    backend: Arc<B>,
    config: &Config,
    metrics: Arc<Metrics>,
    leases_held: Box<dyn Fn() -> Option<usize> + Send + Sync>,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let security = Security::load(config)?;
    run_secured(backend, config, metrics, leases_held, Listeners { grpc, http }, security, shutdown).await
}

/// As [`run`], with the gRPC port guarded by `security`, which the caller
/// keeps a clone of to reload (turnstiled does on SIGHUP).
pub async fn run_secured<B: Backend>(
    backend: Arc<B>,
    config: &Config,
    metrics: Arc<Metrics>,
    leases_held: Box<dyn Fn() -> Option<usize> + Send + Sync>,
    listeners: Listeners,
    security: Security,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Listeners { grpc, http } = listeners;
    let limits = Limits {
        default_ttl: config.default_ttl,
        ttl: backend.ttl_bounds(),
        max_wait: config.max_wait,
        max_result_bytes: config.max_result_bytes,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<LockServiceServer<LockServiceImpl<B>>>().await;
    // Nothing can be granted while recovering after a crash: NOT_SERVING
    // until grants resume (reads and renews are answered meanwhile).
    let mut recovery_watch = None;
    if let Some(left) = backend.recovery_left() {
        health.set_not_serving::<LockServiceServer<LockServiceImpl<B>>>().await;
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let health = health.clone();
        recovery_watch = Some(tokio::spawn(async move {
            tokio::time::sleep(left).await;
            health.set_serving::<LockServiceServer<LockServiceImpl<B>>>().await;
            health.set_service_status("", tonic_health::ServingStatus::Serving).await;
            tracing::info!("recovery over: granting again");
        }));
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(turnstile_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so that grpcurl and other reflection
            // clients can show BadRequest, ErrorInfo and RetryInfo in words.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let decode_limit = config.max_result_bytes + REQUEST_OVERHEAD;
    let service = LockServiceImpl::new(backend.clone(), limits, metrics.clone())
        .with_deadline_margin(config.deadline_margin)
        .with_response_budget(crate::call::ResponseBudget::new(config.max_response_bytes_in_flight))
        .with_access(security.access.clone());
    let lock_service = LockServiceServer::new(service)
        // Room for the largest result plus the rest of the request.
        .max_decoding_message_size(decode_limit);

    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
    let router = tonic::transport::Server::builder()
        // tonic leaves the number of streams unlimited unless told.
        .max_concurrent_streams(config.max_concurrent_streams)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(nonzero(config.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
        .layer(
            crate::call::CallLayer::new(config.max_result_bytes, decode_limit)
                .with_max_calls(config.max_concurrent_calls),
        )
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(lock_service);
    let grpc_stopped = async {
        let _ = grpc_stopped.await;
    };
    let timeouts = crate::listen::ConnTimeouts {
        max_connections: config.max_connections,
        handshake: config.handshake_timeout,
        idle: nonzero(config.idle_timeout),
    };
    let mut grpc_task = match &security.tls {
        None => {
            tokio::spawn(router.serve_with_incoming_shutdown(crate::listen::plaintext(grpc, timeouts), grpc_stopped))
        }
        Some(tls) => tokio::spawn(
            router.serve_with_incoming_shutdown(crate::tls::incoming(grpc, tls.clone(), timeouts), grpc_stopped),
        ),
    };

    let state = Arc::new(Http { backend: backend.clone(), metrics, leases_held, serving: AtomicBool::new(true) });
    let router = Router::new()
        .route("/metrics", get(metrics_handler::<B>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler::<B>))
        .with_state(state.clone());
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = tokio::spawn(async move {
        axum::serve(http, router)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });

    tokio::select! {
        () = shutdown => {}
        res = &mut grpc_task => {
            // The gRPC server ended on its own: an error.
            return match res {
                Ok(r) => r.map_err(ServeError::from),
                Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
            };
        }
    }
    tracing::info!("shutting down: refusing new calls, answering waiters, finishing in-flight calls");
    if let Some(w) = recovery_watch {
        w.abort();
    }
    state.serving.store(false, Ordering::Release);
    health.set_not_serving::<LockServiceServer<LockServiceImpl<B>>>().await;
    // "" is the server as a whole, which is what most probes ask about.
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    backend.close();
    let _ = stop_grpc.send(());
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut grpc_task).await {
        Ok(Ok(res)) => res?,
        Ok(Err(e)) => return Err(ServeError::Http(std::io::Error::other(e))),
        Err(_) => {
            tracing::warn!("in-flight calls did not finish within {DRAIN_TIMEOUT:?}; stopping anyway");
            grpc_task.abort();
        }
    }
    backend.shutdown().await?;
    let _ = stop_http.send(());
    if let Ok(Err(e)) = http_task.await {
        return Err(ServeError::Http(e));
    }
    tracing::info!("stopped");
    Ok(())
}

/// `/metrics`: OpenMetrics when the scraper asks for it (Prometheus does),
/// else the Prometheus text format, each with its Content-Type.
async fn metrics_handler<B: Backend>(
    State(s): State<Arc<Http<B>>>,
    headers: axum::http::HeaderMap,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    if let Some(n) = (s.leases_held)() {
        s.metrics.leases_held.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let m = &s.metrics;
    let left = s.backend.recovery_left().map_or(0, crate::error::ceil_secs);
    m.recovery_seconds_left.set(i64::try_from(left).unwrap_or(i64::MAX));
    m.keys_held_back.set(i64::try_from(s.backend.keys_held_back()).unwrap_or(i64::MAX));
    let writes = s.backend.state_writes();
    m.state_writes.inc_by(writes.saturating_sub(m.state_writes.get()));
    // Down: the backend cannot serve for a reason other than crash recovery
    // (its store unreachable or unwritable).
    let down = s.backend.unready().is_some() && s.backend.recovery_left().is_none();
    m.backend_up.set(i64::from(!down));
    let wants_openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(axum::http::header::CONTENT_TYPE, crate::telemetry::OPENMETRICS)], s.metrics.encode())
    } else {
        ([(axum::http::header::CONTENT_TYPE, crate::telemetry::PROMETHEUS_TEXT)], s.metrics.encode_text())
    }
}

async fn ready_handler<B: Backend>(State(s): State<Arc<Http<B>>>) -> (StatusCode, String) {
    if !s.serving.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    if let Some(why) = s.backend.unready() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"));
    }
    match s.backend.degraded() {
        // Still ready: reads and renews are answered, waiters queue.
        Some(why) => (StatusCode::OK, format!("ready, {why}\n")),
        None => (StatusCode::OK, "ready\n".into()),
    }
}
