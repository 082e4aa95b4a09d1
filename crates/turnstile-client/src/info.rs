//! [`LockInfo`] and [`Holder`]: the state of a key as `get` and `list` report
//! it, and the conversions from the protobuf types, in one place.

use std::time::Duration;

use turnstile_proto::v1;

/// Who holds a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The holder's owner string.
    pub owner: String,
    /// The fencing token of its lease.
    pub fencing_token: u64,
    /// Time left on its lease, as the coordinator saw it when answering.
    pub expires_in: Duration,
}

/// The state of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The key.
    pub key: String,
    /// The holder; `None` when the key is free.
    pub holder: Option<Holder>,
    /// Acquire calls queued on the key.
    pub waiters: u32,
    /// Set by [`Client::get`](crate::Client::get) while the coordinator
    /// grants nothing on any key because it is recovering after a crash:
    /// the time until grants resume. `None` otherwise (and from
    /// [`Client::list`](crate::Client::list), and from coordinators that
    /// predate the field).
    pub grants_resume_in: Option<Duration>,
}

impl From<v1::LockInfo> for LockInfo {
    fn from(i: v1::LockInfo) -> Self {
        let holder = i.held.then(|| Holder {
            owner: i.owner,
            fencing_token: i.fencing_token,
            expires_in: duration(i.expires_in).unwrap_or_default(),
        });
        LockInfo { key: i.key, holder, waiters: i.waiters, grants_resume_in: duration(i.grants_resume_in) }
    }
}

/// The outcome of [`Client::force_release`](crate::Client::force_release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceReleased {
    /// True when the call ended a live lease; false when the key had none
    /// (or only one with another fencing token, or a hold after a crash).
    pub released: bool,
    /// The key's state just before the call: when released, the lease that
    /// was ended and the waiters queued then.
    pub previous: LockInfo,
}

/// A protobuf duration as a `std` one; `None` when unset, negative or out of range.
pub(crate) fn duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(d).ok())
}

/// A `std` duration as a protobuf one, saturating at the type's range.
pub(crate) fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_key_has_no_holder() {
        let i = LockInfo::from(v1::LockInfo { key: "k".into(), waiters: 2, ..Default::default() });
        assert_eq!(i, LockInfo { key: "k".into(), holder: None, waiters: 2, grants_resume_in: None });
    }

    #[test]
    fn a_held_key_carries_its_holder() {
        let i = LockInfo::from(v1::LockInfo {
            key: "k".into(),
            held: true,
            owner: "o".into(),
            fencing_token: 7,
            expires_in: Some(proto_duration(Duration::from_millis(1500))),
            waiters: 0,
            grants_resume_in: None,
        });
        let h = i.holder.expect("held");
        assert_eq!((h.owner.as_str(), h.fencing_token, h.expires_in), ("o", 7, Duration::from_millis(1500)));
    }

    #[test]
    fn negative_durations_are_refused() {
        assert_eq!(duration(Some(prost_types::Duration { seconds: -1, nanos: 0 })), None);
        assert_eq!(duration(None), None);
    }
}
