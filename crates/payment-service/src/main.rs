//! `payment-service`: a sample payment API that solves docs/design.md problem 1,
//! the double payment, with a per-payment turnstile lease and a fenced write.
//!
//! `PUT /payments/{id}` reads the payment, calls a slow payment provider and
//! marks the payment PAID. Two concurrent PUTs would both read EMPTY and both
//! charge the card; here each PUT holds the lease `payment:{id}` around that
//! section, claims the row with the lease's fencing token before charging,
//! and writes PAID only if the row still carries that token, so a holder
//! whose lease expired (a long pause) cannot overwrite a newer one, whichever
//! of the two writes first.
//! `--no-lock` runs the broken version for comparison.
//!
//! # Layout
//! - `main.rs`: flags, logging, start-up (one ready line on stdout with the
//!   bound address), serving until SIGTERM/SIGINT.
//! - `config.rs`: the clap flags and their validation.
//! - `api.rs`: routes and thin handlers.
//! - `conduct.rs`: the PUT itself: lock, claim, charge, fenced write.
//! - `lock.rs`: the lock modes (try, wait, none) over `turnstile-client`.
//! - `provider.rs`: the simulated, slow, counted payment provider.
//! - `store.rs`: SQLite tables, the fenced claim and the fenced write.
//! - `error.rs`: API errors and their HTTP mapping.

mod api;
mod conduct;
mod config;
mod error;
mod lock;
mod provider;
mod store;

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use crate::api::App;
use crate::config::Config;
use crate::lock::Locking;
use crate::provider::Provider;
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
    let locking = Locking::from_config(&config).context("setting up the turnstile client")?;
    let app = App { provider: Provider::new(store.clone(), config.provider_delay), store, locking: Arc::new(locking) };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding --listen {}", config.listen))?;
    let addr = listener.local_addr()?;
    let mode = locking_label(&config);
    tracing::info!(http = %addr, lock = mode, db = %config.db.display(), "payment-service listening");
    // One machine-readable line, so scripts and tests that bind port 0 learn the port.
    println!("payment-service listening http={addr} lock={mode}");
    std::io::stdout().flush()?;
    axum::serve(listener, api::router(app)).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("payment-service stopped");
    Ok(())
}

fn locking_label(config: &Config) -> &'static str {
    match (config.no_lock, config.lock_mode) {
        (true, _) => "none",
        (false, config::LockMode::Try) => "try",
        (false, config::LockMode::Wait) => "wait",
    }
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
