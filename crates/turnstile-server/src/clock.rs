//! [`Clock`]: the one place the server reads time. It maps the monotonic
//! clock onto the core's [`Time`], onto tokio instants for timers, and onto
//! wall-clock time for the persisted lease horizon and snapshot.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use turnstile_core::Time;

/// The server's clock. `Time::ZERO` is the moment it was created.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    wall_origin: SystemTime,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock { origin: Instant::now(), wall_origin: SystemTime::now() }
    }

    /// Now, on the monotonic clock.
    pub fn now(&self) -> Time {
        Time::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// `t` as a tokio instant, for sleeping until it.
    pub fn instant(&self, t: Time) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin + Duration::from_nanos(t.as_nanos()))
    }

    /// `t` projected onto the wall clock, in milliseconds since the Unix epoch.
    pub fn unix_millis(&self, t: Time) -> u64 {
        let wall = self.wall_origin + Duration::from_nanos(t.as_nanos());
        wall.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// The monotonic instant of a wall-clock time in milliseconds since the
    /// Unix epoch (instants before the clock's origin map to its origin).
    pub fn from_unix_millis(&self, ms: u64) -> Time {
        let origin_ms = self.unix_millis(Time::ZERO);
        Time::ZERO + Duration::from_millis(ms.saturating_sub(origin_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_and_monotonic_round_trip_to_the_millisecond() {
        let c = Clock::new();
        let t = Time::from_millis(12_345);
        assert_eq!(c.from_unix_millis(c.unix_millis(t)), t);
        assert_eq!(c.from_unix_millis(0), Time::ZERO);
    }
}
