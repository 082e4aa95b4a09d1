//! Histories of client operations against turnstile, and a checker for the
//! lock model: what a chaos run hands back as evidence.
//!
//! A [`Recorder`] stamps every operation's invocation and completion on one
//! monotonic clock (an `Instant` base shared by all its clones). [`check`]
//! then judges the [`History`] by three rules (docs/design.md, G1, G2, G5 and
//! the client clock rule):
//! - **No overlap.** A holder's validity interval starts when its successful
//!   Acquire completes (when it learns it holds) and ends at the earlier of the
//!   invocation of its Release and `send time + ttl` of its latest successful
//!   Acquire or Renew (the clock rule counts from the send, not the reply). Two
//!   holders of different tokens on one key never overlap.
//! - **Tokens grow.** A grant invoked after another grant on the key completed
//!   has a larger token, unless it is the same lease refreshed (G5: same owner,
//!   same token, not proven ended in between); two owners never share a token.
//! - **Fenced writes.** Storage never accepts a write whose token is smaller
//!   than one it accepted (completed) before the write was sent.
//! - **No unacknowledged extension.** A lease observed with GetLock never
//!   expires later than its latest acknowledged grant, refresh or renew
//!   allows (completion + ttl): a renew that failed (for example because
//!   the state file could not be written) must have changed nothing.
//!
//! Recorded times err on the safe side: an invocation is stamped before the
//! request is sent and a completion after the reply is read, so intervals
//! are never recorded longer than the client could believe them.
//! An indeterminate Acquire (timed out, connection lost) may have been
//! granted, but its client never learned so and never acted: it has no
//! interval. A violation is reported with the few operations that show it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Acquire the key for `ttl`, waiting up to `wait` (zero: try once).
    Acquire {
        /// The TTL asked for.
        ttl: Duration,
        /// The wait timeout asked for.
        wait: Duration,
    },
    /// Renew the lease with `token` for `ttl`.
    Renew {
        /// The lease's fencing token.
        token: u64,
        /// The TTL asked for.
        ttl: Duration,
    },
    /// Release the lease with `token`.
    Release {
        /// The lease's fencing token.
        token: u64,
    },
    /// A write to fenced storage carrying `token`.
    FencedWrite {
        /// The writer's fencing token.
        token: u64,
    },
    /// GetLock: who holds the key, and for how long still.
    GetLock,
}

/// Why the outcome of an operation is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indeterminacy {
    /// The client gave up waiting for the reply.
    TimedOut,
    /// The connection broke after the request may have been sent.
    ConnectionLost,
    /// The server said its backend (etcd) did not answer: the change may
    /// have reached the backend although the call failed.
    BackendUnreachable,
}

/// A gRPC status code, by number (`tonic::Code as i32`), printed by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCode(pub i32);

impl GrpcCode {
    /// `NOT_FOUND`: a renew of a lease that has ended.
    pub const NOT_FOUND: GrpcCode = GrpcCode(5);
    /// `UNAVAILABLE`: shutting down, recovering, or the backend is unreachable.
    pub const UNAVAILABLE: GrpcCode = GrpcCode(14);
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        match usize::try_from(self.0).ok().and_then(|i| NAMES.get(i)) {
            Some(name) => f.write_str(name),
            None => write!(f, "code {}", self.0),
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acquire: the lease is held, with this token and the TTL actually granted.
    Granted {
        /// The fencing token.
        token: u64,
        /// The TTL granted (after clamping).
        ttl: Duration,
    },
    /// Acquire: not granted (contended try-lock, or the wait timed out).
    NotAcquired,
    /// Renew: extended by the TTL granted.
    Renewed {
        /// The TTL granted.
        ttl: Duration,
    },
    /// Release: whether the lease was still live.
    Released {
        /// `false`: it had already ended.
        released: bool,
    },
    /// FencedWrite: storage took it.
    WriteAccepted,
    /// FencedWrite: storage refused it (a larger token was seen).
    WriteRejected,
    /// GetLock: the holder the server reported, if any.
    Observed {
        /// `None`: the key was free.
        holder: Option<Observed>,
    },
    /// A definite failure reported by the server.
    Failed {
        /// The status code.
        code: GrpcCode,
        /// The status message.
        message: String,
    },
    /// Unknown: an Acquire in this state MAY have been granted.
    Indeterminate(Indeterminacy),
}

/// A holder as GetLock reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Its owner.
    pub owner: String,
    /// Its fencing token.
    pub token: u64,
    /// The time it had left when the server answered.
    pub expires_in: Duration,
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Its position in the history.
    pub index: usize,
    /// The client process (task) that ran it; one operation at a time each.
    pub process: u32,
    /// The lock key.
    pub key: String,
    /// The owner string the client acquires as.
    pub owner: String,
    /// What was asked.
    pub op: Op,
    /// When it was sent, since the recorder's base.
    pub invoked: Duration,
    /// When it ended and how; `None` while in flight (then it is indeterminate).
    pub completed: Option<(Duration, Outcome)>,
}

impl Operation {
    fn outcome(&self) -> Option<&Outcome> {
        self.completed.as_ref().map(|(_, o)| o)
    }

    /// Completion time; an operation still in flight never completes.
    fn completed_at(&self) -> Duration {
        self.completed.as_ref().map_or(Duration::MAX, |(t, _)| *t)
    }

    fn token(&self) -> Option<u64> {
        match (&self.op, self.outcome()) {
            (Op::Acquire { .. }, Some(Outcome::Granted { token, .. })) => Some(*token),
            (Op::Renew { token, .. } | Op::Release { token } | Op::FencedWrite { token }, _) => Some(*token),
            _ => None,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{:<5} p{:<3} {:<6} key={:<8} [{:>10.3} .. ",
            self.index,
            self.process,
            self.owner,
            self.key,
            ms(self.invoked)
        )?;
        match &self.completed {
            Some((t, _)) => write!(f, "{:>10.3} ms] ", ms(*t))?,
            None => write!(f, "{:>10} ms] ", "…")?,
        }
        match &self.op {
            Op::Acquire { ttl, wait } => write!(f, "acquire ttl={ttl:?} wait={wait:?}")?,
            Op::Renew { token, ttl } => write!(f, "renew token={token} ttl={ttl:?}")?,
            Op::Release { token } => write!(f, "release token={token}")?,
            Op::FencedWrite { token } => write!(f, "fenced-write token={token}")?,
            Op::GetLock => f.write_str("get-lock")?,
        }
        f.write_str(" -> ")?;
        match self.outcome() {
            None => f.write_str("in flight (indeterminate)"),
            Some(Outcome::Granted { token, ttl }) => write!(f, "granted token={token} ttl={ttl:?}"),
            Some(Outcome::NotAcquired) => f.write_str("not acquired"),
            Some(Outcome::Renewed { ttl }) => write!(f, "renewed ttl={ttl:?}"),
            Some(Outcome::Released { released }) => write!(f, "released={released}"),
            Some(Outcome::WriteAccepted) => f.write_str("write accepted"),
            Some(Outcome::WriteRejected) => f.write_str("write rejected"),
            Some(Outcome::Observed { holder: None }) => f.write_str("free"),
            Some(Outcome::Observed { holder: Some(h) }) => {
                write!(f, "held by {} token={} expires_in={:.3} ms", h.owner, h.token, ms(h.expires_in))
            }
            Some(Outcome::Failed { code, message }) => write!(f, "failed {code}: {message}"),
            Some(Outcome::Indeterminate(Indeterminacy::TimedOut)) => f.write_str("indeterminate (timed out)"),
            Some(Outcome::Indeterminate(Indeterminacy::ConnectionLost)) => {
                f.write_str("indeterminate (connection lost)")
            }
            Some(Outcome::Indeterminate(Indeterminacy::BackendUnreachable)) => {
                f.write_str("indeterminate (backend unreachable)")
            }
        }
    }
}

/// A sequence of operations, in invocation order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The operations; `ops[i].index == i` for recorded histories.
    pub ops: Vec<Operation>,
}

impl History {
    /// Appends an operation (for hand-made histories); sets its index.
    pub fn push(&mut self, mut op: Operation) -> &mut Self {
        op.index = self.ops.len();
        self.ops.push(op);
        self
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for op in &self.ops {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

/// Records operations from any number of tasks on one monotonic clock.
/// Cheap to clone; every clone shares the clock and the log.
#[derive(Debug, Clone)]
pub struct Recorder {
    base: Instant,
    // A std Mutex: held only to push or update one entry, never across an await.
    ops: Arc<Mutex<Vec<Operation>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// An invoked operation awaiting its outcome. Dropped without
/// [`Pending::complete`], the operation stays in flight (indeterminate).
#[must_use = "complete the operation with its outcome"]
#[derive(Debug)]
pub struct Pending {
    recorder: Recorder,
    index: usize,
}

impl Pending {
    /// Records the outcome, stamped now.
    pub fn complete(self, outcome: Outcome) -> Operation {
        let now = self.recorder.now();
        let mut ops = self.recorder.ops.lock().expect("recorder lock");
        let op = &mut ops[self.index];
        op.completed = Some((now, outcome));
        op.clone()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder { base: Instant::now(), ops: Arc::default() }
    }

    /// Time since the recorder's base.
    pub fn now(&self) -> Duration {
        self.base.elapsed()
    }

    /// Records that `process` sends `op` now; call right before sending.
    pub fn invoke(&self, process: u32, key: &str, owner: &str, op: Op) -> Pending {
        let mut ops = self.ops.lock().expect("recorder lock");
        // Stamped under the lock, so invocation order is index order.
        let invoked = self.now();
        let index = ops.len();
        ops.push(Operation { index, process, key: key.into(), owner: owner.into(), op, invoked, completed: None });
        Pending { recorder: self.clone(), index }
    }

    /// A copy of everything recorded so far.
    pub fn history(&self) -> History {
        History { ops: self.ops.lock().expect("recorder lock").clone() }
    }
}

/// Figures of a history that passed the check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Operations recorded.
    pub ops: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Distinct leases granted (key, token).
    pub grants: usize,
    /// Acquires that returned a lease the owner already had (G5).
    pub refreshes: usize,
    /// Leases granted to a new owner after the previous one ended without a release.
    pub takeovers: usize,
    /// Successful renews.
    pub renewals: usize,
    /// Releases that found the lease live.
    pub releases: usize,
    /// Acquires not granted (contended or wait timed out).
    pub not_acquired: usize,
    /// Fenced writes storage accepted.
    pub writes_accepted: usize,
    /// Fenced writes storage refused.
    pub writes_rejected: usize,
    /// GetLock observations (each checked against the acknowledged extensions).
    pub observations: usize,
    /// Definite failures reported by the server.
    pub failed: usize,
    /// Timed out, connection lost, or still in flight.
    pub indeterminate: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops on {} keys: {} grants ({} takeovers after expiry, {} G5 refreshes), {} renewals, {} releases, \
             {} not acquired, writes {} accepted / {} rejected, {} observations, {} failed, {} indeterminate",
            self.ops,
            self.keys,
            self.grants,
            self.takeovers,
            self.refreshes,
            self.renewals,
            self.releases,
            self.not_acquired,
            self.writes_accepted,
            self.writes_rejected,
            self.observations,
            self.failed,
            self.indeterminate
        )
    }
}

/// Which rule a history broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// Two holders with different tokens were valid at once (G1).
    Overlap {
        /// Token of the holder whose interval began first.
        first: u64,
        /// Token of the holder that began while the first was valid.
        second: u64,
        /// How long both were valid.
        both_for: Duration,
    },
    /// One token granted as two different leases (G2).
    TokenReuse {
        /// The token.
        token: u64,
    },
    /// A grant after another grant got a smaller token (G2).
    TokenDecrease {
        /// The token granted first.
        earlier: u64,
        /// The smaller token granted after it.
        later: u64,
    },
    /// Storage accepted a write with a token smaller than one it had accepted.
    StaleWriteAccepted {
        /// The larger token accepted first.
        newer: u64,
        /// The smaller token accepted after it.
        stale: u64,
    },
    /// GetLock showed a lease expiring later than any acknowledged grant or
    /// renew allows: a failed renew (or refresh) was applied after all.
    UnacknowledgedExtension {
        /// The lease's token.
        token: u64,
        /// How much later than allowed it expires (at least).
        beyond: Duration,
    },
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViolationKind::Overlap { first, second, both_for } => write!(
                f,
                "overlap: holders of token {first} and token {second} were both valid for {:.3} ms",
                ms(*both_for)
            ),
            ViolationKind::TokenReuse { token } => write!(f, "token reuse: token {token} granted as two leases"),
            ViolationKind::TokenDecrease { earlier, later } => {
                write!(f, "token decrease: token {later} granted after token {earlier}")
            }
            ViolationKind::StaleWriteAccepted { newer, stale } => {
                write!(f, "stale write accepted: token {stale} accepted after token {newer}")
            }
            ViolationKind::UnacknowledgedExtension { token, beyond } => write!(
                f,
                "unacknowledged extension: lease token {token} expires at least {:.3} ms later than its acknowledged grants and renews allow",
                ms(*beyond)
            ),
        }
    }
}

/// A broken rule, with the smallest sub-history that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule and the tokens involved.
    pub kind: ViolationKind,
    /// The key it happened on.
    pub key: String,
    /// Just the operations involved, in invocation order.
    pub ops: History,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "VIOLATION on key {:?}: {}", self.key, self.kind)?;
        write!(f, "{}", self.ops)
    }
}

impl std::error::Error for Violation {}

impl Violation {
    fn new(kind: ViolationKind, key: &str, mut ops: Vec<&Operation>) -> Violation {
        ops.sort_by_key(|o| (o.invoked, o.index));
        ops.dedup_by_key(|o| o.index);
        Violation { kind, key: key.into(), ops: History { ops: ops.into_iter().cloned().collect() } }
    }

    /// When the violation became visible: the latest invocation among its operations.
    fn at(&self) -> Duration {
        self.ops.ops.iter().map(|o| o.invoked).max().unwrap_or_default()
    }
}

/// Checks a history against the lock model; on failure returns the
/// earliest violation found, with just the operations that show it.
pub fn check(history: &History) -> Result<Summary, Violation> {
    let mut by_key: HashMap<&str, Vec<&Operation>> = HashMap::new();
    for op in &history.ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut summary = Summary { ops: history.ops.len(), keys: by_key.len(), ..Summary::default() };
    let mut violations = Vec::new();
    for (key, ops) in &by_key {
        count(ops, &mut summary);
        violations.extend(check_tokens(key, ops));
        violations.extend(check_overlap(key, ops));
        violations.extend(check_writes(key, ops));
        violations.extend(check_observations(key, ops));
    }
    match violations.into_iter().min_by_key(|v| (v.at(), v.key.clone())) {
        Some(v) => Err(v),
        None => Ok(summary),
    }
}

fn count(ops: &[&Operation], s: &mut Summary) {
    let mut leases: HashMap<u64, (&str, bool)> = HashMap::new(); // token -> (owner, released)
    for op in ops {
        match op.outcome() {
            Some(Outcome::Granted { token, .. }) => {
                if leases.insert(*token, (&op.owner, false)).is_some() {
                    s.refreshes += 1;
                }
            }
            Some(Outcome::NotAcquired) => s.not_acquired += 1,
            Some(Outcome::Renewed { .. }) => s.renewals += 1,
            Some(Outcome::Released { released }) => s.releases += usize::from(*released),
            Some(Outcome::WriteAccepted) => s.writes_accepted += 1,
            Some(Outcome::WriteRejected) => s.writes_rejected += 1,
            Some(Outcome::Observed { .. }) => s.observations += 1,
            Some(Outcome::Failed { .. }) => s.failed += 1,
            Some(Outcome::Indeterminate(_)) | None => s.indeterminate += 1,
        }
    }
    for op in ops {
        if let (Op::Release { token }, Some(Outcome::Released { released: true })) = (&op.op, op.outcome()) {
            if let Some(l) = leases.get_mut(token) {
                l.1 = true;
            }
        }
    }
    let mut sorted: Vec<_> = leases.into_iter().collect();
    sorted.sort_by_key(|(t, _)| *t);
    s.grants += sorted.len();
    s.takeovers += sorted.windows(2).filter(|w| w[0].1 .0 != w[1].1 .0 && !w[0].1 .1).count();
}

/// Successful grants on one key, and what proves a lease ended.
fn check_tokens(key: &str, ops: &[&Operation]) -> Vec<Violation> {
    let grants: Vec<&Operation> =
        ops.iter().copied().filter(|o| matches!(o.outcome(), Some(Outcome::Granted { .. }))).collect();
    let token = |o: &Operation| o.token().unwrap_or_default();
    let mut out = Vec::new();

    // Two owners never share a token.
    let mut first: HashMap<u64, &Operation> = HashMap::new();
    for g in &grants {
        match first.get(&token(g)) {
            Some(f) if f.owner != g.owner => {
                out.push(Violation::new(ViolationKind::TokenReuse { token: token(g) }, key, vec![f, g]));
            }
            Some(_) => {}
            None => {
                first.insert(token(g), g);
            }
        }
    }

    // A lease proven ended (released, or a renew answered NOT_FOUND) is never granted again.
    for end in ops {
        let proven = match (&end.op, end.outcome()) {
            (Op::Release { .. }, Some(Outcome::Released { released: true })) => true,
            (Op::Renew { .. }, Some(Outcome::Failed { code, .. })) => *code == GrpcCode::NOT_FOUND,
            _ => false,
        };
        if !proven {
            continue;
        }
        let t = token(end);
        if let Some(again) = grants.iter().find(|g| token(g) == t && g.invoked > end.completed_at()) {
            let before = first.get(&t).copied().unwrap_or(again);
            out.push(Violation::new(ViolationKind::TokenReuse { token: t }, key, vec![before, end, again]));
        }
    }

    // A grant invoked after another completed has a token at least as large
    // (equal only for the same lease, handled above).
    let mut by_completion = grants.clone();
    by_completion.sort_by_key(|o| o.completed_at());
    let mut prefix_max: Vec<&Operation> = Vec::with_capacity(by_completion.len());
    for g in &by_completion {
        let best = match prefix_max.last() {
            Some(m) if token(m) >= token(g) => *m,
            _ => *g,
        };
        prefix_max.push(best);
    }
    for g in &grants {
        let before = by_completion.partition_point(|o| o.completed_at() < g.invoked);
        if let Some(m) = before.checked_sub(1).map(|i| prefix_max[i]) {
            if token(m) > token(g) {
                let kind = ViolationKind::TokenDecrease { earlier: token(m), later: token(g) };
                out.push(Violation::new(kind, key, vec![m, g]));
            }
        }
    }
    out
}

/// One holder's validity interval: from learning it holds to the end its
/// client may count on.
#[derive(Debug, Clone, Copy)]
struct Interval<'a> {
    token: u64,
    start: Duration,
    end: Duration,
    start_op: &'a Operation,
    end_op: &'a Operation,
}

/// The validity intervals of each process's holds on one key, walking each
/// process's operations in order.
fn intervals<'a>(ops: &[&'a Operation]) -> Vec<Interval<'a>> {
    let mut per_process: HashMap<u32, Vec<&'a Operation>> = HashMap::new();
    for op in ops {
        per_process.entry(op.process).or_default().push(op);
    }
    let mut out = Vec::new();
    for ops in per_process.values_mut() {
        ops.sort_by_key(|o| (o.invoked, o.index));
        let mut current: Option<Interval<'a>> = None;
        for &op in ops.iter() {
            match (&op.op, op.outcome()) {
                (Op::Acquire { .. }, Some(Outcome::Granted { token, ttl })) => {
                    let end = op.invoked + *ttl;
                    match &mut current {
                        // G5 refresh while still valid: the same hold, extended.
                        Some(c) if c.token == *token && op.invoked <= c.end => {
                            if end > c.end {
                                c.end = end;
                                c.end_op = op;
                            }
                        }
                        _ => {
                            out.extend(current.take());
                            let start = op.completed_at();
                            current = Some(Interval { token: *token, start, end, start_op: op, end_op: op });
                        }
                    }
                }
                (Op::Renew { token, .. }, Some(Outcome::Renewed { ttl })) => {
                    let end = op.invoked + *ttl;
                    match &mut current {
                        Some(c) if c.token == *token && op.invoked <= c.end => {
                            if end > c.end {
                                c.end = end;
                                c.end_op = op;
                            }
                        }
                        // Renewed after the client's own end: a new hold from the reply.
                        _ => {
                            out.extend(current.take());
                            let start = op.completed_at();
                            current = Some(Interval { token: *token, start, end, start_op: op, end_op: op });
                        }
                    }
                }
                // Sending a release ends the hold, whatever the answer.
                (Op::Release { token }, _) => {
                    if let Some(mut c) = current.take_if(|c| c.token == *token) {
                        if op.invoked < c.end {
                            c.end = op.invoked;
                            c.end_op = op;
                        }
                        out.push(c);
                    }
                }
                _ => {}
            }
        }
        out.extend(current);
    }
    out.retain(|i| i.start < i.end);
    out
}

/// No two holders with different tokens valid at once.
fn check_overlap(key: &str, ops: &[&Operation]) -> Option<Violation> {
    let mut ivs = intervals(ops);
    ivs.sort_by_key(|i| (i.start, i.start_op.index));
    let mut reaching: Option<Interval<'_>> = None; // the interval reaching furthest so far
    for i in ivs {
        if let Some(r) = reaching {
            if r.token != i.token && i.start < r.end {
                let kind =
                    ViolationKind::Overlap { first: r.token, second: i.token, both_for: r.end.min(i.end) - i.start };
                return Some(Violation::new(kind, key, vec![r.start_op, r.end_op, i.start_op]));
            }
        }
        if reaching.is_none_or(|r| i.end > r.end) {
            reaching = Some(i);
        }
    }
    None
}

/// Storage never accepts a token smaller than one it accepted before.
fn check_writes(key: &str, ops: &[&Operation]) -> Option<Violation> {
    let mut accepted: Vec<&Operation> = ops
        .iter()
        .copied()
        .filter(|o| matches!(o.op, Op::FencedWrite { .. }) && o.outcome() == Some(&Outcome::WriteAccepted))
        .collect();
    accepted.sort_by_key(|o| o.completed_at());
    let token = |o: &Operation| o.token().unwrap_or_default();
    let mut prefix_max: Vec<&Operation> = Vec::with_capacity(accepted.len());
    for w in &accepted {
        let best = match prefix_max.last() {
            Some(m) if token(m) >= token(w) => *m,
            _ => *w,
        };
        prefix_max.push(best);
    }
    let mut by_invocation = accepted.clone();
    by_invocation.sort_by_key(|o| o.invoked);
    for w in by_invocation {
        let before = accepted.partition_point(|o| o.completed_at() < w.invoked);
        if let Some(m) = before.checked_sub(1).map(|i| prefix_max[i]) {
            if token(m) > token(w) {
                let kind = ViolationKind::StaleWriteAccepted { newer: token(m), stale: token(w) };
                return Some(Violation::new(kind, key, vec![m, w]));
            }
        }
    }
    None
}

/// How much later than allowed an observed expiry may look: the server's
/// and the recorder's readings of the one monotonic clock, and a snapshot's
/// wall-clock milliseconds across a graceful restart, each round a little.
const OBSERVATION_SLACK: Duration = Duration::from_millis(5);

/// A lease seen with GetLock expires no later than its acknowledged grants,
/// refreshes and renews allow (each: completion + ttl). Not judged when some
/// extension of it is unknown (an indeterminate renew of it, or an
/// indeterminate acquire by its owner, which may have been a refresh,
/// invoked before the observation completed) or when no grant of it was
/// acknowledged.
fn check_observations(key: &str, ops: &[&Operation]) -> Option<Violation> {
    for &obs in ops {
        let (Op::GetLock, Some(Outcome::Observed { holder: Some(h) })) = (&obs.op, obs.outcome()) else { continue };
        let mut bound: Option<(Duration, &Operation)> = None;
        let mut unknown = false;
        let mut failed: Vec<&Operation> = Vec::new();
        for &o in ops.iter().filter(|o| o.invoked < obs.completed_at()) {
            let ends = match (&o.op, o.outcome()) {
                (Op::Acquire { .. }, Some(Outcome::Granted { token, ttl })) if *token == h.token => {
                    Some(o.completed_at() + *ttl)
                }
                (Op::Renew { token, .. }, Some(Outcome::Renewed { ttl })) if *token == h.token => {
                    Some(o.completed_at() + *ttl)
                }
                (Op::Renew { token, .. }, None | Some(Outcome::Indeterminate(_))) if *token == h.token => {
                    unknown = true;
                    None
                }
                (Op::Acquire { .. }, None | Some(Outcome::Indeterminate(_))) if o.owner == h.owner => {
                    unknown = true;
                    None
                }
                (Op::Renew { token, .. }, Some(Outcome::Failed { .. })) if *token == h.token => {
                    failed.push(o);
                    None
                }
                (Op::Acquire { .. }, Some(Outcome::Failed { .. })) if o.owner == h.owner => {
                    failed.push(o);
                    None
                }
                _ => None,
            };
            if let Some(end) = ends {
                if bound.is_none_or(|(b, _)| end > b) {
                    bound = Some((end, o));
                }
            }
        }
        let Some((allowed, by)) = bound.filter(|_| !unknown) else { continue };
        let seen = obs.invoked + h.expires_in;
        if seen > allowed + OBSERVATION_SLACK {
            let kind = ViolationKind::UnacknowledgedExtension { token: h.token, beyond: seen - allowed };
            let mut shown = vec![by, obs];
            shown.extend(failed);
            return Some(Violation::new(kind, key, shown));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// A hand-made history: `op(process, owner, op, invoked ms, completed ms, outcome)`.
    struct H(History);

    impl H {
        fn new() -> H {
            H(History::default())
        }

        fn op(mut self, process: u32, owner: &str, op: Op, at: (u64, u64), outcome: Outcome) -> H {
            let completed = Some((t(at.1), outcome));
            self.0.push(Operation {
                index: 0,
                process,
                key: "k".into(),
                owner: owner.into(),
                op,
                invoked: t(at.0),
                completed,
            });
            self
        }

        fn acquire(self, p: u32, owner: &str, at: (u64, u64), outcome: Outcome) -> H {
            self.op(p, owner, Op::Acquire { ttl: t(100), wait: t(1000) }, at, outcome)
        }

        fn release(self, p: u32, owner: &str, token: u64, at: (u64, u64)) -> H {
            self.op(p, owner, Op::Release { token }, at, Outcome::Released { released: true })
        }

        fn write(self, p: u32, owner: &str, token: u64, at: (u64, u64), accepted: bool) -> H {
            let outcome = if accepted { Outcome::WriteAccepted } else { Outcome::WriteRejected };
            self.op(p, owner, Op::FencedWrite { token }, at, outcome)
        }

        fn check(&self) -> Result<Summary, Violation> {
            check(&self.0)
        }
    }

    fn granted(token: u64) -> Outcome {
        Outcome::Granted { token, ttl: t(100) }
    }

    #[test]
    fn sequential_holders_pass() {
        let h = H::new()
            .acquire(1, "a", (0, 2), granted(1))
            .write(1, "a", 1, (3, 4), true)
            .release(1, "a", 1, (5, 6))
            .acquire(2, "b", (1, 7), granted(2))
            .write(2, "b", 2, (8, 9), true)
            .release(2, "b", 2, (10, 11));
        let s = h.check().unwrap_or_else(|v| panic!("{v}"));
        assert_eq!((s.grants, s.releases, s.writes_accepted, s.takeovers), (2, 2, 2, 0));
    }

    #[test]
    fn expiry_then_takeover_passes_and_the_stale_write_is_rejected() {
        // a's validity ends at 0 + 100 ms (its send time + ttl); b is granted after.
        let h = H::new()
            .acquire(1, "a", (0, 5), granted(1))
            .acquire(2, "b", (10, 101), granted(2))
            .write(2, "b", 2, (102, 103), true)
            .write(1, "a", 1, (150, 151), false)
            .op(
                1,
                "a",
                Op::Renew { token: 1, ttl: t(100) },
                (152, 153),
                Outcome::Failed { code: GrpcCode::NOT_FOUND, message: "lease ended".into() },
            );
        let s = h.check().unwrap_or_else(|v| panic!("{v}"));
        assert_eq!((s.grants, s.takeovers, s.writes_rejected, s.failed), (2, 1, 1, 1));
    }

    #[test]
    fn g5_refresh_is_the_same_lease_and_extends_validity() {
        // Refresh at 80 ms carries a's validity to 180 ms; b's grant completes after.
        let h = H::new()
            .acquire(1, "a", (0, 2), granted(7))
            .acquire(1, "a", (80, 82), granted(7))
            .op(1, "a", Op::Renew { token: 7, ttl: t(100) }, (150, 151), Outcome::Renewed { ttl: t(100) })
            .release(1, "a", 7, (200, 201))
            .acquire(2, "b", (190, 202), granted(8));
        let s = h.check().unwrap_or_else(|v| panic!("{v}"));
        assert_eq!((s.grants, s.refreshes, s.renewals), (2, 1, 1));
    }

    #[test]
    fn indeterminate_acquire_that_never_acted_passes() {
        // a's acquire timed out (it may have been granted token 1 and run out);
        // a never learned it held, so b's grant overlaps nothing.
        let h = H::new()
            .acquire(1, "a", (0, 50), Outcome::Indeterminate(Indeterminacy::TimedOut))
            .acquire(2, "b", (10, 20), Outcome::NotAcquired)
            .acquire(2, "b", (30, 120), granted(2))
            .write(2, "b", 2, (121, 122), true)
            .release(2, "b", 2, (123, 124))
            .op(
                3,
                "c",
                Op::Acquire { ttl: t(100), wait: t(0) },
                (125, 126),
                Outcome::Failed { code: GrpcCode::UNAVAILABLE, message: "recovering".into() },
            );
        let s = h.check().unwrap_or_else(|v| panic!("{v}"));
        assert_eq!((s.indeterminate, s.not_acquired, s.grants, s.failed), (1, 1, 1, 1));
    }

    #[test]
    fn a_recorded_history_has_ordered_stamps_and_in_flight_ops() {
        let r = Recorder::new();
        let p = r.invoke(1, "k", "a", Op::Acquire { ttl: t(100), wait: t(0) });
        let _never = r.clone().invoke(2, "k", "b", Op::Acquire { ttl: t(100), wait: t(0) });
        let done = p.complete(granted(1));
        let h = r.history();
        assert_eq!(h.ops.len(), 2);
        assert_eq!(h.ops[0], done);
        assert!(h.ops[0].invoked <= h.ops[1].invoked && h.ops[0].completed_at() >= h.ops[1].invoked);
        assert!(h.ops[1].completed.is_none());
        assert_eq!(check(&h).expect("passes").indeterminate, 1);
        assert!(h.to_string().contains("in flight"), "{h}");
    }

    fn expect_violation(h: &H) -> Violation {
        let v = h.check().expect_err("must fail");
        let printed = v.to_string();
        for op in &v.ops.ops {
            assert!(
                printed.contains(&format!("#{:<5}", op.index)),
                "printed sub-history names op #{}: {printed}",
                op.index
            );
        }
        v
    }

    #[test]
    fn overlapping_holders_fail() {
        // b is granted at 50 ms while a is valid until 100 ms.
        let h = H::new()
            .acquire(1, "a", (0, 5), granted(1))
            .write(1, "a", 1, (6, 7), true)
            .acquire(2, "b", (40, 50), granted(2))
            .release(1, "a", 1, (90, 91))
            .release(2, "b", 2, (95, 96));
        let v = expect_violation(&h);
        assert_eq!(v.kind, ViolationKind::Overlap { first: 1, second: 2, both_for: t(40) });
        let idx: Vec<usize> = v.ops.ops.iter().map(|o| o.index).collect();
        assert_eq!(idx, vec![0, 2, 3], "a's grant, b's grant, a's release: {v}");
        assert!(v.to_string().contains("overlap") && v.to_string().contains("release token=1"), "{v}");
    }

    #[test]
    fn token_reuse_by_two_owners_fails() {
        let h =
            H::new().acquire(1, "a", (0, 5), granted(3)).release(1, "a", 3, (6, 7)).acquire(2, "b", (8, 9), granted(3));
        let v = expect_violation(&h);
        assert_eq!(v.kind, ViolationKind::TokenReuse { token: 3 });
        assert!(v.ops.ops.iter().any(|o| o.owner == "b"), "{v}");
    }

    #[test]
    fn token_reuse_by_the_same_owner_after_a_release_fails() {
        let h =
            H::new().acquire(1, "a", (0, 5), granted(3)).release(1, "a", 3, (6, 7)).acquire(1, "a", (8, 9), granted(3));
        let v = expect_violation(&h);
        assert_eq!(v.kind, ViolationKind::TokenReuse { token: 3 });
        assert_eq!(v.ops.ops.len(), 3, "grant, release, grant again: {v}");
    }

    #[test]
    fn token_decrease_fails() {
        // a expires at 100 ms; b's grant comes after it but with a smaller token.
        let h = H::new().acquire(1, "a", (0, 5), granted(9)).acquire(2, "b", (120, 125), granted(4));
        let v = expect_violation(&h);
        assert_eq!(v.kind, ViolationKind::TokenDecrease { earlier: 9, later: 4 });
        assert_eq!(v.ops.ops.len(), 2);
        assert!(v.to_string().contains("granted token=9") && v.to_string().contains("granted token=4"), "{v}");
    }

    #[test]
    fn stale_write_accepted_fails() {
        // a stalled past its ttl; b got token 2 and wrote; a's late write was accepted.
        let h = H::new()
            .acquire(1, "a", (0, 5), granted(1))
            .acquire(2, "b", (10, 101), granted(2))
            .write(2, "b", 2, (102, 103), true)
            .write(1, "a", 1, (150, 151), true);
        let v = expect_violation(&h);
        assert_eq!(v.kind, ViolationKind::StaleWriteAccepted { newer: 2, stale: 1 });
        let idx: Vec<usize> = v.ops.ops.iter().map(|o| o.index).collect();
        assert_eq!(idx, vec![2, 3], "{v}");
    }

    fn observed(token: u64, owner: &str, expires_in_ms: u64) -> Outcome {
        Outcome::Observed { holder: Some(Observed { owner: owner.into(), token, expires_in: t(expires_in_ms) }) }
    }

    fn failed_renew(self_: H, p: u32, owner: &str, token: u64, at: (u64, u64)) -> H {
        self_.op(
            p,
            owner,
            Op::Renew { token, ttl: t(100) },
            at,
            Outcome::Failed { code: GrpcCode::UNAVAILABLE, message: "cannot persist lock state".into() },
        )
    }

    #[test]
    fn a_failed_renew_that_changed_nothing_passes() {
        // Granted at 5 ms for 100 ms: it may expire as late as 105 ms. The
        // renew at 40 ms failed; GetLock at 50 ms sees 55 ms left (105 ms).
        let h = H::new().acquire(1, "a", (0, 5), granted(1));
        let h = failed_renew(h, 1, "a", 1, (40, 45)).op(1, "a", Op::GetLock, (50, 51), observed(1, "a", 55)).op(
            2,
            "b",
            Op::GetLock,
            (52, 53),
            Outcome::Observed { holder: None },
        );
        let s = h.check().unwrap_or_else(|v| panic!("{v}"));
        assert_eq!((s.observations, s.failed), (2, 1));
    }

    #[test]
    fn a_failed_renew_that_extended_the_lease_fails() {
        // Defect 5 of issue 9: the renew at 40 ms answered UNAVAILABLE, yet
        // GetLock at 50 ms sees the lease end at 50 + 90 = 140 ms, beyond
        // the 105 ms its acknowledged grant allows.
        let h = H::new().acquire(1, "a", (0, 5), granted(1));
        let h = failed_renew(h, 1, "a", 1, (40, 45)).op(1, "a", Op::GetLock, (50, 51), observed(1, "a", 90));
        let v = expect_violation(&h);
        assert_eq!(v.kind, ViolationKind::UnacknowledgedExtension { token: 1, beyond: t(35) });
        let idx: Vec<usize> = v.ops.ops.iter().map(|o| o.index).collect();
        assert_eq!(idx, vec![0, 1, 2], "the grant, the failed renew, the observation: {v}");
        assert!(v.to_string().contains("get-lock") && v.to_string().contains("failed UNAVAILABLE"), "{v}");
    }

    #[test]
    fn an_observation_after_an_indeterminate_renew_is_not_judged() {
        // The renew timed out: it may have been applied, so 140 ms is allowed.
        let h = H::new()
            .acquire(1, "a", (0, 5), granted(1))
            .op(1, "a", Op::Renew { token: 1, ttl: t(100) }, (40, 45), Outcome::Indeterminate(Indeterminacy::TimedOut))
            .op(1, "a", Op::GetLock, (50, 51), observed(1, "a", 90));
        h.check().unwrap_or_else(|v| panic!("{v}"));
    }

    #[test]
    fn the_earliest_violation_is_reported() {
        let h = H::new()
            .acquire(1, "a", (0, 5), granted(1))
            .acquire(2, "b", (10, 20), granted(2)) // overlap, visible at 10 ms
            .write(2, "b", 2, (21, 22), true)
            .write(1, "a", 1, (30, 31), true); // stale write, visible at 30 ms
        assert!(matches!(expect_violation(&h).kind, ViolationKind::Overlap { .. }));
    }
}
