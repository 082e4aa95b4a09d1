//! The `requests` target: bytes off the wire decoded as each
//! `turnstile.v1` request message, then run through the server's validation
//! (`turnstile_server::validate`) exactly as `service.rs` calls it.
//!
//! The oracle is the documented contract (docs/design.md, "Limits and
//! defaults"; the comments of proto/turnstile/v1/lock.proto; the range of
//! `google.protobuf.Duration`), written here independently of the code under
//! test. Each field is judged valid, invalid, or either way:
//! - key 1–512 bytes, owner 1–256 bytes, list prefix at most 512 bytes; a
//!   control character anywhere makes them invalid, and so does one of the
//!   invisible or text-direction characters the rule names by kind (Unicode's
//!   bidi controls U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069; zero-width
//!   U+200B–U+200D, U+2060, U+FEFF; separators U+2028/U+2029). Text made only
//!   of plainly visible characters (ASCII, common Latin, Greek, Cyrillic,
//!   kana, CJK) is valid. Other characters are either way: the rule names
//!   kinds, not a full list;
//! - durations valid when well-formed and not negative, fencing token when not 0;
//! - a page token is opaque: empty is valid; anything but the token the server
//!   issues for a key under the listing's prefix is invalid (so an accepted
//!   token is exactly `page_token::encode(prefix, key)` of the key it continues
//!   after: garbage, a truncated token or another prefix's token are refused).
//!
//! Then: a request with an invalid field is refused; one whose fields are all
//! valid is accepted; a refusal names a field of that message that is not
//! valid, and maps to `INVALID_ARGUMENT` with the field in the message (G8).
//! An accepted request carries the caller's key and owner unchanged, a TTL
//! within the backend's bounds (the clamped default when unset), a wait no
//! longer than the maximum (zero when unset), a page size of 1–1000 (100
//! when unset), and a page to continue after that is a key under the prefix.
//!
//! Nothing may panic, whatever the bytes and whichever limits apply.

use std::time::Duration;

use prost::Message;
use turnstile_proto::v1;
use turnstile_server::backend::TtlBounds;
use turnstile_server::error::InvalidArgument;
use turnstile_server::validate::{self, Limits};

/// The documented limits (docs/design.md).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 1..=512;
const OWNER_BYTES: std::ops::RangeInclusive<usize> = 1..=256;
const PAGE_SIZE_DEFAULT: usize = 100;
const PAGE_SIZE_MAX: usize = 1000;
/// `google.protobuf.Duration`: seconds within ±10,000 years.
const PROTO_DURATION_MAX_SECS: i64 = 315_576_000_000;

/// The limit sets the server runs with: the memory backend's defaults, the
/// etcd backend's (whole seconds, etcd's 2 s minimum), and a degenerate one
/// (a single TTL, no waiting).
fn limit_sets() -> [Limits; 3] {
    let s = Duration::from_secs;
    [
        Limits {
            default_ttl: s(15),
            ttl: TtlBounds { min: Duration::from_millis(100), max: s(3600) },
            max_wait: s(300),
            max_result_bytes: 1 << 20,
        },
        Limits {
            default_ttl: s(15),
            ttl: TtlBounds { min: s(2), max: s(3600) },
            max_wait: s(300),
            max_result_bytes: 1 << 20,
        },
        Limits {
            default_ttl: s(1),
            ttl: TtlBounds { min: s(1), max: s(1) },
            max_wait: Duration::ZERO,
            max_result_bytes: 0,
        },
    ]
}

/// Runs one input through every request type and every limit set.
pub fn check(data: &[u8]) {
    let acquire = v1::AcquireRequest::decode(data).ok();
    let renew = v1::RenewRequest::decode(data).ok();
    let release = v1::ReleaseRequest::decode(data).ok();
    let get = v1::GetLockRequest::decode(data).ok();
    let list = v1::ListLocksRequest::decode(data).ok();
    for limits in &limit_sets() {
        if let Some(req) = &acquire {
            check_acquire(req, limits);
        }
        if let Some(req) = &renew {
            check_renew(req, limits);
        }
    }
    if let Some(req) = &release {
        check_release(req);
    }
    if let Some(req) = &get {
        // service.rs: GetLock validates only its key.
        judge("GetLock", validate::key("key", &req.key), &[("key", text(&req.key, KEY_BYTES))], || ());
    }
    if let Some(req) = &list {
        check_list(req);
    }
}

/// How the spec judges one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Valid,
    Invalid,
    /// Not settled by the documented rule: validation may go either way.
    Either,
}

fn verdict(ok: bool) -> Verdict {
    if ok {
        Verdict::Valid
    } else {
        Verdict::Invalid
    }
}

/// Characters that are plainly visible text, whatever the rule on invisible ones.
fn plain(c: char) -> bool {
    matches!(u32::from(c),
        0x20..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF | 0x100..=0x24F | 0x391..=0x3A1 | 0x3A3..=0x3C9
        | 0x410..=0x44F | 0x3041..=0x3096 | 0x30A1..=0x30FA | 0x4E00..=0x9FFF | 0x20AC)
}

/// The invisible and text-direction characters the documented rule names by
/// kind: bidi controls, zero-width characters, line and paragraph separators.
fn named_invisible(c: char) -> bool {
    matches!(u32::from(c),
        0x061C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069
        | 0x200B..=0x200D | 0x2060 | 0xFEFF | 0x2028 | 0x2029)
}

/// A key, owner or prefix of `len` bytes.
fn text(s: &str, len: std::ops::RangeInclusive<usize>) -> Verdict {
    if !len.contains(&s.len()) || s.chars().any(|c| c.is_control() || named_invisible(c)) {
        Verdict::Invalid
    } else if s.chars().all(plain) {
        Verdict::Valid
    } else {
        Verdict::Either
    }
}

/// What is certain of any accepted key: its length, no control character.
fn key_ok(key: &str) -> bool {
    KEY_BYTES.contains(&key.len()) && !key.chars().any(char::is_control)
}

/// A well-formed, non-negative `google.protobuf.Duration`, as a `Duration`.
fn duration_spec(d: &prost_types::Duration) -> Option<Duration> {
    let ok = (0..=PROTO_DURATION_MAX_SECS).contains(&d.seconds) && (0..1_000_000_000).contains(&d.nanos);
    ok.then(|| Duration::new(d.seconds as u64, d.nanos as u32))
}

fn within(ttl: Duration, limits: &Limits) -> bool {
    limits.ttl.min <= ttl && ttl <= limits.ttl.max
}

/// Validation against the spec: `fields` judges each field; `want` is the
/// accepted value the spec expects (checked when accepted).
fn judge<T: std::fmt::Debug + PartialEq>(
    rpc: &str,
    got: Result<T, InvalidArgument>,
    fields: &[(&'static str, Verdict)],
    want: impl FnOnce() -> T,
) {
    let invalid: Vec<_> = fields.iter().filter(|(_, v)| *v == Verdict::Invalid).map(|(f, _)| *f).collect();
    match got {
        Ok(got) => {
            assert!(invalid.is_empty(), "{rpc}: accepted {got:?} although {invalid:?} break the documented limits");
            assert_eq!(got, want(), "{rpc}: accepted, but not as the spec says");
        }
        Err(e) => {
            let named = fields.iter().find(|(f, _)| *f == e.field).map(|(_, v)| *v);
            assert!(
                matches!(named, Some(Verdict::Invalid | Verdict::Either)),
                "{rpc}: refused ({e}), naming a field the spec finds {named:?}; fields: {fields:?}"
            );
            let status = tonic::Status::from(e.clone());
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{rpc}: {e} is not INVALID_ARGUMENT");
            assert!(
                status.message().contains(e.field),
                "{rpc}: status {:?} does not name {}",
                status.message(),
                e.field
            );
        }
    }
}

fn check_acquire(req: &v1::AcquireRequest, limits: &Limits) {
    let ttl = req.ttl.as_ref().map(duration_spec);
    let wait = req.wait_timeout.as_ref().map(duration_spec);
    let fields = [
        ("key", text(&req.key, KEY_BYTES)),
        ("owner", text(&req.owner, OWNER_BYTES)),
        ("ttl", verdict(ttl.is_none_or(|t| t.is_some()))),
        ("wait_timeout", verdict(wait.is_none_or(|w| w.is_some()))),
    ];
    let got = validate::acquire(req, limits);
    if let Ok(ok) = &got {
        // The limits themselves, stated directly.
        assert!(key_ok(&ok.key) && OWNER_BYTES.contains(&ok.owner.len()), "Acquire: accepted {ok:?}");
        assert!(within(ok.ttl, limits), "Acquire: TTL {:?} outside {:?}", ok.ttl, limits.ttl);
        assert!(ok.wait <= limits.max_wait, "Acquire: wait {:?} above {:?}", ok.wait, limits.max_wait);
    }
    let got = got.map(|a| (a.key, a.owner, a.ttl, a.wait, a.share_result));
    judge("Acquire", got, &fields, || {
        (
            req.key.clone(),
            req.owner.clone(),
            ttl.flatten().unwrap_or(limits.default_ttl).clamp(limits.ttl.min, limits.ttl.max),
            wait.flatten().unwrap_or(Duration::ZERO).min(limits.max_wait),
            req.share_result,
        )
    });
}

fn check_renew(req: &v1::RenewRequest, limits: &Limits) {
    let ttl = req.ttl.as_ref().map(duration_spec);
    let fields = [
        ("key", text(&req.key, KEY_BYTES)),
        ("fencing_token", verdict(req.fencing_token != 0)),
        ("ttl", verdict(ttl.is_none_or(|t| t.is_some()))),
    ];
    let got = validate::renew(req, limits);
    if let Ok((key, token, ttl)) = &got {
        assert!(key_ok(key) && *token != 0, "Renew: accepted key {key:?} token {token}");
        assert!(ttl.is_none_or(|t| within(t, limits)), "Renew: TTL {ttl:?} outside {:?}", limits.ttl);
    }
    judge("Renew", got, &fields, || {
        (req.key.clone(), req.fencing_token, ttl.flatten().map(|d| d.clamp(limits.ttl.min, limits.ttl.max)))
    });
}

fn check_release(req: &v1::ReleaseRequest) {
    let fields = [("key", text(&req.key, KEY_BYTES)), ("fencing_token", verdict(req.fencing_token != 0))];
    judge("Release", validate::release(req), &fields, || (req.key.clone(), req.fencing_token));
}

fn check_list(req: &v1::ListLocksRequest) {
    let prefix = if req.prefix.is_empty() { Verdict::Valid } else { text(&req.prefix, 0..=*KEY_BYTES.end()) };
    let token = if req.page_token.is_empty() {
        Verdict::Valid
    } else {
        // Valid only as the token issued for some key under the prefix; the
        // decoder proposes the key, the encoder must give back the same token.
        let issued = validate::page_token::decode(&req.prefix, &req.page_token)
            .is_ok_and(|k| k.starts_with(&req.prefix) && validate::page_token::encode(&req.prefix, &k) == req.page_token);
        verdict(issued)
    };
    let fields = [("prefix", prefix), ("page_token", token)];
    let got = validate::list(req);
    let size = match req.page_size as usize {
        0 => PAGE_SIZE_DEFAULT,
        n => n.min(PAGE_SIZE_MAX),
    };
    // The page to continue after is opaque in the request; what it decodes to
    // must be a key under the prefix, and is taken as it is.
    let after = match &got {
        Ok((_, after, size)) => {
            assert!((1..=PAGE_SIZE_MAX).contains(size), "ListLocks: page size {size}");
            if let Some(a) = after {
                assert!(!req.page_token.is_empty(), "ListLocks: no page token, yet continues after {a:?}");
                assert!(
                    key_ok(a) && a.starts_with(&req.prefix),
                    "ListLocks: continues after {a:?}, not a key under the prefix"
                );
            }
            after.clone()
        }
        Err(_) => None,
    };
    judge("ListLocks", got, &fields, || (req.prefix.clone(), after, size));
}
