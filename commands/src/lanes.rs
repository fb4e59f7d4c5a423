//! Provides the lanes of the executor: commands for one aggregate inside one process run one
//! at a time (a striped async lock), so they never race each other into a conflict; races
//! with other processes are settled by the events table's primary key.
//!
//! And same-aggregate batching: commands for one aggregate that queue up while its previous
//! append commits run together, in arrival order, as ONE append (when the aggregate takes no
//! services and the commands carry no idempotency key, claim or expected version). It
//! promises each command is decided on the state its predecessors left and answered with its
//! own version or refusal; a caller that stops waiting before its command was taken takes it
//! back out, so it never runs later on its own.

use std::{
    any::Any,
    hash::{Hash, Hasher},
    sync::Arc,
};

use cqrs_es::{event_sink::EventSink, Aggregate};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{
    cache::cache_key,
    context::{backoff, CommandContext, Committed, Executable, Executed},
    error::{CommandError, StoreError},
    executor::CommandExecutor,
    store::{AppendOutcome, PendingAppend, Provenance},
};

/// Number of lock stripes; commands on aggregates that share a stripe queue behind each
/// other, which costs little at this count and keeps memory fixed.
pub(crate) const STRIPES: usize = 1024;

impl CommandExecutor {
    /// Queues `command` for aggregate `id`, then takes the aggregate's turn: if a command
    /// that took it before already ran ours, its answer; otherwise ours and every command
    /// queued behind it run now as one append.
    pub(crate) async fn execute_batched<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        ctx: &CommandContext,
    ) -> Result<Executed, CommandError<A::Error>>
    where
        A: Executable,
    {
        let key = (A::TYPE, id.to_owned());
        let (reply, mut answer) = oneshot::channel();
        let ticket = {
            let mut waiting = self.lock_waiting();
            waiting.next_ticket += 1;
            let ticket = waiting.next_ticket;
            let entry = Waiting::<A> {
                command,
                correlation_id: ctx.correlation_id,
                causation_id: ctx.causation_id,
                actor: ctx.actor.clone(),
                reply,
            };
            waiting
                .by_aggregate
                .entry(key.clone())
                .or_default()
                .push((ticket, Box::new(entry)));
            ticket
        };
        // A caller that gives up before its command was taken takes it back out: it never
        // runs later on its own.
        let mut withdraw = Withdraw {
            waiting: &self.waiting,
            key: &key,
            ticket: Some(ticket),
        };
        let _turn = self.stripe(A::TYPE, id).lock().await;
        match answer.try_recv() {
            Ok(done) => {
                withdraw.ticket = None;
                return done;
            }
            // A batch took ours and ended without an answer (its task failed): what became
            // of the command is unknown, as after any store failure.
            Err(oneshot::error::TryRecvError::Closed) => {
                withdraw.ticket = None;
                return Err(CommandError::Store(StoreError::CommitterGone));
            }
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let batch: Vec<Waiting<A>> = self
            .lock_waiting()
            .by_aggregate
            .remove(&key)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, entry)| entry.downcast::<Waiting<A>>().ok().map(|entry| *entry))
            .collect();
        withdraw.ticket = None;
        let retries = ctx.retry.max_retries;
        if batch.len() == 1 {
            // Ours alone (the common case): nobody else's command depends on this caller.
            self.run_batch::<A>(id, batch, services, retries).await;
        } else {
            // On a task of its own: the other callers' commands finish even if this caller
            // stops waiting half way.
            let (bus, id, services) = (self.clone(), id.to_owned(), services.clone());
            let run = tokio::spawn(async move {
                bus.run_batch::<A>(&id, batch, &services, retries).await;
            });
            let _ = run.await;
        }
        answer
            .await
            .unwrap_or(Err(CommandError::Store(StoreError::CommitterGone)))
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, WaitingCommands> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `batch` (commands of one aggregate, in arrival order) as one append and answers
    /// each: its own version, or its own refusal decided on the state the ones before it
    /// left. A lost race re-runs them all on fresh state.
    async fn run_batch<A>(
        &self,
        id: &str,
        mut batch: Vec<Waiting<A>>,
        services: &A::Services,
        retries: u32,
    ) where
        A: Executable,
    {
        let cache_key = cache_key::<A>(id);
        let mut trust_cache = true;
        let mut conflicts = 0;
        let failed = |batch: Vec<Waiting<A>>, error: StoreError| {
            let error = Arc::new(error);
            for entry in batch {
                let _ = entry
                    .reply
                    .send(Err(CommandError::Store(StoreError::Group(error.clone()))));
            }
        };
        loop {
            let (loaded, cached) = match self.load::<A>(id, &cache_key, trust_cache).await {
                Ok(loaded) => loaded,
                Err(e) => return failed(batch, e),
            };
            let from_version = loaded.version;
            let mut state = loaded.state;
            let mut outcomes: Vec<Result<Vec<A::Event>, A::Error>> =
                Vec::with_capacity(batch.len());
            // Owned copies: no borrow of the batch is held across the awaits.
            let commands: Vec<A::Command> = batch.iter().map(|e| e.command.clone()).collect();
            for command in commands {
                // A refused command may have applied part of what it meant to write: the
                // next one starts from the state before it.
                let before = state.clone();
                let sink = EventSink::<A>::default();
                match state.handle(command, services, &sink).await {
                    Ok(()) => outcomes.push(Ok(sink.collect().await)),
                    Err(rule) => {
                        state = before;
                        outcomes.push(Err(rule));
                    }
                }
            }
            // A refusal, or a command that changes nothing, decided on cached state is
            // decided again on fresh state: nothing appended means nothing checked the
            // version, and the cache may be behind another process's writes.
            if cached
                && outcomes
                    .iter()
                    .any(|o| o.as_ref().is_ok_and(Vec::is_empty) || o.is_err())
            {
                trust_cache = false;
                continue;
            }
            let mut append: Option<PendingAppend> = None;
            let mut version = from_version;
            let mut versions = Vec::with_capacity(batch.len());
            for (entry, outcome) in batch.iter().zip(&outcomes) {
                let Ok(events) = outcome else {
                    versions.push(version);
                    continue;
                };
                let provenance = Provenance {
                    correlation_id: entry.correlation_id,
                    causation_id: entry.causation_id,
                    actor: entry.actor.as_deref(),
                };
                let encoded = match PendingAppend::encode::<A>(id, version, events, &provenance) {
                    Ok(encoded) => encoded,
                    Err(e) => return failed(batch, e),
                };
                version += events.len() as u64;
                versions.push(version);
                match &mut append {
                    Some(append) => append.events.extend(encoded.events),
                    None => append = Some(encoded),
                }
            }
            let every = self.config.snapshot_every;
            if let Some(append) = &mut append {
                if every > 0 && version > from_version && from_version / every != version / every {
                    match serde_json::to_value(&state) {
                        Ok(snapshot) => append.snapshot = Some((version, snapshot)),
                        Err(source) => {
                            return failed(
                                batch,
                                StoreError::Corrupt {
                                    aggregate_type: A::TYPE.into(),
                                    aggregate_id: id.into(),
                                    sequence: version,
                                    source,
                                },
                            )
                        }
                    }
                }
            }
            let outcome = match append {
                Some(append) => self.commit(append).await,
                None => Ok(AppendOutcome::Appended),
            };
            match outcome {
                Err(e) => return failed(batch, e),
                Ok(AppendOutcome::Appended) => {
                    self.cache.put(cache_key, state, version).await;
                    let mut previous = from_version;
                    for ((entry, outcome), version) in batch.into_iter().zip(outcomes).zip(versions)
                    {
                        let answer = match outcome {
                            Ok(_) => Ok(Executed::Committed(Committed {
                                aggregate_id: id.to_owned(),
                                version,
                                appended: (version - previous) as usize,
                            })),
                            Err(rule) => Err(CommandError::Rejected(rule)),
                        };
                        previous = version;
                        let _ = entry.reply.send(answer);
                    }
                    return;
                }
                // No key or claim rides on a batch; anything but a success is a lost race.
                Ok(_) => {
                    self.cache.forget(&cache_key).await;
                    trust_cache = false;
                    if conflicts >= retries {
                        for entry in batch.drain(..) {
                            let _ = entry.reply.send(Err(CommandError::Conflict));
                        }
                        return;
                    }
                    tokio::time::sleep(backoff(conflicts)).await;
                    conflicts += 1;
                }
            }
        }
    }

    pub(crate) fn stripe(&self, aggregate_type: &str, id: &str) -> &tokio::sync::Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (aggregate_type, id).hash(&mut hasher);
        &self.stripes[hasher.finish() as usize % STRIPES]
    }
}

/// A command queued for its aggregate's turn, with what its events record and where its
/// answer goes. Type-erased in [`WaitingCommands`]; the key carries the aggregate type.
struct Waiting<A: Aggregate>
where
    A::Error: 'static,
{
    command: A::Command,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    actor: Option<String>,
    reply: oneshot::Sender<Result<Executed, CommandError<A::Error>>>,
}

/// A queued command: its ticket, and the type-erased [`Waiting`].
type Ticketed = (u64, Box<dyn Any + Send>);

#[derive(Default)]
pub(crate) struct WaitingCommands {
    next_ticket: u64,
    by_aggregate: std::collections::HashMap<(&'static str, String), Vec<Ticketed>>,
}

/// Takes a queued command back out when its caller stops waiting before it was taken.
struct Withdraw<'a> {
    waiting: &'a std::sync::Mutex<WaitingCommands>,
    key: &'a (&'static str, String),
    ticket: Option<u64>,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket else { return };
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(queued) = waiting.by_aggregate.get_mut(self.key) {
            queued.retain(|(t, _)| *t != ticket);
            if queued.is_empty() {
                waiting.by_aggregate.remove(self.key);
            }
        }
    }
}
