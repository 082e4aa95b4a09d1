//! `order-callback-worker`: a sample that solves docs/design.md problem 3, the
//! duplicate order callback, with a per-order turnstile lease and a fenced
//! write.
//!
//! An at-least-once queue delivers the "order placed" callback over HTTP,
//! sometimes twice and at the same moment, and sometimes before the order's
//! own transaction has committed. Each delivery takes the lease `order:{id}`
//! (duplicates wait in turnstile's queue and are woken when it frees), then,
//! in one SQLite transaction: checks that the order exists (else `409`, retry
//! later, nothing counted), claims the order row with the lease's fencing
//! token (refused if a newer holder has written it), and if the callback is
//! not DONE yet bumps the statistics and marks it DONE. A worker that dies
//! holding a lease frees the order after the ttl; one that stalls past its
//! ttl finds its write refused.
//!
//! # Layout
//! - `main.rs`: flags, logging, start-up (one ready line on stdout with the
//!   bound address), serving until SIGTERM/SIGINT.
//! - `config.rs`: the clap flags and their validation.
//! - `api.rs`: routes and thin handlers.
//! - `deliver.rs`: one delivery: lease, simulated work, the write.
//! - `store.rs`: SQLite tables and the one-transaction fenced write.
//! - `inflight.rs`: the leases this process holds now (`GET /leases`).
//! - `error.rs`: API errors and their HTTP mapping.

mod api;
mod config;
mod deliver;
mod error;
mod inflight;
mod store;

use std::io::{IsTerminal, Write};

use anyhow::Context;
use clap::Parser;
use turnstile_client::Client;

use crate::config::Config;
use crate::deliver::Worker;
use crate::inflight::Inflight;
use crate::store::Store;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate()?;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log).context("--log")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let store = Store::open(&config.db).with_context(|| format!("opening --db {}", config.db.display()))?;
    // Lazy: the worker may start before its turnstiled sidecar does.
    let client = Client::builder(config.turnstile_addr.clone())
        .ttl(config.lock_ttl)
        .connect_lazy()
        .context("setting up the turnstile client")?;
    let worker = Worker {
        store,
        client,
        lock_wait: config.lock_wait,
        work_delay: config.work_delay,
        inflight: Inflight::default(),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding --listen {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(http = %addr, db = %config.db.display(), turnstile = %config.turnstile_addr, "order-callback-worker listening");
    // One machine-readable line, so scripts and tests that bind port 0 learn the port.
    println!("order-callback-worker listening http={addr}");
    std::io::stdout().flush()?;
    axum::serve(listener, api::router(worker)).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("order-callback-worker stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
