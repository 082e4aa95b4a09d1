//! Writes the hand-made seeds of the committed corpus, `fuzz/corpus/<target>/seed-*`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.
//!
//! Each seed is one scenario a guarantee or a limit turns on, so that even a
//! short run starts from the interesting places. Files the fuzzer found
//! (named by their hash) are left alone.

use std::path::Path;
use std::time::Duration;

use prost::Message;
use prost_types::Duration as PDuration;
use turnstile_fuzz::core_ops::{encode, units_for, Header, Op, TokenPick};
use turnstile_proto::v1;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut written = 0;
    for (target, seeds) in [("requests", request_seeds()), ("core_ops", core_seeds())] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")) {
                std::fs::remove_file(path)?;
            }
        }
        for (name, bytes) in seeds {
            // Every seed must pass: a failing one is a finding, not a seed.
            match target {
                "requests" => turnstile_fuzz::requests::check(&bytes),
                _ => turnstile_fuzz::core_ops::check(&bytes),
            }
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
            written += 1;
        }
    }
    println!("wrote {written} seeds under {}", root.display());
    Ok(())
}

fn d(seconds: i64, nanos: i32) -> Option<PDuration> {
    Some(PDuration { seconds, nanos })
}

fn acquire(key: &str, owner: &str) -> v1::AcquireRequest {
    v1::AcquireRequest { key: key.into(), owner: owner.into(), ..Default::default() }
}

fn request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let long_key = "k".repeat(512);
    let mut seeds: Vec<(&'static str, Vec<u8>)> = vec![
        ("acquire-try", v1::AcquireRequest { ttl: d(30, 0), ..acquire("payment:42", "worker-a") }.encode_to_vec()),
        (
            "acquire-wait-share",
            v1::AcquireRequest {
                ttl: d(15, 0),
                wait_timeout: d(10, 0),
                share_result: true,
                ..acquire("cache:user:7", "host/123/x")
            }
            .encode_to_vec(),
        ),
        ("acquire-key-512", acquire(&long_key, "o").encode_to_vec()),
        ("acquire-key-513", acquire(&format!("{long_key}k"), "o").encode_to_vec()),
        ("acquire-key-empty", acquire("", "o").encode_to_vec()),
        ("acquire-key-control", acquire("pay\nment", "o").encode_to_vec()),
        ("acquire-key-unicode", acquire("zahlung:ü/€/\u{10FFFF}", "o").encode_to_vec()),
        ("acquire-key-c1-control", acquire("key\u{85}", "o").encode_to_vec()),
        ("acquire-owner-256", acquire("k", &"o".repeat(256)).encode_to_vec()),
        ("acquire-owner-257", acquire("k", &"o".repeat(257)).encode_to_vec()),
        ("acquire-owner-control", acquire("k", "a\rb").encode_to_vec()),
        ("acquire-owner-empty", acquire("k", "").encode_to_vec()),
        ("acquire-ttl-negative", v1::AcquireRequest { ttl: d(-1, 0), ..acquire("k", "o") }.encode_to_vec()),
        ("acquire-ttl-mixed-sign", v1::AcquireRequest { ttl: d(1, -5), ..acquire("k", "o") }.encode_to_vec()),
        ("acquire-ttl-nanos-1e9", v1::AcquireRequest { ttl: d(0, 1_000_000_000), ..acquire("k", "o") }.encode_to_vec()),
        (
            "acquire-ttl-max",
            v1::AcquireRequest { ttl: d(315_576_000_000, 999_999_999), ..acquire("k", "o") }.encode_to_vec(),
        ),
        (
            "acquire-ttl-past-max",
            v1::AcquireRequest { ttl: d(315_576_000_001, 0), ..acquire("k", "o") }.encode_to_vec(),
        ),
        ("acquire-ttl-i64-max", v1::AcquireRequest { ttl: d(i64::MAX, 0), ..acquire("k", "o") }.encode_to_vec()),
        ("acquire-ttl-1ns", v1::AcquireRequest { ttl: d(0, 1), ..acquire("k", "o") }.encode_to_vec()),
        ("acquire-ttl-zero", v1::AcquireRequest { ttl: d(0, 0), ..acquire("k", "o") }.encode_to_vec()),
        ("acquire-ttl-2h", v1::AcquireRequest { ttl: d(7200, 0), ..acquire("k", "o") }.encode_to_vec()),
        ("acquire-wait-negative", v1::AcquireRequest { wait_timeout: d(-3, 0), ..acquire("k", "o") }.encode_to_vec()),
        ("acquire-wait-1h", v1::AcquireRequest { wait_timeout: d(3600, 0), ..acquire("k", "o") }.encode_to_vec()),
        ("renew-ttl", v1::RenewRequest { key: "payment:42".into(), fencing_token: 17, ttl: d(60, 0) }.encode_to_vec()),
        ("renew-token-0", v1::RenewRequest { key: "k".into(), fencing_token: 0, ttl: None }.encode_to_vec()),
        (
            "renew-token-max",
            v1::RenewRequest { key: "k".into(), fencing_token: u64::MAX, ttl: d(0, 500) }.encode_to_vec(),
        ),
        (
            "release-result",
            v1::ReleaseRequest { key: "cache:user:7".into(), fencing_token: 3, result: Some(b"{\"v\":1}".to_vec().into()) }
                .encode_to_vec(),
        ),
        ("release-token-0", v1::ReleaseRequest { key: "k".into(), fencing_token: 0, result: None }.encode_to_vec()),
        ("get", v1::GetLockRequest { key: "payment:42".into() }.encode_to_vec()),
        (
            "list-page",
            v1::ListLocksRequest { prefix: "payment:".into(), page_size: 5000, page_token: "payment:9".into() }
                .encode_to_vec(),
        ),
        (
            "list-token-other-prefix",
            v1::ListLocksRequest { prefix: "a:".into(), page_size: 0, page_token: "b:1".into() }.encode_to_vec(),
        ),
        ("list-prefix-513", v1::ListLocksRequest { prefix: "p".repeat(513), ..Default::default() }.encode_to_vec()),
        ("list-prefix-control", v1::ListLocksRequest { prefix: "a\t".into(), ..Default::default() }.encode_to_vec()),
        (
            "list-token-control",
            v1::ListLocksRequest { prefix: "a".into(), page_token: "a\u{7f}".into(), page_size: 1 }.encode_to_vec(),
        ),
    ];
    for (name, c) in [("zero-width", '\u{200B}'), ("bidi-override", '\u{202E}'), ("hangul-filler", '\u{3164}')] {
        let s = format!("pay{c}ment:42");
        let name = |what: &str| &*format!("{what}-{name}").leak();
        seeds.push((name("acquire-key"), acquire(&s, "o").encode_to_vec()));
        seeds.push((name("acquire-owner"), acquire("k", &s).encode_to_vec()));
        seeds.push((name("list-prefix"), v1::ListLocksRequest { prefix: s, ..Default::default() }.encode_to_vec()));
    }
    // A page token in the server's format at the time of writing (the last
    // key in hex, a dot, an FNV-1a checksum over prefix, 0xff and key).
    let (prefix, last) = ("payment:", "payment:9");
    let sum = prefix
        .bytes()
        .chain([0xff])
        .chain(last.bytes())
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    let token = format!("{}.{sum:08x}", last.bytes().map(|b| format!("{b:02x}")).collect::<String>());
    let list = v1::ListLocksRequest { prefix: prefix.into(), page_size: 2, page_token: token };
    seeds.push(("list-page-token-opaque", list.encode_to_vec()));
    // Wire-level oddities: a field repeated (the last one wins), an unknown
    // field, a packed varint of ten bytes.
    let mut repeated = acquire("first", "o").encode_to_vec();
    repeated.extend(acquire("second", "").encode_to_vec());
    seeds.push(("acquire-fields-repeated", repeated));
    let mut unknown = acquire("k", "o").encode_to_vec();
    unknown.extend([0xF8, 0x01, 0x2A, 0x3A, 0x00]); // field 31 varint 42, field 7 empty bytes
    seeds.push(("acquire-unknown-fields", unknown));
    seeds.push(("varint-10-bytes", vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]));
    seeds
}

/// Milliseconds as a duration argument (rounded down).
fn ms(ms: u64) -> u16 {
    units_for(Duration::from_millis(ms))
}

/// A TTL or wait argument of about `n` ms (the op adds one unit).
fn t(n: u64) -> u16 {
    ms(n).saturating_sub(1)
}

fn acq(key: u8, owner: u8, ttl_ms: u64) -> Op {
    Op::Acquire { key, owner, ttl: t(ttl_ms), wait: None, share: false }
}

fn wait(key: u8, owner: u8, ttl_ms: u64, wait_ms: u64, share: bool) -> Op {
    Op::Acquire { key, owner, ttl: t(ttl_ms), wait: Some(t(wait_ms)), share }
}

fn rel(key: u8, result: bool) -> Op {
    Op::Release { key, token: TokenPick::Current, result }
}

fn core_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use Op::*;
    let h = Header::default();
    let drain = [TickAtDeadline, TickAtDeadline, TickAtDeadline, TickAtDeadline];
    let mut seeds = vec![
        ("grant-release-regrant", encode(h, &[acq(0, 0, 1000), rel(0, false), acq(0, 1, 1000), rel(0, false)])),
        (
            "fifo-handoff",
            encode(
                h,
                &[
                    acq(0, 0, 1000),
                    acq(0, 1, 1000),
                    wait(0, 1, 500, 3000, false),
                    wait(0, 2, 500, 3000, false),
                    rel(0, false),
                    rel(0, false),
                    Tick(ms(100)),
                ],
            ),
        ),
        (
            "expiry-handoff",
            encode(h, &[acq(1, 0, 200), wait(1, 1, 300, 2000, false), TickAtDeadline, TickAtDeadline, TickAtDeadline]),
        ),
        (
            "refresh-shorter-ttl-with-waiter",
            encode(
                h,
                &[
                    acq(0, 0, 9000),
                    wait(0, 1, 400, 8000, false),
                    acq(0, 0, 300),
                    TickAtDeadline,
                    TickAtDeadline,
                    TickJustBeforeDeadline,
                ],
            ),
        ),
        (
            "renew-shorter-ttl-with-waiter",
            encode(
                h,
                &[
                    acq(2, 0, 9000),
                    wait(2, 1, 400, 8000, false),
                    Renew { key: 2, token: TokenPick::Current, ttl: Some(t(300)) },
                    TickJustBeforeDeadline,
                    TickAtDeadline,
                ],
            ),
        ),
        (
            "stale-token-after-expiry",
            encode(
                h,
                &[
                    acq(0, 0, 200),
                    Advance(ms(250)),
                    acq(0, 1, 1000),
                    Renew { key: 0, token: TokenPick::Any(0), ttl: None },
                    Release { key: 0, token: TokenPick::Any(0), result: false },
                    Renew { key: 0, token: TokenPick::Current, ttl: None },
                ],
            ),
        ),
        (
            "shared-result",
            encode(
                h,
                &[
                    acq(3, 0, 1000),
                    wait(3, 1, 500, 2000, true),
                    wait(3, 2, 500, 2000, false),
                    wait(3, 1, 500, 2000, true),
                    rel(3, true),
                    rel(3, false),
                ],
            ),
        ),
        (
            "shared-result-none-on-expiry",
            encode(h, &[acq(3, 0, 200), wait(3, 1, 500, 2000, true), TickAtDeadline, rel(3, true)]),
        ),
        (
            "cancel-waiter",
            encode(
                h,
                &[
                    acq(0, 0, 1000),
                    wait(0, 1, 500, 2000, false),
                    wait(0, 2, 500, 2000, false),
                    Cancel(0),
                    Cancel(0),
                    rel(0, false),
                    Cancel(1),
                ],
            ),
        ),
        (
            "wait-timeout",
            encode(h, &[acq(0, 0, 5000), wait(0, 1, 500, 100, false), Tick(ms(50)), Tick(ms(60)), Cancel(0)]),
        ),
        (
            "max-waiters-1",
            encode(
                Header { max_waiters: 1, ..h },
                &[acq(0, 0, 1000), wait(0, 1, 500, 900, false), wait(0, 2, 500, 900, false), rel(0, false)],
            ),
        ),
        (
            "max-leases-1-pending-served",
            encode(
                Header { max_leases: 1, ..h },
                &[
                    acq(0, 0, 1000),
                    acq(1, 1, 1000),
                    wait(2, 1, 300, 3000, false),
                    acq(0, 1, 100),
                    wait(0, 2, 300, 3000, false),
                    rel(0, false),
                    TickAtDeadline,
                    TickAtDeadline,
                ],
            ),
        ),
        (
            "recovery-hold",
            encode(
                h,
                &[
                    HoldGrants(ms(1000)),
                    acq(0, 0, 1000),
                    wait(0, 0, 1000, 3000, false),
                    wait(0, 1, 1000, 3000, false),
                    TickJustBeforeDeadline,
                    TickAtDeadline,
                    rel(0, false),
                ],
            ),
        ),
        (
            "recovery-hold-expiry-pending",
            encode(
                h,
                &[
                    acq(1, 0, 200),
                    wait(1, 1, 300, 5000, false),
                    HoldGrants(ms(800)),
                    TickAtDeadline,
                    Cancel(0),
                    wait(1, 2, 300, 5000, false),
                    TickAtDeadline,
                    TickAtDeadline,
                ],
            ),
        ),
        (
            "ttl-past-wheel-revolution",
            encode(
                h,
                &[
                    acq(0, 0, 9000),
                    wait(0, 1, 9000, 9500, false),
                    Tick(ms(4500)),
                    Tick(ms(4500)),
                    TickAtDeadline,
                    TickAtDeadline,
                ],
            ),
        ),
        (
            "settle-without-tick",
            encode(
                h,
                &[
                    acq(0, 0, 100),
                    wait(0, 1, 100, 150, false),
                    Advance(ms(300)),
                    acq(0, 2, 100),
                    Release { key: 0, token: TokenPick::Any(1), result: false },
                ],
            ),
        ),
        (
            "just-before-deadline",
            encode(
                h,
                &[
                    acq(0, 0, 120),
                    acq(1, 1, 130),
                    wait(0, 2, 100, 500, false),
                    TickJustBeforeDeadline,
                    TickAtDeadline,
                    TickJustBeforeDeadline,
                    TickAtDeadline,
                ],
            ),
        ),
        (
            "start-mid-slot",
            encode(
                Header { start: 12_345, ..h },
                &[acq(0, 0, 7), wait(0, 1, 3, 11, false), TickAtDeadline, TickJustBeforeDeadline, TickAtDeadline],
            ),
        ),
    ];
    // Many keys taken and emptied: the index sweeps its tombstones.
    let mut many: Vec<Op> = (128..=255).map(|k| acq(k, k % 3, 100 + u64::from(k))).collect();
    many.extend((128..=200).map(|k| rel(k, false)));
    many.push(Tick(ms(300)));
    many.extend((128..=160).map(|k| acq(k, 0, 100)));
    many.extend(drain);
    seeds.push(("many-keys-sweep", encode(h, &many)));
    // A busy mix on the contended keys.
    let mut mix = Vec::new();
    for i in 0..24u8 {
        mix.push(match i % 6 {
            0 => acq(i % 4, i % 3, 150 + u64::from(i) * 7),
            1 => wait(i % 4, (i + 1) % 3, 120, 400, i % 4 == 1),
            2 => Renew { key: i % 4, token: TokenPick::Current, ttl: Some(t(90)) },
            3 => Release { key: (i + 1) % 4, token: TokenPick::Current, result: i % 2 == 1 },
            4 => Tick(ms(40)),
            _ => Cancel(i),
        });
    }
    seeds.push(("busy-mix", encode(h, &mix)));
    seeds
}
