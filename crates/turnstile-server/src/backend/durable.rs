//! Restart safety of the memory backend (docs/design.md "Restarts"): the token
//! block and the lease horizon in `state.json`, and the lease table in
//! `snapshot.jsonl` on graceful shutdown. Files are written with fsync and an
//! atomic rename, and never on the per-grant hot path: a grant only writes
//! when it crosses the reserved token block or the persisted horizon.
//!
//! [`DurableState::open`] is the restart state machine of docs/design.md
//! ("The restart states"): from what the data dir holds it decides between a
//! fresh start, a restore from the snapshot (with any recovery hold the
//! snapshot still owes), crash recovery until the horizon, and refusal.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use turnstile_core::{Lease, Time};

use crate::clock::Clock;

const STATE_FILE: &str = "state.json";
const SNAPSHOT_FILE: &str = "snapshot.jsonl";
/// Version of `state.json` written; version 1 (no long-lease log) is read.
/// A binary that knows only version 1 refuses this file rather than ignore
/// the log.
const STATE_VERSION: u32 = 2;
/// Version of `snapshot.jsonl`.
const SNAPSHOT_VERSION: u32 = 1;

/// `state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct StateFile {
    version: u32,
    /// Bumped at every start; a snapshot only counts if written under the
    /// generation still on disk (nothing ran after it).
    generation: u64,
    /// No token at or above this value has been issued.
    token_block_end: u64,
    /// No lease shorter than `--long-lease` granted or renewed so far
    /// outlives this wall-clock instant.
    lease_horizon_unix_ms: u64,
    /// Leases longer than `--long-lease`, one by one: no lease on the key
    /// outlives the instant beside it. After a crash only these keys wait
    /// that long; every other key waits for the horizon alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    long_leases: BTreeMap<String, u64>,
}

/// How the state file covers leases (flags of `turnstiled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Fencing tokens reserved per write (`--token-block`).
    pub token_block: u64,
    /// How far beyond a new expiry the horizon is pushed (`--horizon-step`).
    pub horizon_step: Duration,
    /// Leases with a longer TTL go to the long-lease log (`--long-lease`).
    pub long_lease: Duration,
    /// Most keys in the long-lease log (`--max-long-leases`); past it a long
    /// lease is covered by the horizon, as a short one.
    pub max_long_leases: usize,
}

/// First line of `snapshot.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    version: u32,
    generation: u64,
    written_unix_ms: u64,
    leases: usize,
    /// The process stopped while still recovering from a crash: grant
    /// nothing before this wall-clock instant. Absent when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hold_grants_until_unix_ms: Option<u64>,
}

/// A snapshot as read back.
struct Snapshot {
    leases: Vec<SnapshotLease>,
    hold_grants_until_unix_ms: Option<u64>,
}

/// One lease line of `snapshot.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotLease {
    key: String,
    owner: String,
    token: u64,
    ttl_ms: u64,
    expires_unix_ms: u64,
}

/// What start-up found in the data dir.
#[derive(Debug)]
pub struct Recovered {
    /// The first token this process may issue.
    pub first_token: u64,
    /// Leases from a graceful-shutdown snapshot that have not expired.
    pub leases: Vec<Lease>,
    /// After a crash: grant nothing before this instant.
    pub grants_resume_at: Option<Time>,
    /// After a crash: grant nothing on these keys before these instants
    /// (their long leases may live until then).
    pub key_holds: Vec<(String, Time)>,
}

/// The persisted token block and lease horizon of a running server.
#[derive(Debug)]
pub struct DurableState {
    dir: PathBuf,
    clock: Clock,
    tuning: Tuning,
    token_block_end: AtomicU64,
    horizon_unix_ms: AtomicU64,
    /// The long-lease log as on disk, for [`DurableState::covers`].
    long_leases: std::sync::Mutex<BTreeMap<String, u64>>,
    /// State-file writes since start (the cost the horizon step amortises).
    writes: AtomicU64,
    /// Serialises writers; the atomics above are the lock-free fast path.
    file: tokio::sync::Mutex<StateFile>,
    /// Why the last write of the state file failed, until one succeeds
    /// (`/readyz` reports not ready meanwhile).
    write_error: std::sync::Mutex<Option<String>>,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt turnstile state file {}: {what}; refusing to start rather than reset fencing tokens (move the file away only if you know no lease of the old process can still be live)", path.display()),
    )
}

impl DurableState {
    /// Opens (creating if missing) the data dir, reads the state and any
    /// snapshot, reserves a fresh token block and persists it before
    /// returning. A corrupt file is an error, never a silent reset.
    pub fn open(dir: &Path, tuning: Tuning, clock: Clock) -> io::Result<(Arc<Self>, Recovered)> {
        let named = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what} {}: {e}", dir.display()));
        fs::create_dir_all(dir).map_err(|e| named("creating the data dir", e))?;
        let state_path = dir.join(STATE_FILE);
        let old = match fs::read(&state_path) {
            Ok(bytes) => {
                let s: StateFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(&state_path, e))?;
                if !(1..=STATE_VERSION).contains(&s.version) {
                    return Err(corrupt(&state_path, format!("unknown version {}", s.version)));
                }
                Some(s)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                refuse_leftovers_without_state(dir)?;
                None
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", state_path.display()))),
        };
        let now = clock.now();
        let now_ms = clock.unix_millis(now);
        let state = old.clone().unwrap_or(StateFile { version: STATE_VERSION, ..Default::default() });
        let snapshot = match old {
            Some(s) => read_snapshot(&dir.join(SNAPSHOT_FILE), s.generation)?,
            None => None,
        };
        let mut first_token = state.token_block_end.max(1);
        let snapshot_found = snapshot.is_some();
        let (leases, grants_resume_at) = match snapshot {
            Some(Snapshot { leases: lines, hold_grants_until_unix_ms: hold }) => {
                // Stopped while recovering: the hold it still owed goes on.
                let hold = hold.filter(|&ms| ms > now_ms).map(|ms| now + Duration::from_millis(ms - now_ms));
                let leases: Vec<Lease> = lines
                    .into_iter()
                    .filter(|l| l.expires_unix_ms > now_ms)
                    .map(|l| Lease {
                        key: l.key.into(),
                        owner: l.owner.into(),
                        token: l.token,
                        ttl: Duration::from_millis(l.ttl_ms),
                        expires_at: now + Duration::from_millis(l.expires_unix_ms - now_ms),
                        // Not persisted: the hold counts from the restore.
                        granted_at: now,
                    })
                    .collect();
                (leases, hold)
            }
            // No snapshot written by the last process: it crashed, and leases it
            // granted may live until the horizon.
            None if state.lease_horizon_unix_ms > now_ms => {
                (Vec::new(), Some(now + Duration::from_millis(state.lease_horizon_unix_ms - now_ms)))
            }
            None => (Vec::new(), None),
        };
        // The log outlives a start: a crash of this process must still hold
        // keys whose long leases the crashed one granted.
        let long_leases: BTreeMap<String, u64> =
            state.long_leases.iter().filter(|(_, &ms)| ms > now_ms).map(|(k, &ms)| (k.clone(), ms)).collect();
        let key_holds = if snapshot_found {
            Vec::new()
        } else {
            long_leases.iter().map(|(k, &ms)| (k.clone(), now + Duration::from_millis(ms - now_ms))).collect()
        };
        if let Some(max) = leases.iter().map(|l| l.token).max() {
            first_token = first_token.max(max + 1);
        }
        let next = StateFile {
            version: STATE_VERSION,
            generation: state.generation + 1,
            token_block_end: first_token.saturating_add(tuning.token_block),
            lease_horizon_unix_ms: state.lease_horizon_unix_ms,
            long_leases,
        };
        if fs::symlink_metadata(dir.join(MARKER_FILE)).is_err() {
            let text = b"This directory holds turnstiled's restart state. Do not delete state.json alone: without it turnstiled refuses to start.\n";
            write_atomic(dir, MARKER_FILE, text).map_err(|e| named("writing the marker file in the data dir", e))?;
        }
        write_atomic(dir, STATE_FILE, &serde_json::to_vec_pretty(&next)?)
            .map_err(|e| named("writing state.json in the data dir", e))?;
        // The snapshot is consumed: the generation moved on, so it could never
        // count again; removing it only keeps the dir tidy.
        match fs::remove_file(dir.join(SNAPSHOT_FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(named("removing the consumed snapshot.jsonl from the data dir", e))
            }
            _ => {}
        }
        let durable = Arc::new(DurableState {
            dir: dir.to_owned(),
            clock,
            tuning,
            token_block_end: AtomicU64::new(next.token_block_end),
            horizon_unix_ms: AtomicU64::new(next.lease_horizon_unix_ms),
            long_leases: std::sync::Mutex::new(next.long_leases.clone()),
            writes: AtomicU64::new(0),
            file: tokio::sync::Mutex::new(next),
            write_error: std::sync::Mutex::new(None),
        });
        Ok((durable, Recovered { first_token, leases, grants_resume_at, key_holds }))
    }

    /// Whether `lease` (its token, and its expiry on its key) is covered by
    /// what is on disk already. The hot path, for leases up to
    /// `--long-lease`: two atomic loads.
    pub fn covers(&self, lease: &Lease) -> bool {
        if lease.token >= self.token_block_end.load(Ordering::Acquire) {
            return false;
        }
        let expires_ms = self.clock.unix_millis(lease.expires_at);
        if expires_ms <= self.horizon_unix_ms.load(Ordering::Acquire) {
            return true;
        }
        lease.ttl > self.tuning.long_lease
            && self
                .long_leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&*lease.key)
                .is_some_and(|&ms| expires_ms <= ms)
    }

    /// Makes sure `lease`'s token lies in a persisted token block and its
    /// expiry is covered (by the horizon, or for a long lease by its key's
    /// entry in the long-lease log), writing the state file if not. Call
    /// before the client learns of a grant or renew, and before applying a
    /// renew.
    pub async fn ensure(&self, lease: &Lease) -> io::Result<()> {
        if self.covers(lease) {
            return Ok(());
        }
        let mut file = self.file.lock().await;
        let mut next = file.clone();
        if lease.token >= next.token_block_end {
            next.token_block_end = lease.token.saturating_add(self.tuning.token_block);
        }
        let now_ms = self.clock.unix_millis(self.clock.now());
        let expires_ms = self.clock.unix_millis(lease.expires_at);
        let step_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let covered = expires_ms <= next.lease_horizon_unix_ms
            || next.long_leases.get(&*lease.key).is_some_and(|&ms| expires_ms <= ms);
        if !covered {
            next.long_leases.retain(|_, ms| *ms > now_ms);
            let long = lease.ttl > self.tuning.long_lease
                && (next.long_leases.contains_key(&*lease.key) || next.long_leases.len() < self.tuning.max_long_leases);
            if long {
                // A step of a third of the TTL: a guard renewing every third
                // of it writes every other renew, and a crash holds the key
                // back at most a third of a TTL longer than its lease.
                let step = self.tuning.horizon_step.max(lease.ttl / 3);
                next.long_leases.insert(lease.key.to_string(), expires_ms.saturating_add(step_ms(step)));
            } else {
                next.lease_horizon_unix_ms = expires_ms.saturating_add(step_ms(self.tuning.horizon_step));
            }
        }
        if next == *file {
            return Ok(()); // another writer covered it while we waited
        }
        let dir = self.dir.clone();
        let bytes = serde_json::to_vec_pretty(&next)?;
        let written = tokio::task::spawn_blocking(move || write_atomic(&dir, STATE_FILE, &bytes))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
        if let Err(e) = written {
            let path = self.dir.join(STATE_FILE);
            tracing::error!(path = %path.display(), error = %e, "cannot persist the lease horizon or token block: grants and renews that need it are refused");
            *self.write_error.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("writing {}: {e}", path.display()));
            return Err(io::Error::new(e.kind(), format!("writing {}: {e}", path.display())));
        }
        if self.write_error.lock().unwrap_or_else(|p| p.into_inner()).take().is_some() {
            tracing::info!("the state file is writable again");
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.token_block_end.store(next.token_block_end, Ordering::Release);
        self.horizon_unix_ms.store(next.lease_horizon_unix_ms, Ordering::Release);
        *self.long_leases.lock().unwrap_or_else(|p| p.into_inner()) = next.long_leases.clone();
        tracing::debug!(
            token_block_end = next.token_block_end,
            horizon_unix_ms = next.lease_horizon_unix_ms,
            long_leases = next.long_leases.len(),
            "state persisted"
        );
        *file = next;
        Ok(())
    }

    /// State-file writes since start.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Why the state file cannot be written right now, if the last write failed.
    pub fn write_error(&self) -> Option<String> {
        self.write_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes the lease table for the next start, and `hold_grants_until`
    /// when the process stops while still recovering from a crash (the next
    /// start owes the same hold). Call only after the backend stopped
    /// granting: the state file must not change after it.
    pub async fn write_snapshot(&self, leases: Vec<Lease>, hold_grants_until: Option<Time>) -> io::Result<usize> {
        let file = self.file.lock().await;
        let now = self.clock.now();
        let header = SnapshotHeader {
            version: SNAPSHOT_VERSION,
            generation: file.generation,
            written_unix_ms: self.clock.unix_millis(now),
            leases: leases.len(),
            hold_grants_until_unix_ms: hold_grants_until.filter(|&t| t > now).map(|t| self.clock.unix_millis(t)),
        };
        let clock = self.clock;
        let mut buf = BufWriter::new(Vec::with_capacity(64 + leases.len() * 96));
        serde_json::to_writer(&mut buf, &header)?;
        buf.write_all(b"\n")?;
        for l in &leases {
            let line = SnapshotLease {
                key: l.key.to_string(),
                owner: l.owner.to_string(),
                token: l.token,
                ttl_ms: u64::try_from(l.ttl.as_millis()).unwrap_or(u64::MAX),
                expires_unix_ms: clock.unix_millis(l.expires_at),
            };
            serde_json::to_writer(&mut buf, &line)?;
            buf.write_all(b"\n")?;
        }
        let bytes = buf.into_inner().map_err(|e| e.into_error())?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_atomic(&dir, SNAPSHOT_FILE, &bytes))
            .await
            .map_err(io::Error::other)??;
        Ok(leases.len())
    }
}

/// The files a data dir holds once a process has run in it; none may be
/// there without `state.json`.
const LEFTOVERS: [&str; 4] = [SNAPSHOT_FILE, "snapshot.jsonl.tmp", "state.json.tmp", MARKER_FILE];

/// Written once, before the first `state.json`, and never removed: a dir
/// that has it has issued tokens, so a missing `state.json` beside it was
/// lost (after a crash nothing else may be left to tell).
const MARKER_FILE: &str = "turnstile-data-dir";

/// With `state.json` missing, the dir must be fresh: a snapshot or a
/// temporary file, or `state.json` as a dangling symlink, means the state
/// file was lost, and starting afresh would reuse fencing tokens (G2) and
/// grant keys whose holders still hold them (G1).
fn refuse_leftovers_without_state(dir: &Path) -> io::Result<()> {
    let state_path = dir.join(STATE_FILE);
    let lost = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("turnstile data dir {} has {what} but no readable {STATE_FILE}: the state file was lost, and starting afresh would reuse fencing tokens and grant held keys; refusing to start (restore {STATE_FILE} from a backup, or empty the dir only if you know no lease of the old process can still be live)", dir.display()),
        )
    };
    if fs::symlink_metadata(&state_path).is_ok() {
        return Err(lost(format!("{} as a dangling symlink", state_path.display())));
    }
    let found: Vec<&str> = LEFTOVERS.into_iter().filter(|name| fs::symlink_metadata(dir.join(name)).is_ok()).collect();
    if !found.is_empty() {
        return Err(lost(found.join(" and ")));
    }
    Ok(())
}

/// Reads `snapshot.jsonl` if present and written under `generation`.
fn read_snapshot(path: &Path, generation: u64) -> io::Result<Option<Snapshot>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))),
    };
    let mut lines = BufReader::new(file).lines();
    let header: SnapshotHeader = match lines.next() {
        Some(line) => serde_json::from_str(&line?).map_err(|e| corrupt(path, e))?,
        None => return Err(corrupt(path, "empty snapshot")),
    };
    if header.version != SNAPSHOT_VERSION {
        return Err(corrupt(path, format!("unknown version {}", header.version)));
    }
    if header.generation != generation {
        tracing::warn!(path = %path.display(), "ignoring a snapshot older than the state file (the process after it did not shut down cleanly)");
        return Ok(None);
    }
    let mut leases = Vec::with_capacity(header.leases);
    for line in lines {
        leases.push(serde_json::from_str(&line?).map_err(|e| corrupt(path, e))?);
    }
    if leases.len() != header.leases {
        return Err(corrupt(path, format!("header says {} leases, found {}", header.leases, leases.len())));
    }
    Ok(Some(Snapshot { leases, hold_grants_until_unix_ms: header.hold_grants_until_unix_ms }))
}

/// Writes `dir/name` atomically: a temporary file, fsync, rename, fsync of the dir.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("turnstile-durable-{}-{}", std::process::id(), rand_suffix()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn tuning(token_block: u64, step_secs: u64) -> Tuning {
        Tuning {
            token_block,
            horizon_step: Duration::from_secs(step_secs),
            long_lease: Duration::from_secs(60),
            max_long_leases: 2,
        }
    }

    fn lease(key: &str, token: u64, ttl: Duration, expires_at: Time) -> Lease {
        Lease { key: key.into(), owner: "o".into(), token, ttl, expires_at, granted_at: Time::ZERO }
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(0u8)
    }

    #[tokio::test]
    async fn tokens_continue_above_the_reserved_block_after_restart() {
        let d = dir();
        let (s, r) = DurableState::open(&d, tuning(100, 1), Clock::new()).unwrap();
        assert_eq!(r.first_token, 1);
        s.ensure(&lease("k", 250, Duration::ZERO, Time::ZERO)).await.unwrap();
        assert!(
            s.covers(&lease("k", 249, Duration::ZERO, Time::ZERO))
                && !s.covers(&lease("k", 350, Duration::ZERO, Time::ZERO)),
            "the block now ends at 350"
        );
        drop(s);
        let (_, r) = DurableState::open(&d, tuning(100, 1), Clock::new()).unwrap();
        assert_eq!(r.first_token, 350, "block end after reserving up to token 250");
    }

    #[tokio::test]
    async fn after_a_crash_grants_wait_for_the_horizon() {
        let d = dir();
        let clock = Clock::new();
        let (s, _) = DurableState::open(&d, tuning(100, 10), clock).unwrap();
        s.ensure(&lease("k", 1, Duration::from_secs(5), clock.now() + Duration::from_secs(5))).await.unwrap();
        assert!(s.covers(&lease("k", 1, Duration::from_secs(5), clock.now() + Duration::from_secs(14))));
        drop(s); // no snapshot: as after SIGKILL
        let clock2 = Clock::new();
        let (_, r) = DurableState::open(&d, tuning(100, 10), clock2).unwrap();
        let wait = r.grants_resume_at.expect("recovering").saturating_since(clock2.now());
        assert!(wait > Duration::from_secs(13) && wait <= Duration::from_secs(15), "{wait:?}");
    }

    #[tokio::test]
    async fn a_snapshot_restores_live_leases_once() {
        let d = dir();
        let clock = Clock::new();
        let (s, _) = DurableState::open(&d, tuning(100, 10), clock).unwrap();
        let lease = Lease {
            key: "k".into(),
            owner: "o".into(),
            token: 7,
            ttl: Duration::from_secs(30),
            expires_at: clock.now() + Duration::from_secs(30),
            granted_at: clock.now(),
        };
        s.ensure(&lease).await.unwrap();
        s.write_snapshot(vec![lease], None).await.unwrap();
        drop(s);
        let (_, r) = DurableState::open(&d, tuning(100, 10), Clock::new()).unwrap();
        assert!(r.grants_resume_at.is_none());
        assert_eq!(r.leases.len(), 1);
        assert_eq!((&*r.leases[0].key, r.leases[0].token), ("k", 7));
        // Consumed: a crash after this start must not bring the lease back.
        let (_, r) = DurableState::open(&d, tuning(100, 10), Clock::new()).unwrap();
        assert!(r.leases.is_empty());
        assert!(r.grants_resume_at.is_some());
    }

    #[test]
    fn a_data_dir_that_cannot_be_created_is_named() {
        let d = dir();
        fs::create_dir_all(&d).unwrap();
        let file = d.join("a-file");
        fs::write(&file, b"").unwrap();
        let err = DurableState::open(&file.join("sub"), tuning(100, 1), Clock::new()).unwrap_err();
        assert!(err.to_string().contains("creating the data dir") && err.to_string().contains("a-file"), "{err}");
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_a_reset() {
        let d = dir();
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(STATE_FILE), b"{not json").unwrap();
        let err = DurableState::open(&d, tuning(100, 1), Clock::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
