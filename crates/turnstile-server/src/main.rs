//! `turnstiled`: parses flags, opens the backend, binds the listeners, prints
//! one line with the bound addresses on stdout, and serves until SIGTERM or
//! SIGINT, then shuts down gracefully and exits 0.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use turnstile_server::backend::etcd::EtcdBackend;
use turnstile_server::backend::memory::MemoryBackend;
use turnstile_server::backend::Backend;
use turnstile_server::config::{BackendKind, Config};
use turnstile_server::security::Security;
use turnstile_server::server::{run_secured, Listeners};
use turnstile_server::telemetry::{init_logging, Metrics};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate()?;
    init_logging(config.log_format, &config.log).map_err(anyhow::Error::msg)?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    // Before the backend opens: a bad file stops the start having changed nothing.
    let security = Security::load(&config)?;
    match config.backend {
        BackendKind::Memory => {
            let backend =
                Arc::new(MemoryBackend::start(&config, metrics.clone()).context("opening the memory backend")?);
            let held = backend.clone();
            serve_with(backend, "memory", Box::new(move || Some(held.leases_held())), &config, metrics, security).await
        }
        BackendKind::Etcd => {
            let backend =
                Arc::new(EtcdBackend::connect(&config, metrics.clone()).await.context("opening the etcd backend")?);
            // The leases granted or last renewed through this sidecar (docs/etcd.md).
            let held = backend.clone();
            serve_with(backend, "etcd", Box::new(move || Some(held.leases_held())), &config, metrics, security).await
        }
    }
}

/// Binds the listeners, announces them, and serves `backend` until a signal.
async fn serve_with<B: Backend>(
    backend: Arc<B>,
    name: &'static str,
    leases_held: Box<dyn Fn() -> Option<usize> + Send + Sync>,
    config: &Config,
    metrics: Arc<Metrics>,
    security: Security,
) -> anyhow::Result<()> {
    let grpc = TcpListener::bind(config.listen).await.with_context(|| format!("binding --listen {}", config.listen))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding --http-listen {}", config.http_listen))?;
    let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    let shutdown = shutdown_signal().context("installing the SIGTERM/SIGINT handlers")?;
    // Before the ready line, so that a SIGHUP sent after it is never fatal.
    reload_on_sighup(security.clone(), metrics.clone()).context("installing the SIGHUP handler")?;
    let scheme = if security.tls.is_some() { "TLS" } else { "plaintext" };
    let auth = if config.auth_token_file.is_some() { "bearer tokens" } else { "no tokens" };
    tracing::info!(grpc = %grpc_addr, "gRPC over {scheme}, {auth}");
    let open = security.tls.is_none() || config.auth_token_file.is_none();
    if open && !config.listen.ip().is_loopback() {
        tracing::warn!(grpc = %grpc_addr, "--insecure: gRPC on a non-loopback address over {scheme} with {auth}");
    }
    tracing::info!(grpc = %grpc_addr, http = %http_addr, backend = name, "turnstiled listening");
    // One machine-readable line, so scripts and tests that bind port 0 learn the ports.
    println!("turnstiled listening grpc={grpc_addr} http={http_addr}");
    std::io::stdout().flush()?;
    run_secured(backend, config, metrics, leases_held, Listeners { grpc, http }, security, shutdown).await?;
    Ok(())
}

/// Re-reads the TLS and token files on every SIGHUP, from now on.
#[cfg(unix)]
fn reload_on_sighup(security: Security, metrics: Arc<Metrics>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    // Lives as long as the process: it ends with the runtime.
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: re-reading the TLS and token files");
            security.reload(&metrics);
        }
    });
    Ok(())
}

/// No SIGHUP here: the files are read once.
#[cfg(not(unix))]
fn reload_on_sighup(_: Security, _: Arc<Metrics>) -> std::io::Result<()> {
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal that arrives
/// right after the ready line is not fatal) and returns a future that
/// completes on the first of them.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received");
        }
    })
}
