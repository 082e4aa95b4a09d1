//! [`Batcher`]: the write transactions of concurrent calls on different keys,
//! sent to etcd as one transaction of nested transactions (group commit).
//!
//! Why: on etcd, each request costs a gRPC round and a raft entry whatever it
//! carries, so under load a sidecar that forwards every caller's write alone
//! spends most of etcd's CPU on that. The batcher sends a write at once while
//! fewer than [`IN_FLIGHT`] batches are on their way; meanwhile writes queue
//! and leave together with the next batch. Idle, it adds no latency.
//!
//! Each job keeps its own compares (a nested transaction succeeds or fails on
//! its own). A batch holds at most one job per turnstile key, because all
//! writes of one etcd transaction share one revision: two entries of one key
//! created together would share a create revision, hence a fencing token.
//! Further writes of a key in the batch go at once, each alone.
//! If etcd refuses a whole batch for one job's sake (a put on a lease that has
//! just ended), each job is sent again alone.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::client::{CallError, EtcdClient, Txn, TxnAnswer};

/// Batches on their way to etcd at once.
const IN_FLIGHT: usize = 2;
/// Jobs per batch; etcd refuses transactions of more than 128 operations
/// (`--max-txn-ops`).
const MAX_JOBS: usize = 64;

/// One caller's write transaction.
struct Job {
    key: String,
    txn: Txn,
    reply: oneshot::Sender<Result<TxnAnswer, CallError>>,
}

/// Hands write transactions to the dispatcher task, which stops once the
/// batcher is dropped and every job is answered.
pub(super) struct Batcher {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the dispatcher on the current runtime.
    pub(super) fn start(client: EtcdClient, timeout: Duration) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(client, timeout, queue));
        Batcher { jobs }
    }

    /// Runs `txn` (whose writes touch only `key`'s etcd keys), within `timeout`.
    pub(super) async fn run(&self, key: &str, txn: Txn, timeout: Duration) -> Result<TxnAnswer, CallError> {
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job { key: key.to_owned(), txn, reply }).is_err() {
            return Err(CallError::BatcherStopped);
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(res)) => res,
            // The dispatcher answers every job it takes, unless the runtime is going away.
            Ok(Err(_)) => Err(CallError::BatcherStopped),
            Err(_) => Err(CallError::TimedOut),
        }
    }
}

async fn dispatch(client: EtcdClient, timeout: Duration, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let (done_tx, mut done) = mpsc::unbounded_channel::<()>();
    let mut queue = VecDeque::new();
    let (mut in_flight, mut open) = (0, true);
    while open || !queue.is_empty() || in_flight > 0 {
        tokio::select! {
            job = jobs.recv(), if open => match job {
                Some(job) => queue.push_back(job),
                None => open = false,
            },
            Some(()) = done.recv() => in_flight -= 1,
        }
        while let Ok(job) = jobs.try_recv() {
            queue.push_back(job);
        }
        while in_flight < IN_FLIGHT && !queue.is_empty() {
            let (batch, alone) = take_batch(&mut queue);
            in_flight += 1;
            let (batch_client, done) = (client.clone(), done_tx.clone());
            tokio::spawn(async move {
                send(&batch_client, timeout, batch).await;
                let _ = done.send(());
            });
            // Another write of a key in the batch: concurrent with it anyway, so
            // it goes at once on its own rather than wait for a later batch.
            for job in alone {
                let client = client.clone();
                tokio::spawn(async move { send(&client, timeout, vec![job]).await });
            }
        }
    }
}

/// Up to [`MAX_JOBS`] queued jobs of distinct keys, oldest first, and the
/// queued jobs of keys already in the batch.
fn take_batch(queue: &mut VecDeque<Job>) -> (Vec<Job>, Vec<Job>) {
    let (mut batch, mut alone) = (Vec::new(), Vec::new());
    let mut keys = HashSet::new();
    let mut rest = VecDeque::with_capacity(queue.len());
    while let Some(job) = queue.pop_front() {
        if keys.contains(&job.key) {
            alone.push(job);
        } else if batch.len() < MAX_JOBS {
            keys.insert(job.key.clone());
            batch.push(job);
        } else {
            rest.push_back(job);
        }
    }
    *queue = rest;
    (batch, alone)
}

/// One transaction alone.
async fn send_one(client: &EtcdClient, timeout: Duration, txn: &Txn) -> Result<TxnAnswer, CallError> {
    tokio::time::timeout(timeout, client.txn(txn)).await.unwrap_or(Err(CallError::TimedOut))
}

/// Sends a batch and answers its jobs.
async fn send(client: &EtcdClient, timeout: Duration, mut batch: Vec<Job>) {
    if batch.len() == 1 {
        if let Some(job) = batch.pop() {
            let _ = job.reply.send(send_one(client, timeout, &job.txn).await);
        }
        return;
    }
    let all = Txn::batch(batch.iter().map(|j| &j.txn));
    match send_one(client, timeout, &all).await.and_then(TxnAnswer::nested) {
        Ok(answers) if answers.len() == batch.len() => {
            for (job, answer) in batch.into_iter().zip(answers) {
                let _ = job.reply.send(Ok(answer));
            }
        }
        Ok(_) => {
            for job in batch {
                let _ = job.reply.send(Err(CallError::Malformed("a different number of answers")));
            }
        }
        // etcd refused the batch itself (not the network): one job's operation
        // is at fault. Send each alone so that only that one fails.
        Err(CallError::Status(s))
            if !matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) =>
        {
            let alone = batch.into_iter().map(|job| async move {
                let _ = job.reply.send(send_one(client, timeout, &job.txn).await);
            });
            for each in alone.collect::<Vec<_>>() {
                each.await;
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}
