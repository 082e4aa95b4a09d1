//! The conformance suite: G1–G8 of docs/design.md over real gRPC against real
//! `turnstiled` processes. Every backend runs the same tests: a backend adds
//! one `conformance!(name, fixture)` line with a [`Fixture`] that starts
//! `turnstiled` over its state.

mod fixture;
mod suite;

#[allow(unused_imports)]
use fixture::Fixture;

/// Instantiates every test of [`suite`] for one backend fixture.
macro_rules! conformance {
    ($backend:ident, $fixture:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            conformance!(@tests $fixture;
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
                graceful_restart_keeps_leases);
        }
    };
    (@tests $fixture:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let fixture = $fixture;
                suite::$test(&fixture).await;
            }
        )*
    };
}

conformance!(memory, fixture::Memory::new());
conformance!(etcd, fixture::Etcd::new());
