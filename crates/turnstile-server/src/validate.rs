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

/// A key: 1–512 bytes of UTF-8 without control characters.
pub fn key(field: &'static str, key: &str) -> Result<(), InvalidArgument> {
    if key.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(field, format!("is {} bytes, more than the maximum of {MAX_KEY_BYTES}", key.len())));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(invalid(field, format!("contains the control character {c:?}")));
    }
    Ok(())
}

/// An owner: 1–256 bytes of UTF-8 without control characters (owners appear
/// in logs and tables, where a control character could forge a line).
pub fn owner(owner: &str) -> Result<(), InvalidArgument> {
    if owner.is_empty() {
        return Err(invalid("owner", "must not be empty"));
    }
    if owner.len() > MAX_OWNER_BYTES {
        return Err(invalid("owner", format!("is {} bytes, more than the maximum of {MAX_OWNER_BYTES}", owner.len())));
    }
    if let Some(c) = owner.chars().find(|c| c.is_control()) {
        return Err(invalid("owner", format!("contains the control character {c:?}")));
    }
    Ok(())
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

/// A ListLocks request: `(prefix, after, page size)`.
pub fn list(req: &v1::ListLocksRequest) -> Result<(String, Option<String>, usize), InvalidArgument> {
    if req.prefix.len() > MAX_KEY_BYTES {
        return Err(invalid(
            "prefix",
            format!("is {} bytes, more than the maximum of {MAX_KEY_BYTES}", req.prefix.len()),
        ));
    }
    // No key holds a control character, so such a prefix is a mistake.
    if let Some(c) = req.prefix.chars().find(|c| c.is_control()) {
        return Err(invalid("prefix", format!("contains the control character {c:?}")));
    }
    let after = if req.page_token.is_empty() {
        None
    } else {
        key("page_token", &req.page_token)
            .map_err(|_| invalid("page_token", "is not a next_page_token this server returned"))?;
        if !req.page_token.starts_with(&req.prefix) {
            return Err(invalid("page_token", "belongs to a listing with another prefix"));
        }
        Some(req.page_token.clone())
    };
    let size = match req.page_size as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    Ok((req.prefix.clone(), after, size))
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
        let r = v1::ListLocksRequest { prefix: "a:".into(), page_token: "b:1".into(), page_size: 0 };
        assert_eq!(list(&r).unwrap_err().field, "page_token");
        let r = v1::ListLocksRequest { prefix: "a:".into(), page_token: "a:1".into(), page_size: 5000 };
        assert_eq!(list(&r).unwrap(), ("a:".into(), Some("a:1".into()), MAX_PAGE_SIZE));
    }
}
