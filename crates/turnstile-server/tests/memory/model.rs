//! The restart states, modelled: random histories of grants, renews,
//! releases, time passing, graceful stops and crashes against the memory
//! backend on one data dir, checked against what every client was told.
//! TTLs fall on both sides of `--long-lease`, so both the shared horizon and
//! the per-key long-lease log are exercised.
//!
//! The model is the clients' view (the clock rule of docs/design.md): a
//! lease acknowledged to an owner is valid until the send time of its last
//! acknowledged grant or renew plus its TTL, whatever happens to the server
//! meanwhile. After any history, in every process lifetime:
//! - G1: a key is never granted to another owner while an acknowledged lease
//!   on it is still valid;
//! - G2: a new grant's token is greater than every token granted before on
//!   that key;
//! - G5: an owner's refresh of its own valid lease keeps its token.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use turnstile_server::backend::memory::MemoryBackend;
use turnstile_server::backend::{AcquireOutcome, Backend};

use crate::req;
use crate::restart::{crash, stop, World};

#[derive(Debug, Clone)]
enum Step {
    Acquire { key: u8, owner: u8, ttl_ms: u64 },
    Renew { key: u8, owner: u8, ttl_ms: u64 },
    Release { key: u8, owner: u8 },
    Advance { ms: u64 },
    Stop,
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    let ttl = 100u64..8_000;
    prop_oneof![
        5 => (0u8..3, 0u8..3, ttl.clone()).prop_map(|(key, owner, ttl_ms)| Step::Acquire { key, owner, ttl_ms }),
        2 => (0u8..3, 0u8..3, ttl).prop_map(|(key, owner, ttl_ms)| Step::Renew { key, owner, ttl_ms }),
        2 => (0u8..3, 0u8..3).prop_map(|(key, owner)| Step::Release { key, owner }),
        4 => (1u64..6_000).prop_map(|ms| Step::Advance { ms }),
        1 => Just(Step::Stop),
        1 => Just(Step::Crash),
    ]
}

/// An acknowledged lease, as its owner sees it.
#[derive(Debug, Clone, Copy)]
struct Held {
    owner: u8,
    token: u64,
    valid_until: Instant,
}

#[derive(Default)]
struct Model {
    /// The lease each key's owner believes it holds.
    held: HashMap<u8, Held>,
    /// The greatest token granted on each key.
    last_token: HashMap<u8, u64>,
}

async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    // Leases over 3 s go to the long-lease log, shorter ones share the horizon.
    let w = World::with(&["--long-lease", "3s"]);
    let mut b: Option<MemoryBackend> = Some(w.start());
    let mut m = Model::default();
    for (i, s) in steps.iter().enumerate() {
        let node = b.as_ref().expect("a running process");
        let now = Instant::now();
        // Beliefs past their validity are dropped: the owner stopped counting on them.
        m.held.retain(|_, h| h.valid_until > now);
        match *s {
            Step::Acquire { key, owner, ttl_ms } => {
                let ttl = Duration::from_millis(ttl_ms);
                let out = node.acquire(req(&format!("k{key}"), &format!("o{owner}"), ttl, Duration::ZERO)).await;
                if let Ok(AcquireOutcome::Acquired(g) | AcquireOutcome::Refreshed(g)) = out {
                    if let Some(h) = m.held.get(&key) {
                        prop_assert_eq!(
                            h.owner,
                            owner,
                            "G1 at step {}: k{} granted to o{} while o{} holds it with token {} until {:?} from now",
                            i,
                            key,
                            owner,
                            h.owner,
                            h.token,
                            h.valid_until - now
                        );
                        prop_assert_eq!(g.token, h.token, "G5 at step {}: a refresh changed the token", i);
                    } else {
                        let last = m.last_token.get(&key).copied().unwrap_or(0);
                        prop_assert!(
                            g.token > last,
                            "G2 at step {}: k{} granted token {} after {}",
                            i,
                            key,
                            g.token,
                            last
                        );
                    }
                    m.last_token.insert(key, g.token.max(m.last_token.get(&key).copied().unwrap_or(0)));
                    m.held.insert(key, Held { owner, token: g.token, valid_until: now + ttl });
                }
            }
            Step::Renew { key, owner, ttl_ms } => {
                if let Some(h) = m.held.get(&key).copied().filter(|h| h.owner == owner) {
                    let ttl = Duration::from_millis(ttl_ms);
                    if node.renew(format!("k{key}"), h.token, Some(ttl)).await.is_ok() {
                        m.held.insert(key, Held { valid_until: now + ttl, ..h });
                    }
                }
            }
            Step::Release { key, owner } => {
                if let Some(h) = m.held.get(&key).copied().filter(|h| h.owner == owner) {
                    // Sent: from now on the owner no longer counts on the lease.
                    m.held.remove(&key);
                    let _ = node.release(format!("k{key}"), h.token, None).await;
                }
            }
            Step::Advance { ms } => tokio::time::advance(Duration::from_millis(ms)).await,
            Step::Stop => {
                stop(b.take().expect("running")).await;
                b = Some(w.start());
            }
            Step::Crash => {
                crash(b.take().expect("running"));
                b = Some(w.start());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// G1, G2 and G5 hold over any history of operations, stops and
    /// crashes, from every client's point of view.
    #[test]
    fn restarts_never_break_what_clients_were_told(steps in proptest::collection::vec(step(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        rt.block_on(run(steps))?;
    }
}
