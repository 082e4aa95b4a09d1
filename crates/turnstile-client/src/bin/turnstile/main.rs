//! `turnstile`: the command-line client of the turnstile coordinator.
//!
//! # Layout
//! - `cli`: flags, environment variables, subcommands, exit codes (clap).
//! - `lock`: `turnstile lock KEY -- CMD`: wait (status line on a terminal),
//!   run CMD under the lock, stop it if the lease is lost.
//! - `child`: spawning CMD in its own process group, signalling it, the
//!   watchdog that kills the group if turnstile dies, and the signals
//!   turnstile receives.
//! - `output`: the table and JSON forms of `get` and `ls`.

mod child;
mod cli;
mod lock;
mod output;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use turnstile_client::Client;

use crate::cli::{exit, Cli, Command};

/// Why turnstile itself failed (exit code 125).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The coordinator refused or could not be reached.
    #[error(transparent)]
    Client(#[from] turnstile_client::Error),
    /// A TLS file could not be read.
    #[error("cannot read {path}: {source}", path = path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A local I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Watchdog = cli.command {
        // No runtime and no client: it only reads a pipe and may kill.
        return ExitCode::from(child::watchdog());
    }
    // One thread: the command is spawned from the main thread, which the
    // parent-death signal of `lock` is tied to; and a lock client needs no more.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("turnstile: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let addr = host_port(&cli.addr);
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(CliError::Client(turnstile_client::Error::Timeout { operation, after })) => {
            eprintln!(
                "turnstile: no answer from turnstiled at {addr} within {} ({operation}; see --timeout)",
                turnstile_client::human_duration(after)
            );
            ExitCode::from(exit::FAILED)
        }
        Err(e) => {
            eprintln!("turnstile: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

/// `host:port` of an `--addr` (as the client library names it in errors).
fn host_port(addr: &str) -> String {
    let rest = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    rest.trim_end_matches('/').to_owned()
}

async fn run(cli: Cli) -> Result<u8, CliError> {
    let mut builder = Client::builder(cli.addr.clone()).call_timeout(cli.timeout);
    if let Some(token) = &cli.bearer_token {
        builder = builder.bearer_token(token.clone());
    }
    builder = tls(builder, &cli)?;
    if let Command::Lock(args) = &cli.command {
        builder = builder.ttl(args.ttl);
        if let Some(owner) = &args.owner {
            builder = builder.owner(owner.clone());
        }
    }
    // Lazy: the first call connects, and its error says what went wrong.
    let client = builder.connect_lazy()?;
    let io = |source| CliError::Io { what: "writing to stdout", source };
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Lock(args) => {
            drop(out);
            lock::run(&client, args).await
        }
        Command::Get { key, json } => {
            let info = client.get(&key).await?;
            if let Some(left) = info.grants_resume_in {
                // On stderr: the table (or JSON) on stdout stays as scripts read it.
                eprintln!(
                    "turnstile: note: the coordinator is recovering after a crash: it grants no lease on any key for {} more seconds",
                    left.as_secs() + u64::from(left.subsec_nanos() > 0)
                );
            }
            if json {
                output::json_one(&mut out, &info).map_err(io)?;
            } else {
                output::table(&mut out, std::slice::from_ref(&info)).map_err(io)?;
            }
            out.flush().map_err(io)?;
            Ok(0)
        }
        Command::Ls { prefix, json } => {
            let infos = client.list(&prefix).await?;
            if json {
                output::json_many(&mut out, &infos).map_err(io)?;
            } else {
                output::table(&mut out, &infos).map_err(io)?;
            }
            out.flush().map_err(io)?;
            Ok(0)
        }
        Command::Release { key, token, force: true } => {
            let out_of = |token: Option<u64>| token.map(|t| format!(" with fencing token {t}")).unwrap_or_default();
            let r = client.force_release(&key, token).await?;
            match (&r.previous.holder, r.released) {
                (Some(h), true) => {
                    writeln!(
                        out,
                        "force-released {key}: the lease of {} (fencing token {}) has ended as if it had expired",
                        h.owner, h.fencing_token
                    )
                    .map_err(io)?;
                    Ok(0)
                }
                (Some(h), false) if h.fencing_token == 0 => {
                    eprintln!("turnstile: {key} is held back after a crash and cannot be force-released (see --override-recovery of turnstiled)");
                    Ok(exit::NOT_RELEASED)
                }
                (Some(h), false) => {
                    eprintln!(
                        "turnstile: {key} has no live lease{}; it is held by {} (fencing token {})",
                        out_of(token),
                        h.owner,
                        h.fencing_token
                    );
                    Ok(exit::NOT_RELEASED)
                }
                (None, _) => {
                    eprintln!("turnstile: {key} has no live lease{}: nothing to release", out_of(token));
                    Ok(exit::NOT_RELEASED)
                }
            }
        }
        Command::Release { key, token, force: false } => {
            // clap demands the token without --force.
            let token = token.unwrap_or_default();
            if client.release(&key, token).await? {
                writeln!(out, "released {key} (fencing token {token})").map_err(io)?;
                Ok(0)
            } else {
                eprintln!("turnstile: the lease on {key} with fencing token {token} had already ended");
                Ok(exit::NOT_RELEASED)
            }
        }
        Command::Health => {
            let serving = client.serving().await?;
            let addr = &cli.addr;
            writeln!(out, "{addr} is {}", if serving { "SERVING" } else { "NOT_SERVING" }).map_err(io)?;
            Ok(if serving { 0 } else { exit::NOT_SERVING })
        }
        // Handled in main, before the runtime; harmless here too.
        Command::Watchdog => Ok(child::watchdog()),
    }
}

/// Applies `--ca`, `--cert`, `--key` and `--tls-domain`.
fn tls(builder: turnstile_client::ClientBuilder, cli: &Cli) -> Result<turnstile_client::ClientBuilder, CliError> {
    use turnstile_client::{Certificate, ClientTlsConfig, Identity};
    if cli.tls_ca.is_none() && cli.tls_cert.is_none() && cli.tls_domain.is_none() {
        return Ok(builder);
    }
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|source| CliError::File { path: p.to_owned(), source });
    let mut tls = ClientTlsConfig::new();
    match &cli.tls_ca {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => tls = tls.with_native_roots(),
    }
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(domain) = &cli.tls_domain {
        tls = tls.domain_name(domain.clone());
    }
    Ok(builder.tls(tls))
}
