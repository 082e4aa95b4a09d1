//! Durations as a person reads them, for every message of this crate and
//! of the `turnstile` CLI.

use std::time::Duration;

/// `d` rounded as a person reads it: `250ms`, `3s`, `1.5s`, `12.3s`,
/// `4m05s`, `2h10m`; never the micro- and nanoseconds of `{:?}` or
/// `humantime` (`2s 999ms 999us 780ns` is `3s`).
pub fn human_duration(d: Duration) -> String {
    // Rounded to the nearest millisecond, then to the unit shown.
    let ms = d.as_nanos().saturating_add(500_000) / 1_000_000;
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_949 => {
            let tenths = (ms + 50) / 100;
            match tenths % 10 {
                0 => format!("{}s", tenths / 10),
                t => format!("{}.{t}s", tenths / 10),
            }
        }
        59_950..=3_599_499 => {
            let s = (ms + 500) / 1000;
            format!("{}m{:02}s", s / 60, s % 60)
        }
        _ => {
            let m = (ms + 30_000) / 60_000;
            format!("{}h{:02}m", m / 60, m % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_rounded_for_people() {
        let cases = [
            (Duration::ZERO, "0ms"),
            (Duration::from_micros(1_499), "1ms"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_nanos(999_600_000), "1s"),
            (Duration::from_nanos(2_999_999_780), "3s"),
            (Duration::from_nanos(1_499_997_306), "1.5s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_millis(12_340), "12.3s"),
            (Duration::from_millis(59_960), "1m00s"),
            (Duration::from_secs(245), "4m05s"),
            (Duration::from_secs(7_800), "2h10m"),
            (Duration::from_millis(3_599_600), "1h00m"),
            (Duration::from_secs(3_600 * 1_000), "1000h00m"),
        ];
        for (d, want) in cases {
            assert_eq!(human_duration(d), want, "{d:?}");
        }
    }
}
