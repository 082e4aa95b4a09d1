//! The `core_ops` target: an operation sequence decoded from the input bytes
//! is played against `turnstile_core::LockTable` and a model of it, and the
//! guarantees are asserted after every step (see `model`).
//!
//! # Input format
//! Simple and byte-aligned, so that seeds can be written by hand and the
//! fuzzer's mutations stay meaningful. Bytes past the end read as 0.
//! - Header, 3 bytes: `limits` (low nibble: max waiters per key, high
//!   nibble: max leases; 0 means the default 10,000 / 10,000,000), then the
//!   start instant as a little-endian `u16` in units of [`START_UNIT_NS`].
//! - Then operations, each an opcode byte (taken modulo [`OPCODES`]) and its
//!   arguments; durations are little-endian `u16`s read by [`units`]: mostly
//!   short (15/16 of the values: 0 … 615 ms in steps of about 10 µs), the
//!   rest long (up to 10.4 s, past one revolution of the timing wheel).
//!   Long spans cost a tick thousands of slot visits, so keeping most of them
//!   short keeps the runs fast.
//!
//! | opcode | operation | arguments |
//! |---|---|---|
//! | 0 | acquire | key, owner, flags (1: wait, 2: share result), ttl+1, [wait+1 if flag 1] |
//! | 1 | renew | key, token pick, flags (1: with ttl), [ttl+1] |
//! | 2 | release | key, token pick, flags (1: with a result) |
//! | 3 | cancel one of the waiters queued so far | index |
//! | 4 | time passes, no tick | duration |
//! | 5 | time passes, then tick | duration |
//! | 6 | tick at the table's next deadline | |
//! | 7 | tick 1 ns before the next deadline (must do nothing) | |
//! | 8 | hold grants (crash recovery) for | duration |
//!
//! A key byte below 128 names one of 4 contended keys, from 128 on one of
//! 128 others (enough for emptied keys to be swept from the index). A token
//! pick below 128 means the key's current (or last) token, from 128 on any
//! token issued so far.

mod model;
mod table;

use std::time::Duration;

pub use model::{KEYS, OWNERS};

/// Opcodes in use.
pub const OPCODES: u8 = 9;
/// Duration arguments below this are short: `n` × [`SHORT_UNIT_NS`].
pub const LONG_FROM: u16 = 0xF000;
/// One unit of a short duration, in nanoseconds (not a divisor of the
/// wheel's 1 ms slot, so deadlines fall anywhere inside a slot).
pub const SHORT_UNIT_NS: u64 = 10_007;
/// One unit of a long duration (beyond the longest short one), in nanoseconds.
pub const LONG_UNIT_NS: u64 = 2_400_019;
/// One unit of the start instant, in nanoseconds.
pub const START_UNIT_NS: u64 = 152_587;

/// The limits and start of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Max waiters per key, 0: default.
    pub max_waiters: u8,
    /// Max leases, 0: default.
    pub max_leases: u8,
    /// Start instant, in [`START_UNIT_NS`].
    pub start: u16,
}

/// Which token a renew or release carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPick {
    /// The key's holder's token, or its last one if nobody holds it.
    Current,
    /// Any token issued so far (by index), on any key: mostly stale.
    Any(u8),
}

/// One operation; durations are arguments to [`units`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Acquire `key` for `owner` for `units(ttl + 1)`; with `wait`, queue for `units(wait + 1)`.
    Acquire { key: u8, owner: u8, ttl: u16, wait: Option<u16>, share: bool },
    /// Renew with a token, for `units(ttl + 1)` or the TTL as granted.
    Renew { key: u8, token: TokenPick, ttl: Option<u16> },
    /// Release with a token, with or without a result.
    Release { key: u8, token: TokenPick, result: bool },
    /// Cancel one of the waiters queued so far (answered or not).
    Cancel(u8),
    /// Time passes without a tick.
    Advance(u16),
    /// Time passes and the host ticks.
    Tick(u16),
    /// The host ticks at `next_deadline()` (or now, if that has passed).
    TickAtDeadline,
    /// The host ticks 1 ns before `next_deadline()`.
    TickJustBeforeDeadline,
    /// Grants are held back for a while (post-crash recovery).
    HoldGrants(u16),
}

/// Reads bytes, 0 past the end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
}

fn token_pick(b: u8) -> TokenPick {
    if b < 128 {
        TokenPick::Current
    } else {
        TokenPick::Any(b - 128)
    }
}

/// Decodes an input; every byte string is a valid input.
pub fn decode(data: &[u8]) -> (Header, Vec<Op>) {
    let mut r = Reader(data);
    let limits = r.u8();
    let header = Header { max_waiters: limits & 0x0F, max_leases: limits >> 4, start: r.u16() };
    let mut ops = Vec::new();
    while !r.0.is_empty() {
        let op = match r.u8() % OPCODES {
            0 => {
                let (key, owner, flags, ttl) = (r.u8(), r.u8(), r.u8(), r.u16());
                let wait = (flags & 1 != 0).then(|| r.u16());
                Op::Acquire { key, owner, ttl, wait, share: flags & 2 != 0 }
            }
            1 => {
                let (key, token, flags) = (r.u8(), token_pick(r.u8()), r.u8());
                Op::Renew { key, token, ttl: (flags & 1 != 0).then(|| r.u16()) }
            }
            2 => Op::Release { key: r.u8(), token: token_pick(r.u8()), result: r.u8() & 1 != 0 },
            3 => Op::Cancel(r.u8()),
            4 => Op::Advance(r.u16()),
            5 => Op::Tick(r.u16()),
            6 => Op::TickAtDeadline,
            7 => Op::TickJustBeforeDeadline,
            _ => Op::HoldGrants(r.u16()),
        };
        ops.push(op);
    }
    (header, ops)
}

/// Encodes an input that [`decode`] reads back as the same header and ops
/// (for writing seeds).
pub fn encode(header: Header, ops: &[Op]) -> Vec<u8> {
    let mut out = vec![(header.max_leases << 4) | (header.max_waiters & 0x0F)];
    out.extend(header.start.to_le_bytes());
    let pick = |t: TokenPick| match t {
        TokenPick::Current => 0,
        TokenPick::Any(i) => 128 + (i & 0x7F),
    };
    for op in ops {
        match *op {
            Op::Acquire { key, owner, ttl, wait, share } => {
                out.extend([0, key, owner, u8::from(wait.is_some()) | (u8::from(share) << 1)]);
                out.extend(ttl.to_le_bytes());
                out.extend(wait.map(u16::to_le_bytes).into_iter().flatten());
            }
            Op::Renew { key, token, ttl } => {
                out.extend([1, key, pick(token), u8::from(ttl.is_some())]);
                out.extend(ttl.map(u16::to_le_bytes).into_iter().flatten());
            }
            Op::Release { key, token, result } => out.extend([2, key, pick(token), u8::from(result)]),
            Op::Cancel(i) => out.extend([3, i]),
            Op::Advance(d) => out.extend([4].into_iter().chain(d.to_le_bytes())),
            Op::Tick(d) => out.extend([5].into_iter().chain(d.to_le_bytes())),
            Op::TickAtDeadline => out.push(6),
            Op::TickJustBeforeDeadline => out.push(7),
            Op::HoldGrants(d) => out.extend([8].into_iter().chain(d.to_le_bytes())),
        }
    }
    out
}

/// A duration argument as a `Duration` (monotonic in `n`).
pub fn units(n: u16) -> Duration {
    let short = u64::from(n.min(LONG_FROM)) * SHORT_UNIT_NS;
    let long = u64::from(n.saturating_sub(LONG_FROM)) * LONG_UNIT_NS;
    Duration::from_nanos(short + long)
}

/// The largest duration argument whose [`units`] do not exceed `d` (for writing seeds).
pub fn units_for(d: Duration) -> u16 {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let longest_short = u64::from(LONG_FROM) * SHORT_UNIT_NS;
    let n = if nanos < longest_short {
        nanos / SHORT_UNIT_NS
    } else {
        u64::from(LONG_FROM) + (nanos - longest_short) / LONG_UNIT_NS
    };
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Plays one input against the table and the model; panics on a broken guarantee.
pub fn check(data: &[u8]) {
    let (header, ops) = decode(data);
    model::Model::new(header).run(&ops);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_is_identity() {
        let header = Header { max_waiters: 3, max_leases: 2, start: 513 };
        let ops = [
            Op::Acquire { key: 1, owner: 2, ttl: 700, wait: Some(9), share: true },
            Op::Acquire { key: 200, owner: 0, ttl: 0, wait: None, share: false },
            Op::Renew { key: 1, token: TokenPick::Any(5), ttl: Some(3) },
            Op::Renew { key: 1, token: TokenPick::Current, ttl: None },
            Op::Release { key: 1, token: TokenPick::Current, result: true },
            Op::Cancel(4),
            Op::Advance(65535),
            Op::Tick(1),
            Op::TickAtDeadline,
            Op::TickJustBeforeDeadline,
            Op::HoldGrants(77),
        ];
        assert_eq!(decode(&encode(header, &ops)), (header, ops.to_vec()));
    }

    #[test]
    fn units_are_monotonic_and_units_for_inverts_them() {
        let mut last = Duration::ZERO;
        for n in 1..=u16::MAX {
            let d = units(n);
            assert!(d > last, "units({n})");
            assert_eq!(units_for(d), n, "units_for(units({n}))");
            assert_eq!(units_for(d - Duration::from_nanos(1)), n - 1, "just below units({n})");
            last = d;
        }
        assert!(units(LONG_FROM - 1) < Duration::from_millis(616) && units(u16::MAX) > Duration::from_secs(10));
    }
}
