//! GetLock and ListLocks on etcd: a key's holder is its lowest entry, its
//! waiters the entries behind it; time left comes from this sidecar's own
//! record when it granted or last renewed the lease, else from etcd (whole
//! seconds, rounded down).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::client::{Get, KeyValue};
use super::layout::{EntryValue, Kind};
use super::{rev_token, secs, Inner};
use crate::backend::{HolderInfo, LockInfo};
use crate::error::BackendError;

/// etcd keys read per round trip while listing.
const LIST_CHUNK: i64 = 1000;

/// The state of one key.
pub(super) async fn get(inner: &Inner, key: &str) -> Result<LockInfo, BackendError> {
    let (first, count, _) = inner.head(key).await?;
    lock_info(inner, key, first.as_ref(), count).await
}

/// A key's state from its lowest entry and its number of entries.
pub(super) async fn lock_info(
    inner: &Inner,
    key: &str,
    first: Option<&KeyValue>,
    entries: usize,
) -> Result<LockInfo, BackendError> {
    let Some(kv) = first else { return Ok(LockInfo { key: key.into(), holder: None, waiters: 0 }) };
    let token = rev_token(kv.create_revision);
    let value = EntryValue::decode(&kv.value);
    let expires_in = match inner.local.expires_in(key, token, kv.lease, kv.mod_revision) {
        Some(left) => left,
        None => {
            let ttl = value.as_ref().map_or(inner.min_ttl_secs, |v| v.ttl);
            inner.lease_ttl(kv.lease, ttl).await?.map_or(Duration::ZERO, secs)
        }
    };
    let owner = value.map(|v| v.owner).unwrap_or_default();
    Ok(LockInfo {
        key: key.into(),
        holder: Some(HolderInfo { owner: owner.into(), token, expires_in }),
        waiters: u32::try_from(entries.saturating_sub(1)).unwrap_or(u32::MAX),
    })
}

/// Up to `limit` held or awaited keys starting with `prefix`, after `after`, in order.
pub(super) async fn list(
    inner: &Arc<Inner>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<LockInfo>, BackendError> {
    let (mut start, end) = inner.layout.list_range(prefix, after);
    // Entries grouped by key; etcd returns them in key order, so a key's
    // entries are adjacent. Read until a key past the limit has begun (so the
    // last one kept is complete) or the range ends.
    let mut keys: Vec<(String, Vec<KeyValue>)> = Vec::new();
    loop {
        let get = Get::range(start.clone(), end.clone()).limit(LIST_CHUNK);
        let resp = inner.call("list", inner.client.get(get)).await?;
        for kv in &resp.kvs {
            let Some((key, Kind::Entry)) = inner.layout.parse(&kv.key) else { continue };
            match keys.last_mut() {
                Some((k, entries)) if k == key => entries.push(kv.clone()),
                _ => keys.push((key.to_owned(), vec![kv.clone()])),
            }
        }
        let Some(last) = resp.kvs.last() else { break };
        if keys.len() > limit || !resp.more {
            break;
        }
        start = last.key.clone();
        start.push(0);
    }
    keys.truncate(limit);
    let mut lookups = JoinSet::new();
    for (i, (key, entries)) in keys.into_iter().enumerate() {
        let inner = inner.clone();
        lookups.spawn(async move {
            let first = entries.iter().min_by_key(|kv| kv.create_revision);
            (i, lock_info(&inner, &key, first, entries.len()).await)
        });
    }
    let mut infos = Vec::with_capacity(lookups.len());
    while let Some(done) = lookups.join_next().await {
        let (i, info) = done.map_err(|e| inner.unavailable("list", &e))?;
        infos.push((i, info?));
    }
    infos.sort_unstable_by_key(|(i, _)| *i);
    Ok(infos.into_iter().map(|(_, info)| info).collect())
}
