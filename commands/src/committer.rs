//! Provides the committer: one task per executor that commits whatever appends have queued
//! up as ONE transaction (group commit: one fsync for many commands, each still with its own
//! optimistic-concurrency check; docs/adr/0005-group-commit.md).
//!
//! It promises that each append is decided exactly once: two appends with the same
//! idempotency key, unique claim or aggregate never share a group (the second waits for the
//! next one), and every append gets its own outcome, or the group's error.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    error::StoreError,
    store::{AppendOutcome, EventStore, PendingAppend},
};

struct Job {
    append: PendingAppend,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// The way to the committer task, which ends when the last clone of this is dropped.
#[derive(Clone)]
pub(crate) struct Committer(mpsc::Sender<Job>);

impl Committer {
    /// Starts the committer on `store`, committing at most `max_group` appends together.
    /// Must be called inside a tokio runtime.
    pub(crate) fn spawn(store: EventStore, max_group: usize) -> Self {
        let max_group = max_group.max(1);
        let (committer, jobs) = mpsc::channel(max_group * 4);
        tokio::spawn(commit_loop(store, jobs, max_group));
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

/// The committer: takes whatever appends have queued (up to `max_group`) and commits them
/// as one group. Two appends with the same idempotency key, unique claim or aggregate never
/// share a group (the second waits for the next one), so each is decided once.
async fn commit_loop(store: EventStore, mut jobs: mpsc::Receiver<Job>, max_group: usize) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    loop {
        let first = match waiting.pop_front() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        // Idempotency keys, claims and aggregates share one set: a tag keeps the kinds
        // apart. Two appends to one aggregate never share a group: normally the striped
        // lock keeps them apart, but a caller cancelled after queuing its append (a handler
        // timeout, a client gone) releases the lock while its append still waits here, and
        // the next command on that aggregate decides on the same version.
        let keys_of = |job: &Job| -> Vec<(u8, String, String)> {
            let idempotency = job
                .append
                .idempotency
                .iter()
                .map(|(k, _)| (0, k.scope.clone(), k.key.clone()));
            let claims = job
                .append
                .claims
                .iter()
                .map(|c| (1, c.namespace.clone(), c.value.clone()));
            let aggregate = (
                2,
                job.append.aggregate_type.to_owned(),
                job.append.aggregate_id.clone(),
            );
            idempotency.chain(claims).chain([aggregate]).collect()
        };
        let mut keys: HashSet<(u8, String, String)> = keys_of(&first).into_iter().collect();
        let mut group = vec![first];
        let mut deferred = Vec::new();
        while group.len() < max_group {
            let next = match waiting.pop_front() {
                Some(job) => job,
                None => match jobs.try_recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            let wanted = keys_of(&next);
            if wanted.iter().all(|key| !keys.contains(key)) {
                keys.extend(wanted);
                group.push(next);
            } else {
                deferred.push(next);
            }
        }
        waiting.extend(deferred);
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
