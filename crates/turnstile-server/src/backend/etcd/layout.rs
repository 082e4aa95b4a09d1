//! Where turnstile's state lives in etcd: the key layout and the value of a
//! queue entry.
//!
//! For a lock `key` under the configured prefix `P`:
//!
//! | etcd key | what | attached to |
//! |---|---|---|
//! | `P \0 key \0 q <nonce>` | one queue entry: the holder or a waiter | its own etcd lease |
//! | `P \0 key \0 r <token>` | a result released by the holder with `token` | that holder's lease |
//!
//! The entry with the lowest create revision holds the lock; its create
//! revision is the fencing token. `\0` cannot occur in a key (keys have no
//! control characters), so no key's entries mix with another's, and since it
//! sorts below every byte a key may contain, etcd's key order is the order of
//! turnstile keys: a prefix range lists keys in order.
//!
//! The `\0` after the prefix (which cannot hold one either: config refuses
//! control characters in it) keeps prefixes apart: without it, prefix
//! `turnstile/pay` with key `ments/1` and prefix `turnstile/payments/` with
//! key `1` would be one lock, and so would `t/` with `a/1` and `t/a/` with `1`.
//! With it, every distinct prefix is a separate lock space, nested or not.

use serde::{Deserialize, Serialize};

/// Ends the configured prefix inside an etcd key.
const PREFIX_END: u8 = 0;
/// Ends a turnstile key inside an etcd key.
const KEY_END: u8 = 0;
/// Marks queue entries.
const QUEUE: u8 = b'q';
/// Marks shared results.
const RESULT: u8 = b'r';

/// What an etcd key under the prefix is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A queue entry (holder or waiter).
    Entry,
    /// A shared result.
    Result,
}

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    prefix: Vec<u8>,
}

impl Layout {
    /// The layout under `prefix` (e.g. `turnstile/`).
    pub(super) fn new(prefix: &str) -> Self {
        Layout { prefix: prefix.as_bytes().to_vec() }
    }

    /// `P \0 key`: where the etcd keys of `key` begin (without their end).
    fn keyed(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len() + 25);
        k.extend_from_slice(&self.prefix);
        k.push(PREFIX_END);
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn base(&self, key: &str, kind: u8) -> Vec<u8> {
        let mut k = self.keyed(key);
        k.push(KEY_END);
        k.push(kind);
        k
    }

    /// The prefix of every queue entry of `key`.
    pub(super) fn queue(&self, key: &str) -> Vec<u8> {
        self.base(key, QUEUE)
    }

    /// A new queue entry of `key`, named by a nonce unique in the cluster
    /// (the id of the etcd lease it is created with).
    pub(super) fn entry(&self, key: &str, nonce: i64) -> Vec<u8> {
        let mut k = self.queue(key);
        k.extend_from_slice(format!("{nonce:016x}").as_bytes());
        k
    }

    /// The prefix of the shared results of `key`.
    pub(super) fn results(&self, key: &str) -> Vec<u8> {
        self.base(key, RESULT)
    }

    /// The result released by the holder with fencing token `token`.
    pub(super) fn result(&self, key: &str, token: u64) -> Vec<u8> {
        let mut k = self.results(key);
        k.extend_from_slice(format!("{token:020}").as_bytes());
        k
    }

    /// The range `[start, end)` holding every turnstile key that starts with
    /// `prefix` and sorts after `after`.
    pub(super) fn list_range(&self, prefix: &str, after: Option<&str>) -> (Vec<u8>, Vec<u8>) {
        let all = self.keyed(prefix);
        let end = range_end(&all);
        let start = match after {
            Some(a) => {
                // Every etcd key of `a` is `P \0 a \0 …`; every key above `a` is at least `P \0 a \1`.
                let mut s = self.keyed(a);
                s.push(KEY_END + 1);
                s.max(all)
            }
            None => all,
        };
        (start, end)
    }

    /// Splits an etcd key into the turnstile key and what it is.
    pub(super) fn parse<'a>(&self, etcd_key: &'a [u8]) -> Option<(&'a str, Kind)> {
        let rest = etcd_key.strip_prefix(self.prefix.as_slice())?.strip_prefix(&[PREFIX_END])?;
        let end = rest.iter().position(|&b| b == KEY_END)?;
        let key = std::str::from_utf8(&rest[..end]).ok()?;
        let kind = match *rest.get(end + 1)? {
            QUEUE => Kind::Entry,
            RESULT => Kind::Result,
            _ => return None,
        };
        Some((key, kind))
    }
}

/// The end of etcd's prefix range for `prefix`: the smallest key above every
/// key that starts with it (`\0`, "to the end of the keyspace", when all
/// bytes are 0xff).
pub(super) fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The value of a queue entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct EntryValue {
    /// Who asked.
    pub(super) owner: String,
    /// The TTL of the entry's etcd lease, in seconds: what Renew without a TTL restores.
    pub(super) ttl: i64,
    /// Whether this waiter accepts the holder's released result instead of the lock.
    #[serde(default)]
    pub(super) share: bool,
}

impl EntryValue {
    /// The bytes stored in etcd (JSON, readable with `etcdctl get`).
    pub(super) fn encode(&self) -> Vec<u8> {
        // Serializing a struct of a string, an integer and a bool cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a stored value; `None` for a value turnstile did not write.
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_a_key_never_mix_with_a_longer_key_and_sort_by_key() {
        let l = Layout::new("t/");
        let a = l.entry("a", 1);
        let ab = l.entry("a/b", 1);
        let a_sp = l.entry("a b", 1);
        assert!(!ab.starts_with(&l.queue("a")));
        assert!(a < a_sp && a_sp < ab, "etcd order follows key order");
        assert_eq!(l.parse(&ab), Some(("a/b", Kind::Entry)));
        assert_eq!(l.parse(&l.result("a/b", 7)), Some(("a/b", Kind::Result)));
        assert_eq!(l.parse(b"t/x"), None);
        assert_eq!(l.parse(b"t/a\0q1"), None, "no separator after the prefix");
        assert_eq!(l.parse(b"other/\0a\0q1"), None);
    }

    #[test]
    fn list_range_starts_after_the_page_token_and_ends_after_the_prefix() {
        let l = Layout::new("t/");
        let (start, end) = l.list_range("order:", Some("order:1"));
        for (key, inside) in [("order:1", false), ("order:10", true), ("order:2", true), ("order;", false)] {
            let k = l.entry(key, 5);
            assert_eq!(k >= start && k < end, inside, "{key}");
        }
        let (start, end) = l.list_range("", None);
        assert_eq!((start.as_slice(), end.as_slice()), (&b"t/\0"[..], &b"t/\x01"[..]));
        assert_eq!(range_end(&[0xff, 0xff]), vec![0]);
    }

    #[test]
    fn distinct_prefixes_are_separate_lock_spaces() {
        let (pay, payments) = (Layout::new("turnstile/pay"), Layout::new("turnstile/payments/"));
        assert_ne!(pay.entry("ments/1", 7), payments.entry("1", 7));
        assert_ne!(pay.queue("ments/1"), payments.queue("1"));
        // Nested prefixes too: `t/` + `a/1` is not `t/a/` + `1`, and a listing
        // of `t/` does not reach into `t/a/`.
        let (outer, inner) = (Layout::new("t/"), Layout::new("t/a/"));
        assert_ne!(outer.entry("a/1", 7), inner.entry("1", 7));
        assert_eq!(outer.parse(&inner.entry("1", 7)), None);
        let (start, end) = outer.list_range("", None);
        let other = inner.entry("1", 7);
        assert!(!(other >= start && other < end), "t/'s listing holds t/a/'s entry");
    }

    #[test]
    fn entry_values_round_trip() {
        let v = EntryValue { owner: "host/1/x\"y".into(), ttl: 15, share: true };
        assert_eq!(EntryValue::decode(&v.encode()), Some(v));
        assert_eq!(EntryValue::decode(b"garbage"), None);
    }
}
