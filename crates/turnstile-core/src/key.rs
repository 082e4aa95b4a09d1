//! [`Key`]: the name of a lock as the key store keeps it: inline when short
//! (most keys, like `payment:42` or `order:12345678`), so that holding a key
//! costs no allocation of its own; shared on the heap when long.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::sync::Arc;

/// Keys up to this many bytes are stored inline.
const INLINE: usize = 22;

/// A key's name, ordered as its bytes are (which is how `str` orders).
#[derive(Clone)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl Key {
    pub(crate) fn new(key: &str) -> Key {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..key.len()].copy_from_slice(key.as_bytes());
                Key::Inline { len, bytes }
            }
            _ => Key::Shared(Arc::from(key)),
        }
    }

    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Shared(s) => s.as_bytes(),
        }
    }

    /// The name as handed out in leases and lock info.
    pub(crate) fn to_arc(&self) -> Arc<str> {
        match self {
            // Built from a `str` cut at its end: always valid UTF-8.
            Key::Inline { .. } => Arc::from(std::str::from_utf8(self.as_bytes()).unwrap_or_default()),
            Key::Shared(s) => s.clone(),
        }
    }

    pub(crate) fn starts_with(&self, prefix: &str) -> bool {
        self.as_bytes().starts_with(prefix.as_bytes())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    #[inline]
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

/// Lookups by `key.as_bytes()`: consistent with `Ord`, and needs no UTF-8 check.
impl Borrow<[u8]> for Key {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_inline_long_ones_shared_and_both_round_trip() {
        for (name, inline) in [("", true), ("payment:42", true), (&*"k".repeat(INLINE), true), ("ключ:ä", true)] {
            let k = Key::new(name);
            assert_eq!(matches!(k, Key::Inline { .. }), inline);
            assert_eq!(&*k.to_arc(), name);
        }
        let long = "x".repeat(INLINE + 1);
        let k = Key::new(&long);
        assert!(matches!(k, Key::Shared(_)));
        assert_eq!(&*k.to_arc(), long);
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }

    #[test]
    fn keys_order_as_str_does_across_inline_and_shared() {
        let names = ["", "a", "a:b", "ab", "b", &"a".repeat(30), &"a".repeat(22), "é", &"z".repeat(40)];
        for x in names {
            for y in names {
                assert_eq!(Key::new(x).cmp(&Key::new(y)), x.cmp(y), "{x:?} vs {y:?}");
            }
        }
        assert!(Key::new("pay:12").starts_with("pay:"));
        assert!(!Key::new("pa").starts_with("pay:"));
    }
}
