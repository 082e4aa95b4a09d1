//! The conformance suite: G1–G8 of docs/design.md over real gRPC. Every
//! backend runs the same tests: a backend adds one `conformance!(name,
//! fixture)` line with a [`Fixture`] that starts a coordinator over its state.
//!
//! The memory backend runs the whole suite in the test process
//! ([`turnstile_server::server::run`] on port-0 listeners: fast, and a
//! debugger sees client and server at once), and again as real `turnstiled`
//! processes for what only a process shows: restarts by SIGTERM, crashes by
//! SIGKILL, exit codes. The etcd backend runs it over real processes and a
//! real etcd.
//!
//! # Layout
//! - `suite`: the tests, one rule each, generic over the [`Fixture`].
//! - `fixture`: the fixtures (memory in-process or as processes; etcd) and
//!   the helpers the tests share.
//! - `node`: a running coordinator, process or in-process, stopped
//!   gracefully or crashed the same way.

mod fixture;
mod node;
mod suite;

#[allow(unused_imports)]
use fixture::Fixture;

/// Instantiates tests of [`suite`] for one backend fixture: every test, or
/// the ones listed.
macro_rules! conformance {
    ($backend:ident, $fixture:expr) => {
        conformance!($backend, $fixture, [
            g1_concurrent_acquirers_never_overlap,
            g2_tokens_increase_over_grants_and_graceful_and_crash_restarts,
            g3_unrenewed_lease_passes_to_waiter_after_expiry_not_before,
            g4_waiters_are_granted_in_arrival_order,
            g5_reacquire_by_holder_returns_same_token_with_ttl_refreshed,
            g6_waiter_whose_call_is_dropped_is_never_granted,
            g6_waiter_whose_client_disconnects_is_never_granted,
            g6_wait_timeout_answers_not_acquired_and_leaves_the_queue,
            g7_stale_token_renew_and_release_leave_newer_lease_alone,
            g8_each_invalid_field_is_refused_by_name_and_changes_nothing,
            g8_limits_are_resource_exhausted_and_change_nothing,
            shared_result_reaches_every_sharing_waiter_and_the_rest_queue_on,
            release_without_result_grants_the_next_sharing_waiter,
            contended_try_lock_reports_the_holder,
            get_and_list_show_held_and_awaited_keys_by_prefix_in_pages,
            graceful_restart_keeps_leases,
            force_release_ends_a_lease_as_its_expiry_would,
            force_release_is_kept_across_a_graceful_restart,
        ]);
    };
    ($backend:ident, $fixture:expr, [$($test:ident),* $(,)?]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let fixture = $fixture;
                    suite::$test(&fixture).await;
                }
            )*
        }
    };
}

conformance!(memory, fixture::Memory::in_process());
// Restarts and crashes of a real `turnstiled`: its SIGTERM handler and exit
// status, a SIGKILL, and its data dir read by the next process.
conformance!(
    memory_process,
    fixture::Memory::process(),
    [
        g2_tokens_increase_over_grants_and_graceful_and_crash_restarts,
        graceful_restart_keeps_leases,
        force_release_is_kept_across_a_graceful_restart
    ]
);
conformance!(etcd, fixture::Etcd::new());
