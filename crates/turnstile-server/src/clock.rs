//! [`Clock`]: the one place the server reads time. It maps tokio's clock onto
//! the core's [`Time`], onto tokio instants for timers, and onto wall-clock
//! time for the persisted lease horizon and snapshot.
//!
//! The monotonic side is `tokio::time::Instant`, so a test that pauses tokio's
//! clock (`#[tokio::test(start_paused = true)]`) drives every expiry, wait
//! deadline and recovery hold of the server deterministically. Outside a
//! paused runtime it is the system's monotonic clock.
//!
//! The wall-clock projection is taken afresh at every call (wall now plus the
//! monotonic distance to `t`), not from a wall time read once at start-up: if
//! the system clock is stepped while the process runs (NTP correcting a VM
//! that booted slow), what is persisted is still in the wall time the next
//! process will read, so a horizon never looks passed before it is. Tests of
//! restarts use [`Clock::with_virtual_wall`] instead, whose wall clock moves
//! with tokio's (paused) clock, so that a restart "60 s later" is one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use turnstile_core::Time;

/// Where wall-clock time comes from.
#[derive(Debug, Clone, Copy)]
enum Wall {
    /// The system clock, read at every call.
    System,
    /// Milliseconds since the Unix epoch at the clock's origin, moved on by
    /// the monotonic clock (tests).
    Virtual { at_origin_ms: u64 },
}

/// The server's clock. `Time::ZERO` is the moment it was created.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    wall: Wall,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock starting now, on the system's wall clock.
    pub fn new() -> Self {
        Clock { origin: Instant::now(), wall: Wall::System }
    }

    /// A clock starting now whose wall clock reads `unix_ms` at this instant
    /// and then moves only with tokio's clock: restart tests under paused
    /// time give each "process" such a clock, so persisted horizons and
    /// snapshot expiries are compared in one simulated wall time.
    pub fn with_virtual_wall(unix_ms: u64) -> Self {
        Clock { origin: Instant::now(), wall: Wall::Virtual { at_origin_ms: unix_ms } }
    }

    /// Now, on the monotonic clock.
    pub fn now(&self) -> Time {
        Time::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// `t` as a tokio instant, for sleeping until it.
    pub fn instant(&self, t: Time) -> Instant {
        self.origin + Duration::from_nanos(t.as_nanos())
    }

    /// `t` projected onto the wall clock as it reads now, in milliseconds
    /// since the Unix epoch.
    pub fn unix_millis(&self, t: Time) -> u64 {
        match self.wall {
            Wall::Virtual { at_origin_ms } => at_origin_ms.saturating_add(t.as_nanos() / 1_000_000),
            Wall::System => {
                let now = self.now();
                let wall_now = SystemTime::now();
                let wall = if t >= now {
                    wall_now.checked_add(t.saturating_since(now))
                } else {
                    wall_now.checked_sub(now.saturating_since(t))
                };
                wall.and_then(|w| w.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
        }
    }

    /// The monotonic instant of a wall-clock time in milliseconds since the
    /// Unix epoch (instants before the clock's origin map to its origin).
    pub fn from_unix_millis(&self, ms: u64) -> Time {
        let now = self.now();
        let now_ms = self.unix_millis(now);
        if ms >= now_ms {
            now + Duration::from_millis(ms - now_ms)
        } else {
            now - Duration::from_millis(now_ms - ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wall_and_monotonic_round_trip_to_the_millisecond() {
        let c = Clock::new();
        let t = Time::from_millis(12_345);
        let back = c.from_unix_millis(c.unix_millis(t));
        // Two readings of each clock lie between: allow a few milliseconds.
        assert!(back.max(t).saturating_since(back.min(t)) < Duration::from_millis(5), "{t:?} -> {back:?}");
        assert_eq!(c.from_unix_millis(0), Time::ZERO);
    }

    #[tokio::test]
    async fn the_wall_projection_follows_the_wall_clock_of_each_call() {
        let c = Clock::new();
        let wall_now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64;
        let ahead = c.unix_millis(c.now() + Duration::from_secs(10));
        assert!(ahead.abs_diff(wall_now + 10_000) < 5, "{ahead} vs {wall_now}");
    }

    #[tokio::test(start_paused = true)]
    async fn paused_tokio_time_drives_now_and_the_virtual_wall() {
        let c = Clock::with_virtual_wall(1_000_000);
        assert_eq!(c.now(), Time::ZERO);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(c.now(), Time::from_millis(60_000));
        assert_eq!(c.unix_millis(c.now()), 1_060_000);
        assert_eq!(c.from_unix_millis(1_070_000), Time::from_millis(70_000));
    }
}
