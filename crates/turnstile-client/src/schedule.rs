//! Timing rules of the client as pure functions of explicit instants: when a
//! lease is valid until, when to renew, how long to back off. No clock is read
//! here, so the rules are tested with made-up instants.

use std::time::{Duration, Instant};

/// The longest wait one Acquire call asks for: the server's default maximum
/// wait. Longer waits are made of several calls (a server configured with a
/// shorter maximum answers earlier, and the client asks again).
pub(crate) const MAX_WAIT_PER_CALL: Duration = Duration::from_secs(300);

/// The clock rule of docs/design.md: a lease granted or renewed by a request sent
/// at `sent` with `ttl` is valid until `sent + ttl`, never longer.
pub(crate) fn valid_until(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl
}

/// When to send the next renew after a successful one sent at `sent`: a
/// third of the TTL later, leaving two more tries' worth of time before the
/// lease would run out.
pub(crate) fn renew_at(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl / 3
}

/// The pause between failed renew attempts: a tenth of the TTL, kept between
/// 10 ms and 500 ms, so a coordinator that comes back is found quickly.
pub(crate) fn renew_retry_delay(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(10), Duration::from_millis(500))
}

/// The pause before retry number `attempt` (0-based) of a call that could
/// not reach the coordinator: 50 ms doubling up to 1 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50).saturating_mul(1 << attempt.min(5)).min(Duration::from_secs(1))
}

/// Whether a grant answered at `received` for a request sent at `sent` used
/// up so much of its validity (more than a third of the TTL, because the
/// request waited in the queue) that the client should confirm it with a
/// fresh call before relying on it.
pub(crate) fn needs_confirmation(sent: Instant, received: Instant, ttl: Duration) -> bool {
    received.saturating_duration_since(sent) > ttl / 3
}

/// The wait to ask for in one Acquire call, given the time left (`None`: no limit).
pub(crate) fn wait_for_call(left: Option<Duration>) -> Duration {
    left.map_or(MAX_WAIT_PER_CALL, |l| l.min(MAX_WAIT_PER_CALL))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    #[test]
    fn validity_counts_from_the_send_time_not_the_reply() {
        let sent = Instant::now();
        assert_eq!(valid_until(sent, TTL), sent + TTL);
    }

    #[test]
    fn renewal_comes_at_a_third_of_the_ttl() {
        let sent = Instant::now();
        assert_eq!(renew_at(sent, TTL), sent + Duration::from_secs(1));
        assert!(renew_at(sent, TTL) < valid_until(sent, TTL));
    }

    #[test]
    fn retry_delays_are_bounded() {
        assert_eq!(renew_retry_delay(Duration::from_millis(50)), Duration::from_millis(10));
        assert_eq!(renew_retry_delay(TTL), Duration::from_millis(300));
        assert_eq!(renew_retry_delay(Duration::from_secs(3600)), Duration::from_millis(500));
        assert_eq!(backoff(0), Duration::from_millis(50));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(40), Duration::from_secs(1));
    }

    #[test]
    fn a_grant_after_a_long_wait_is_confirmed() {
        let sent = Instant::now();
        assert!(!needs_confirmation(sent, sent + Duration::from_millis(10), TTL));
        assert!(needs_confirmation(sent, sent + Duration::from_secs(2), TTL));
    }

    #[test]
    fn long_waits_are_split_into_calls() {
        assert_eq!(wait_for_call(None), MAX_WAIT_PER_CALL);
        assert_eq!(wait_for_call(Some(Duration::from_secs(1))), Duration::from_secs(1));
        assert_eq!(wait_for_call(Some(Duration::from_secs(3600))), MAX_WAIT_PER_CALL);
    }
}
