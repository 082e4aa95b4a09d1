//! [`Time`]: an instant on the coordinator's monotonic clock, passed into every
//! operation so the table never reads a clock itself.

use std::ops::{Add, Sub};
use std::time::Duration;

/// An instant on the host's monotonic clock, in nanoseconds since an arbitrary
/// origin chosen by the host. Tests build instants explicitly with
/// [`Time::from_millis`]; the server maps `std::time::Instant` onto it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The clock origin.
    pub const ZERO: Time = Time(0);

    /// An instant `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    /// An instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Time {
        Time(millis.saturating_mul(1_000_000))
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    /// Saturates at the end of time rather than overflowing.
    fn add(self, d: Duration) -> Time {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(nanos))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;

    /// Saturates at the origin rather than underflowing.
    fn sub(self, d: Duration) -> Time {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_sub(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        assert_eq!(Time::from_nanos(u64::MAX - 1) + Duration::from_secs(1), Time::from_nanos(u64::MAX));
        assert_eq!(Time::from_millis(1) - Duration::from_secs(1), Time::ZERO);
        assert_eq!(Time::from_millis(5).saturating_since(Time::from_millis(7)), Duration::ZERO);
        assert_eq!(Time::from_millis(7).saturating_since(Time::from_millis(5)), Duration::from_millis(2));
    }
}
