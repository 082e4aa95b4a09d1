//! The memory backend served in the test process, as `turnstiled` serves it:
//! one helper for every test binary that needs it (`#[path]`-included).

use std::sync::Arc;

use clap::Parser;
use turnstile_server::backend::memory::MemoryBackend;
use turnstile_server::config::Config;
use turnstile_server::server::run;
use turnstile_server::telemetry::Metrics;
use turnstile_testkit::InProcess;

/// Starts the memory backend in this process with `turnstiled`'s flags
/// `args` (parsed and validated as the binary does; the listen addresses are
/// replaced by free loopback ports) and serves it with [`run`] as
/// `turnstiled` does, until the [`InProcess`] is stopped or killed.
pub(crate) fn memory_in_process<S: AsRef<str>>(args: &[S]) -> InProcess {
    let argv = ["turnstiled", "--backend", "memory"].into_iter().map(String::from);
    let argv: Vec<String> = argv.chain(args.iter().map(|a| a.as_ref().to_owned())).collect();
    let config = Config::try_parse_from(&argv).unwrap_or_else(|e| panic!("turnstiled flags {argv:?}: {e}"));
    config.validate().unwrap_or_else(|e| panic!("turnstiled flags {argv:?}: {e}"));
    InProcess::start(move |bound| async move {
        let metrics = Arc::new(Metrics::new());
        let backend =
            MemoryBackend::start(&config, metrics.clone()).map_err(|e| format!("opening the memory backend: {e}"))?;
        let backend = Arc::new(backend);
        let held = backend.clone();
        bound.ready.announce();
        let leases_held = Box::new(move || Some(held.leases_held()));
        run(backend, &config, metrics, leases_held, bound.grpc, bound.http, bound.shutdown)
            .await
            .map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("in-process turnstiled did not start: {e}"))
}
