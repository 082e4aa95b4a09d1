//! Request validation shared by every backend (G8): each check names the
//! proto field at fault, and runs before any state is touched.

use std::time::Duration;

use turnstile_proto::v1;

use crate::backend::{AcquireRequest, TtlBounds};
use crate::error::InvalidArgument;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Longest owner, in bytes.
pub const MAX_OWNER_BYTES: usize = 256;
/// Default ListLocks page size.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest ListLocks page size; larger requests are clamped.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The largest seconds value a `google.protobuf.Duration` may carry (10,000 years).
const MAX_PROTO_DURATION_SECS: i64 = 315_576_000_000;

/// The limits validation applies, from config and the backend's TTL bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// TTL when a request leaves it unset.
    pub default_ttl: Duration,
    /// TTL range granted.
    pub ttl: TtlBounds,
    /// Longest queue wait.
    pub max_wait: Duration,
    /// Largest shared result, in bytes.
    pub max_result_bytes: usize,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidArgument {
    InvalidArgument { field, reason: reason.into() }
}

/// A key: 1–512 bytes of UTF-8 without control or invisible characters.
pub fn key(field: &'static str, key: &str) -> Result<(), InvalidArgument> {
    if key.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(field, format!("is {} bytes, more than the maximum of {MAX_KEY_BYTES}", key.len())));
    }
    printable(field, key)
}

/// An owner: 1–256 bytes of UTF-8 without control or invisible characters
/// (owners appear in logs and tables, where such a character could forge a
/// line or disguise a name).
pub fn owner(owner: &str) -> Result<(), InvalidArgument> {
    if owner.is_empty() {
        return Err(invalid("owner", "must not be empty"));
    }
    if owner.len() > MAX_OWNER_BYTES {
        return Err(invalid("owner", format!("is {} bytes, more than the maximum of {MAX_OWNER_BYTES}", owner.len())));
    }
    printable("owner", owner)
}

/// Refuses control characters, and characters that are invisible or reorder
/// text (bidi controls such as U+202E, zero-width ones such as U+200B, line
/// and paragraph separators U+2028/U+2029): a key or owner shown by `ls`,
/// grpcurl or a log must read as what it is.
fn printable(field: &'static str, s: &str) -> Result<(), InvalidArgument> {
    match s.chars().find(|&c| c.is_control() || invisible(c)) {
        Some(c) if c.is_control() => Err(invalid(field, format!("contains the control character {c:?}"))),
        Some(c) => {
            Err(invalid(field, format!("contains U+{:04X}, an invisible or text-direction character", u32::from(c))))
        }
        None => Ok(()),
    }
}

/// Unicode format, separator and filler characters that render as nothing
/// or change the order in which text around them is shown.
fn invisible(c: char) -> bool {
    matches!(u32::from(c),
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF9..=0xFFFB | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// A protobuf duration that is well-formed and not negative.
pub fn duration(field: &'static str, d: &prost_types::Duration) -> Result<Duration, InvalidArgument> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    if d.nanos > 999_999_999 {
        return Err(invalid(field, "nanos must be below 1,000,000,000"));
    }
    if d.seconds > MAX_PROTO_DURATION_SECS {
        return Err(invalid(field, "is beyond the range of google.protobuf.Duration"));
    }
    Ok(Duration::new(d.seconds.unsigned_abs(), d.nanos.unsigned_abs()))
}

/// A TTL: unset means the default; otherwise clamped to the bounds.
pub fn ttl(d: Option<&prost_types::Duration>, limits: &Limits) -> Result<Duration, InvalidArgument> {
    Ok(match d {
        None => limits.default_ttl.clamp(limits.ttl.min, limits.ttl.max),
        Some(d) => duration("ttl", d)?.clamp(limits.ttl.min, limits.ttl.max),
    })
}

/// A fencing token: tokens start at 1, so 0 is always a mistake.
pub fn token(token: u64) -> Result<u64, InvalidArgument> {
    if token == 0 {
        return Err(invalid("fencing_token", "must be set (tokens start at 1)"));
    }
    Ok(token)
}

/// An Acquire request.
pub fn acquire(req: &v1::AcquireRequest, limits: &Limits) -> Result<AcquireRequest, InvalidArgument> {
    key("key", &req.key)?;
    owner(&req.owner)?;
    let ttl = ttl(req.ttl.as_ref(), limits)?;
    let wait = match req.wait_timeout.as_ref() {
        None => Duration::ZERO,
        Some(d) => duration("wait_timeout", d)?.min(limits.max_wait),
    };
    Ok(AcquireRequest { key: req.key.clone(), owner: req.owner.clone(), ttl, wait, share_result: req.share_result })
}

/// A Renew request: `(key, token, ttl)`, ttl `None` meaning "as granted".
pub fn renew(req: &v1::RenewRequest, limits: &Limits) -> Result<(String, u64, Option<Duration>), InvalidArgument> {
    key("key", &req.key)?;
    let token = token(req.fencing_token)?;
    let ttl = req.ttl.as_ref().map(|d| ttl(Some(d), limits)).transpose()?;
    Ok((req.key.clone(), token, ttl))
}

/// A Release request's key and token (the result's size is a limit, checked by the service).
pub fn release(req: &v1::ReleaseRequest) -> Result<(String, u64), InvalidArgument> {
    key("key", &req.key)?;
    Ok((req.key.clone(), token(req.fencing_token)?))
}

/// A ForceRelease request: its key, and the fencing token when one is given
/// (given as 0 is refused: tokens start at 1).
pub fn force_release(req: &v1::ForceReleaseRequest) -> Result<(String, Option<u64>), InvalidArgument> {
    key("key", &req.key)?;
    let token = req.fencing_token.map(token).transpose()?;
    Ok((req.key.clone(), token))
}

/// A ListLocks request: `(prefix, after, page size)`.
pub fn list(req: &v1::ListLocksRequest) -> Result<(String, Option<String>, usize), InvalidArgument> {
    if req.prefix.len() > MAX_KEY_BYTES {
        return Err(invalid(
            "prefix",
            format!("is {} bytes, more than the maximum of {MAX_KEY_BYTES}", req.prefix.len()),
        ));
    }
    // No key holds such a character, so such a prefix is a mistake.
    if !req.prefix.is_empty() {
        printable("prefix", &req.prefix)?;
    }
    let after = if req.page_token.is_empty() { None } else { Some(page_token::decode(&req.prefix, &req.page_token)?) };
    let size = match req.page_size as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    Ok((req.prefix.clone(), after, size))
}

/// ListLocks page tokens: opaque to clients, checked by the server. A token
/// is the last key of a page in hex, and a checksum over it and the listing's
/// prefix, so garbage, a truncated token or one from another listing is
/// `INVALID_ARGUMENT` rather than an empty or wrong page.
pub mod page_token {
    use super::{invalid, key, InvalidArgument};

    /// The token that continues a listing of `prefix` after `last`.
    pub fn encode(prefix: &str, last: &str) -> String {
        let mut t = String::with_capacity(last.len() * 2 + 9);
        for b in last.bytes() {
            t.push_str(&format!("{b:02x}"));
        }
        t.push_str(&format!(".{:08x}", check(prefix, last)));
        t
    }

    /// The key a listing of `prefix` continues after, from a token of [`encode`].
    pub fn decode(prefix: &str, token: &str) -> Result<String, InvalidArgument> {
        let bad = || invalid("page_token", "is not a next_page_token this server returned for this prefix");
        let (hex, _) = token.split_once('.').ok_or_else(bad)?;
        if hex.len() % 2 != 0 {
            return Err(bad());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        let last = String::from_utf8(bytes).map_err(|_| bad())?;
        // Only the token as issued (which also checks the checksum, and
        // refuses the same key in upper-case hex).
        if !last.starts_with(prefix) || encode(prefix, &last) != token {
            return Err(bad());
        }
        key("page_token", &last).map_err(|_| bad())?;
        Ok(last)
    }

    /// FNV-1a over the prefix, a separator and the key.
    fn check(prefix: &str, last: &str) -> u32 {
        prefix
            .bytes()
            .chain([0xff])
            .chain(last.bytes())
            .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            default_ttl: Duration::from_secs(15),
            ttl: TtlBounds { min: Duration::from_millis(100), max: Duration::from_secs(3600) },
            max_wait: Duration::from_secs(300),
            max_result_bytes: 1 << 20,
        }
    }

    fn pd(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    fn req(key: &str, owner: &str) -> v1::AcquireRequest {
        v1::AcquireRequest { key: key.into(), owner: owner.into(), ..Default::default() }
    }

    #[test]
    fn bad_keys_name_the_key_field() {
        for bad in ["", "a\nb", "tab\there", &"x".repeat(513), "nul\0"] {
            let e = acquire(&req(bad, "o"), &limits()).unwrap_err();
            assert_eq!(e.field, "key", "{bad:?}");
        }
        assert!(acquire(&req(&"x".repeat(512), "o"), &limits()).is_ok());
        assert!(acquire(&req("payment:42/ü", "o"), &limits()).is_ok());
    }

    #[test]
    fn bad_owners_name_the_owner_field() {
        for bad in ["", &"o".repeat(257), "a\rb"] {
            assert_eq!(acquire(&req("k", bad), &limits()).unwrap_err().field, "owner");
        }
    }

    #[test]
    fn durations_negative_or_malformed_are_refused_and_large_ones_clamped() {
        let mut r = req("k", "o");
        r.ttl = Some(pd(-1, 0));
        assert_eq!(acquire(&r, &limits()).unwrap_err().field, "ttl");
        r.ttl = Some(pd(0, -5));
        assert_eq!(acquire(&r, &limits()).unwrap_err().field, "ttl");
        r.ttl = Some(pd(i64::MAX, 0));
        assert_eq!(acquire(&r, &limits()).unwrap_err().field, "ttl");
        r.ttl = Some(pd(7200, 0));
        assert_eq!(acquire(&r, &limits()).unwrap().ttl, Duration::from_secs(3600));
        r.ttl = Some(pd(0, 1));
        assert_eq!(acquire(&r, &limits()).unwrap().ttl, Duration::from_millis(100));
        r.ttl = None;
        r.wait_timeout = Some(pd(-3, 0));
        assert_eq!(acquire(&r, &limits()).unwrap_err().field, "wait_timeout");
        r.wait_timeout = Some(pd(3600, 0));
        let ok = acquire(&r, &limits()).unwrap();
        assert_eq!((ok.ttl, ok.wait), (Duration::from_secs(15), Duration::from_secs(300)));
    }

    #[test]
    fn zero_token_is_refused() {
        let r = v1::ReleaseRequest { key: "k".into(), fencing_token: 0, result: None };
        assert_eq!(release(&r).unwrap_err().field, "fencing_token");
        let r = v1::RenewRequest { key: "k".into(), fencing_token: 0, ttl: None };
        assert_eq!(renew(&r, &limits()).unwrap_err().field, "fencing_token");
    }

    #[test]
    fn list_checks_prefix_and_page_token() {
        let r = v1::ListLocksRequest { prefix: "a".repeat(513), ..Default::default() };
        assert_eq!(list(&r).unwrap_err().field, "prefix");
        let r = v1::ListLocksRequest { prefix: "a\n".into(), ..Default::default() };
        assert_eq!(list(&r).unwrap_err().field, "prefix");
        let r = v1::ListLocksRequest { prefix: "a:".into(), page_token: page_token::encode("b:", "b:1"), page_size: 0 };
        assert_eq!(list(&r).unwrap_err().field, "page_token");
        for garbage in ["zzz", "a:1", "613a31", "613a31.00000000", "613.12345678", ".", "zz.zzzzzzzz"] {
            let r = v1::ListLocksRequest { prefix: "a:".into(), page_token: garbage.into(), page_size: 0 };
            assert_eq!(list(&r).unwrap_err().field, "page_token", "{garbage:?}");
        }
        let round = page_token::encode("a:", "a:ü/1");
        assert_eq!(page_token::decode("a:", &round).unwrap(), "a:ü/1");
        // Found by the fuzzer: the same token in upper-case hex was accepted.
        let upper = page_token::encode("payment:", "payment:9").to_uppercase();
        assert_eq!(page_token::decode("payment:", &upper).unwrap_err().field, "page_token", "{upper}");
    }

    #[test]
    fn invisible_and_bidi_characters_are_refused_in_keys_owners_and_prefixes() {
        for c in ['\u{202E}', '\u{200B}', '\u{2028}', '\u{FEFF}', '\u{2066}', '\u{E0041}'] {
            let s = format!("pay{c}ment");
            let e = key("key", &s).unwrap_err();
            assert!(e.reason.contains(&format!("U+{:04X}", u32::from(c))), "{e}");
            assert_eq!(owner(&s).unwrap_err().field, "owner");
            let r = v1::ListLocksRequest { prefix: s, ..Default::default() };
            assert_eq!(list(&r).unwrap_err().field, "prefix");
        }
        assert!(key("key", "paiement:42/ü/日本").is_ok(), "ordinary non-ASCII text is fine");
        let r =
            v1::ListLocksRequest { prefix: "a:".into(), page_token: page_token::encode("a:", "a:1"), page_size: 5000 };
        assert_eq!(list(&r).unwrap(), ("a:".into(), Some("a:1".into()), MAX_PAGE_SIZE));
    }
}
