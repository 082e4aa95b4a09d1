//! Conversions from the server's types to protobuf types, in one place.

use std::time::Duration;

use turnstile_proto::v1;

use crate::backend::{Grant, LockInfo};

/// A `std` duration as a protobuf duration (saturating at the type's range).
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

impl From<&Grant> for v1::Lease {
    fn from(g: &Grant) -> Self {
        v1::Lease {
            key: g.key.to_string(),
            owner: g.owner.to_string(),
            fencing_token: g.token,
            ttl: Some(duration(g.ttl)),
        }
    }
}

/// A key's state as the protobuf `LockInfo`.
pub fn lock_info(i: &LockInfo) -> v1::LockInfo {
    match &i.holder {
        Some(h) => v1::LockInfo {
            key: i.key.to_string(),
            held: true,
            owner: h.owner.to_string(),
            fencing_token: h.token,
            expires_in: Some(duration(h.expires_in)),
            waiters: i.waiters,
            grants_resume_in: None,
        },
        None => v1::LockInfo { key: i.key.to_string(), waiters: i.waiters, ..Default::default() },
    }
}
