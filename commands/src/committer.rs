//! Provides the committer: one task per event store that commits whatever appends have
//! queued up as ONE transaction (group commit: one fsync for many commands, each still with
//! its own optimistic-concurrency check; docs/adr/0005-group-commit.md), with up to
//! `in_flight` groups committing at once: the next group forms and is sent while the one
//! before is being made durable (pipelined group commit).
//!
//! It promises that each append is decided exactly once: two appends with the same
//! idempotency key, unique claim or aggregate never share a group, nor are they in two
//! groups in flight at once (the second waits until the first is done), so an aggregate's
//! appends commit in the order they were queued, and every append gets its own outcome, or
//! its group's error.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use futures::{stream::FuturesUnordered, StreamExt as _};
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::StoreError,
    store::{AppendOutcome, EventStore, PendingAppend},
};

struct Job {
    append: PendingAppend,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// What an append holds while it waits or commits: its idempotency keys, its claims and its
/// aggregate, a tag keeping the kinds apart.
type Key = (u8, String, String);

fn keys_of(append: &PendingAppend) -> Vec<Key> {
    let idempotency = append
        .idempotency
        .iter()
        .map(|(k, _)| (0, k.scope.clone(), k.key.clone()));
    let claims = append
        .claims
        .iter()
        .map(|c| (1, c.namespace.clone(), c.value.clone()));
    let aggregate = (
        2,
        append.aggregate_type.to_owned(),
        append.aggregate_id.clone(),
    );
    idempotency.chain(claims).chain([aggregate]).collect()
}

/// The way to the committer task, which ends when the last clone of this is dropped and
/// what it holds is committed.
#[derive(Clone)]
pub(crate) struct Committer(mpsc::Sender<Job>);

impl Committer {
    /// Starts the committer on `store`, committing at most `max_group` appends together and
    /// at most `in_flight` groups at once. Must be called inside a tokio runtime.
    pub(crate) fn spawn(store: EventStore, max_group: usize, in_flight: usize) -> Self {
        let max_group = max_group.max(1);
        let (committer, jobs) = mpsc::channel(max_group * 4);
        tokio::spawn(commit_loop(store, jobs, max_group, in_flight.max(1)));
        Self(committer)
    }

    /// Commits `append` with whatever else is waiting; its own outcome.
    ///
    /// # Errors
    /// The group's store failure, or [`StoreError::CommitterGone`].
    pub(crate) async fn commit(&self, append: PendingAppend) -> Result<AppendOutcome, StoreError> {
        let _timed = Timed(std::time::Instant::now());
        let (reply, outcome) = oneshot::channel();
        self.0
            .send(Job { append, reply })
            .await
            .map_err(|_| StoreError::CommitterGone)?;
        outcome.await.map_err(|_| StoreError::CommitterGone)?
    }
}

/// The committer: forms a group of what has queued (up to `max_group`) whenever fewer than
/// `in_flight` groups are committing, and commits it beside them.
async fn commit_loop(
    store: EventStore,
    mut jobs: mpsc::Receiver<Job>,
    max_group: usize,
    in_flight: usize,
) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    // The keys of the groups committing now; each group's are its own (none is in two).
    let mut busy: HashSet<Key> = HashSet::new();
    let mut committing = FuturesUnordered::new();
    let mut open = true;
    loop {
        while committing.len() < in_flight {
            let group = form_group(&mut waiting, &mut jobs, &busy, max_group);
            if group.is_empty() {
                break;
            }
            let keys: Vec<Key> = group.iter().flat_map(|j| keys_of(&j.append)).collect();
            busy.extend(keys.iter().cloned());
            let store = store.clone();
            committing.push(async move {
                commit_group(&store, group).await;
                keys
            });
        }
        if !open && committing.is_empty() && waiting.is_empty() {
            return;
        }
        tokio::select! {
            Some(keys) = committing.next(), if !committing.is_empty() => {
                for key in keys {
                    busy.remove(&key);
                }
            }
            job = jobs.recv(), if open && committing.len() < in_flight => match job {
                Some(job) => waiting.push_back(job),
                None => open = false,
            },
        }
    }
}

/// Takes from `waiting`, then from `jobs`, the appends that may commit now (up to
/// `max_group`): none holding a key another of the group holds, or a group in flight
/// (`busy`). The others keep their places at the front of `waiting`.
fn form_group(
    waiting: &mut VecDeque<Job>,
    jobs: &mut mpsc::Receiver<Job>,
    busy: &HashSet<Key>,
    max_group: usize,
) -> Vec<Job> {
    // Two appends to one aggregate never share a group: normally the striped lock keeps
    // them apart, but a caller cancelled after queuing its append (a handler timeout, a
    // client gone) releases the lock while its append still waits here, and the next
    // command on that aggregate decides on the same version.
    let mut keys: HashSet<Key> = HashSet::new();
    let mut group = Vec::new();
    let mut deferred = Vec::new();
    while group.len() < max_group {
        let next = match waiting.pop_front() {
            Some(job) => job,
            None => match jobs.try_recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        let wanted = keys_of(&next.append);
        if wanted
            .iter()
            .all(|key| !keys.contains(key) && !busy.contains(key))
        {
            keys.extend(wanted);
            group.push(next);
        } else {
            deferred.push(next);
        }
    }
    for job in deferred.into_iter().rev() {
        waiting.push_front(job);
    }
    group
}

/// Commits `group` as one and answers each of its appends.
async fn commit_group(store: &EventStore, group: Vec<Job>) {
    let (appends, replies): (Vec<PendingAppend>, Vec<_>) =
        group.into_iter().map(|j| (j.append, j.reply)).unzip();
    metrics::histogram!("chronicle_commit_group_size").record(appends.len() as f64);
    match store.append_group(&appends).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for reply in replies {
                let _ = reply.send(Err(StoreError::Group(error.clone())));
            }
        }
    }
}

/// Records `chronicle_command_commit_seconds` when the wait for a commit ends, whatever its
/// outcome.
struct Timed(std::time::Instant);

impl Drop for Timed {
    fn drop(&mut self) {
        metrics::histogram!("chronicle_command_commit_seconds")
            .record(self.0.elapsed().as_secs_f64());
    }
}
