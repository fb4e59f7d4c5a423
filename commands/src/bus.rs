use std::{
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use chronicle_schemas::AggregateKind;
use cqrs_es::{event_sink::EventSink, Aggregate};
use uuid::Uuid;

use crate::{
    error::{CommandError, KeyLookup},
    idempotency::{self, IdempotencyKey, StoredResponse},
    store::{AppendOutcome, EventStore, Provenance},
};

/// How many times a command is re-run after losing an optimistic-concurrency race.
///
/// Re-running is safe for every Chronicle aggregate: `handle` decides from the freshly
/// loaded state, so a retried command is judged on what is true now. It is turned off when
/// the caller pinned a version with `If-Match`: then a lost race is a version mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 8 }
    }
}

impl RetryPolicy {
    pub const NEVER: Self = Self { max_retries: 0 };
}

/// Everything about a command besides its payload.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    /// Who is asking (a user id, `saga:orders`); recorded in every event's metadata.
    pub actor: Option<String>,
    /// `If-Match`: the version the caller believes the aggregate is at.
    pub expected_version: Option<u64>,
    pub idempotency: Option<IdempotencyKey>,
    pub retry: RetryPolicy,
}

impl CommandContext {
    /// A context for a new request: a fresh correlation id, default retries.
    pub fn new() -> Self {
        Self {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            actor: None,
            expected_version: None,
            idempotency: None,
            retry: RetryPolicy::default(),
        }
    }
}

impl Default for CommandContext {
    fn default() -> Self {
        Self::new()
    }
}

/// A command that committed (possibly with no events, when it changed nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub aggregate_id: String,
    /// The aggregate's version after the command: the sequence of its last event.
    pub version: u64,
    /// How many events the command appended.
    pub appended: usize,
}

/// The result of a command that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executed {
    Committed(Committed),
    /// The idempotency key was seen before with the same request: its first response.
    Replayed(StoredResponse),
}

/// Number of lock stripes; commands on aggregates that share a stripe queue behind each
/// other, which costs little at this count and keeps memory fixed.
const STRIPES: usize = 1024;

/// Runs commands against aggregates stored in an [`EventStore`].
///
/// Inside one process, commands for the same aggregate are queued (a striped async lock),
/// so they never race each other into a conflict; races with other processes are settled
/// by the events table's primary key and retried per [`RetryPolicy`].
#[derive(Clone)]
pub struct CommandBus {
    store: EventStore,
    stripes: Arc<Vec<tokio::sync::Mutex<()>>>,
}

impl std::fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus").finish_non_exhaustive()
    }
}

impl CommandBus {
    pub fn new(store: EventStore) -> Self {
        let stripes = (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Self {
            store,
            stripes: Arc::new(stripes),
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Runs `command` on aggregate `id`. With an idempotency key, the stored response is
    /// `{"id", "version"}` with status 200; use [`execute_with_response`] to choose it.
    ///
    /// [`execute_with_response`]: Self::execute_with_response
    ///
    /// # Errors
    /// See [`CommandError`].
    pub async fn execute<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        ctx: &CommandContext,
    ) -> Result<Executed, CommandError<A::Error>>
    where
        A: Aggregate + AggregateKind,
        A::Command: Clone,
        A::Error: 'static,
    {
        self.execute_with_response::<A>(id, command, services, ctx, |c| StoredResponse {
            status: 200,
            body: serde_json::json!({"id": c.aggregate_id, "version": c.version}),
        })
        .await
    }

    /// Runs `command`, and when `ctx` carries an idempotency key, stores `respond(&committed)`
    /// in the same transaction as the events so a repeat of the request gets it back.
    ///
    /// # Errors
    /// See [`CommandError`].
    pub async fn execute_with_response<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        ctx: &CommandContext,
        respond: impl Fn(&Committed) -> StoredResponse,
    ) -> Result<Executed, CommandError<A::Error>>
    where
        A: Aggregate + AggregateKind,
        A::Command: Clone,
        A::Error: 'static,
    {
        if let Some(key) = &ctx.idempotency {
            if let Some(done) = self.replay::<A::Error>(key).await? {
                return Ok(done);
            }
        }
        let _queued = self.stripe(A::TYPE, id).lock().await;
        let retries = if ctx.expected_version.is_some() {
            0
        } else {
            ctx.retry.max_retries
        };
        let provenance = Provenance {
            correlation_id: ctx.correlation_id,
            causation_id: ctx.causation_id,
            actor: ctx.actor.as_deref(),
        };
        for attempt in 0..=retries {
            let loaded = self.store.load::<A>(id).await?;
            if let Some(expected) = ctx.expected_version {
                if expected != loaded.version {
                    return Err(CommandError::VersionMismatch {
                        expected,
                        actual: loaded.version,
                    });
                }
            }
            let mut state = loaded.state;
            let sink = EventSink::<A>::default();
            state
                .handle(command.clone(), services, &sink)
                .await
                .map_err(CommandError::Rejected)?;
            let events = sink.collect().await;
            let committed = Committed {
                aggregate_id: id.to_owned(),
                version: loaded.version + events.len() as u64,
                appended: events.len(),
            };
            let response = ctx
                .idempotency
                .as_ref()
                .map(|key| (key, respond(&committed)));
            let outcome = self
                .store
                .append::<A>(
                    id,
                    loaded.version,
                    &events,
                    &provenance,
                    response.as_ref().map(|(k, r)| (*k, r)),
                )
                .await?;
            match outcome {
                AppendOutcome::Appended => return Ok(Executed::Committed(committed)),
                AppendOutcome::KeyTaken => {
                    let key = ctx
                        .idempotency
                        .as_ref()
                        .expect("KeyTaken only happens with a key");
                    return match self.replay::<A::Error>(key).await? {
                        Some(done) => Ok(done),
                        // The other request's record expired between the two statements.
                        None => Err(CommandError::Conflict),
                    };
                }
                AppendOutcome::Conflict if ctx.expected_version.is_some() => {
                    let actual = self.store.load::<A>(id).await?.version;
                    return Err(CommandError::VersionMismatch {
                        expected: loaded.version,
                        actual,
                    });
                }
                AppendOutcome::Conflict => {
                    tracing::debug!(
                        aggregate = A::TYPE,
                        id,
                        attempt,
                        "append conflict, retrying"
                    );
                    if attempt < retries {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
            }
        }
        Err(CommandError::Conflict)
    }

    async fn replay<E: std::error::Error + 'static>(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Executed>, CommandError<E>> {
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(crate::StoreError::db("acquiring a connection"))?;
        match idempotency::lookup(&mut conn, key).await? {
            KeyLookup::Fresh => Ok(None),
            KeyLookup::Replay(response) => Ok(Some(Executed::Replayed(response))),
            KeyLookup::Reused => Err(CommandError::IdempotencyKeyReused),
        }
    }

    fn stripe(&self, aggregate_type: &str, id: &str) -> &tokio::sync::Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (aggregate_type, id).hash(&mut hasher);
        &self.stripes[hasher.finish() as usize % STRIPES]
    }
}

/// Jittered exponential backoff: up to 1, 2, 4 ... 64 ms, so racing processes spread out.
fn backoff(attempt: u32) -> Duration {
    let ceiling_us = 1_000u64 << attempt.min(6);
    let jitter = (Uuid::new_v4().as_u128() % u128::from(ceiling_us)) as u64;
    Duration::from_micros(ceiling_us / 2 + jitter / 2)
}
