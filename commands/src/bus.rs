use std::{
    any::Any,
    collections::{HashSet, VecDeque},
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use chronicle_schemas::AggregateKind;
use cqrs_es::{event_sink::EventSink, Aggregate};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{
    error::{CommandError, KeyLookup, StoreError},
    idempotency::{self, IdempotencyKey, StoredResponse},
    store::{AppendOutcome, EventStore, LoadedAggregate, PendingAppend, Provenance, UniqueClaim},
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
    /// Unique values the command takes (a username): committed with its events, or the
    /// command fails with [`CommandError::ClaimTaken`] and appends nothing.
    pub claims: Vec<UniqueClaim>,
    /// Decide on state loaded from Postgres, never on the cache. For commands whose `handle`
    /// has an effect outside the store (a payment): a stale cached state could make it act
    /// and only then lose the race.
    pub fresh_state: bool,
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
            claims: Vec::new(),
            fresh_state: false,
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

/// Tuning of the write path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandBusConfig {
    /// Aggregates kept in memory between commands; 0 turns the cache off and every command
    /// loads its aggregate from Postgres.
    pub cache_capacity: u64,
    /// Store a snapshot of an aggregate every this many events (0: never). Loads then read
    /// the snapshot and only the events after it.
    pub snapshot_every: u64,
    /// Most commands committed in one transaction (group commit).
    pub max_group: usize,
}

impl Default for CommandBusConfig {
    fn default() -> Self {
        Self {
            cache_capacity: 100_000,
            snapshot_every: 100,
            max_group: 256,
        }
    }
}

impl CommandBusConfig {
    /// No cache and no snapshots: every command loads all its events from Postgres.
    pub fn uncached() -> Self {
        Self {
            cache_capacity: 0,
            snapshot_every: 0,
            ..Self::default()
        }
    }
}

/// A cached aggregate: its state and version, type-erased so one cache serves every type
/// (the key carries the type).
type Cached = Arc<dyn Any + Send + Sync>;

struct Job {
    append: PendingAppend,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// Runs commands against aggregates stored in an [`EventStore`].
///
/// - Inside one process, commands for the same aggregate are queued (a striped async
///   lock), so they never race each other into a conflict; races with other processes are
///   settled by the events table's primary key and retried per [`RetryPolicy`].
/// - Appends go to one committer task, which commits whatever has queued up as ONE
///   transaction (group commit): one fsync for many commands, each still with its own
///   optimistic-concurrency check (docs/adr/0005-group-commit.md).
/// - Aggregates are cached after each command. The cache is only a guess: a stale entry
///   ends in a conflict (retried on fresh state), and any refusal decided on cached state
///   is decided again on fresh state before it is returned.
#[derive(Clone)]
pub struct CommandBus {
    store: EventStore,
    stripes: Arc<Vec<tokio::sync::Mutex<()>>>,
    cache: Option<moka::future::Cache<String, Cached>>,
    committer: mpsc::Sender<Job>,
    config: CommandBusConfig,
}

impl std::fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CommandBus {
    /// A bus with the default configuration. Must be called inside a tokio runtime (it
    /// starts the committer task, which ends when the last clone is dropped).
    pub fn new(store: EventStore) -> Self {
        Self::with_config(store, CommandBusConfig::default())
    }

    pub fn with_config(store: EventStore, config: CommandBusConfig) -> Self {
        let stripes = (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        let (committer, jobs) = mpsc::channel(config.max_group.max(1) * 4);
        tokio::spawn(commit_loop(store.clone(), jobs, config.max_group.max(1)));
        let cache =
            (config.cache_capacity > 0).then(|| moka::future::Cache::new(config.cache_capacity));
        Self {
            store,
            stripes: Arc::new(stripes),
            cache,
            committer,
            config,
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
        A: Aggregate + AggregateKind + Clone + 'static,
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
    #[tracing::instrument(
        name = "command",
        skip_all,
        fields(aggregate = A::TYPE, id = %id, correlation_id = %ctx.correlation_id)
    )]
    pub async fn execute_with_response<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        ctx: &CommandContext,
        respond: impl Fn(&Committed) -> StoredResponse,
    ) -> Result<Executed, CommandError<A::Error>>
    where
        A: Aggregate + AggregateKind + Clone + 'static,
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
        let cache_key = cache_key::<A>(id);
        let mut conflicts = 0;
        let mut trust_cache = !ctx.fresh_state;
        loop {
            let (loaded, cached) = self.load::<A>(id, &cache_key, trust_cache).await?;
            // Anything decided on cached state that is not a success is decided again on
            // fresh state: the cache may be behind another process's writes.
            if let Some(expected) = ctx.expected_version {
                if expected != loaded.version {
                    if cached {
                        trust_cache = false;
                        continue;
                    }
                    return Err(CommandError::VersionMismatch {
                        expected,
                        actual: loaded.version,
                    });
                }
            }
            let from_version = loaded.version;
            let mut state = loaded.state;
            let sink = EventSink::<A>::default();
            if let Err(rule) = state.handle(command.clone(), services, &sink).await {
                if cached {
                    trust_cache = false;
                    continue;
                }
                return Err(CommandError::Rejected(rule));
            }
            let events = sink.collect().await;
            let committed = Committed {
                aggregate_id: id.to_owned(),
                version: from_version + events.len() as u64,
                appended: events.len(),
            };
            let mut append = PendingAppend::encode::<A>(id, from_version, &events, &provenance)?;
            append.idempotency = ctx
                .idempotency
                .as_ref()
                .map(|key| (key.clone(), respond(&committed)));
            append.claims = ctx.claims.clone();
            let every = self.config.snapshot_every;
            if every > 0 && !events.is_empty() && from_version / every != committed.version / every
            {
                let snapshot =
                    serde_json::to_value(&state).map_err(|source| StoreError::Corrupt {
                        aggregate_type: A::TYPE.into(),
                        aggregate_id: id.into(),
                        sequence: committed.version,
                        source,
                    })?;
                append.snapshot = Some((committed.version, snapshot));
            }
            match self.commit(append).await? {
                AppendOutcome::Appended => {
                    if let Some(cache) = &self.cache {
                        let entry: Cached = Arc::new((state, committed.version));
                        cache.insert(cache_key, entry).await;
                    }
                    return Ok(Executed::Committed(committed));
                }
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
                AppendOutcome::ClaimTaken(index) => {
                    let claim = &ctx.claims[index];
                    return Err(CommandError::ClaimTaken {
                        namespace: claim.namespace.clone(),
                        value: claim.value.clone(),
                    });
                }
                AppendOutcome::Conflict => {
                    self.forget(&cache_key).await;
                    trust_cache = false;
                    if ctx.expected_version.is_some() {
                        let actual = self.store.load::<A>(id).await?.version;
                        return Err(CommandError::VersionMismatch {
                            expected: from_version,
                            actual,
                        });
                    }
                    tracing::debug!(
                        aggregate = A::TYPE,
                        id,
                        conflicts,
                        "append conflict, retrying"
                    );
                    if conflicts >= retries {
                        return Err(CommandError::Conflict);
                    }
                    tokio::time::sleep(backoff(conflicts)).await;
                    conflicts += 1;
                }
            }
        }
    }

    /// The current state of aggregate `id` as this process knows it: from the cache when it
    /// holds it (possibly behind another process's writes), else from Postgres. For reads
    /// that inform a command (prices at placement, a coupon's terms); commands themselves
    /// always decide on state that is checked at append.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn state<A>(&self, id: &str) -> Result<LoadedAggregate<A>, StoreError>
    where
        A: Aggregate + AggregateKind + Clone + 'static,
    {
        let cache_key = cache_key::<A>(id);
        Ok(self.load::<A>(id, &cache_key, true).await?.0)
    }

    /// The aggregate from the cache when allowed and present (`true`), else from Postgres.
    async fn load<A: Aggregate + Clone + 'static>(
        &self,
        id: &str,
        cache_key: &str,
        trust_cache: bool,
    ) -> Result<(LoadedAggregate<A>, bool), StoreError> {
        if let (true, Some(cache)) = (trust_cache, &self.cache) {
            if let Some(entry) = cache.get(cache_key).await {
                if let Some((state, version)) = entry.downcast_ref::<(A, u64)>() {
                    return Ok((
                        LoadedAggregate {
                            state: state.clone(),
                            version: *version,
                        },
                        true,
                    ));
                }
            }
        }
        let loaded = if self.config.snapshot_every > 0 {
            self.store.load_from_snapshot::<A>(id).await?
        } else {
            self.store.load::<A>(id).await?
        };
        Ok((loaded, false))
    }

    async fn forget(&self, cache_key: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(cache_key).await;
        }
    }

    async fn commit(&self, append: PendingAppend) -> Result<AppendOutcome, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.committer
            .send(Job { append, reply })
            .await
            .map_err(|_| StoreError::CommitterGone)?;
        outcome.await.map_err(|_| StoreError::CommitterGone)?
    }

    /// The first response recorded under `key`, for a flow of several commands whose last
    /// one records it (a payment: request, charge, outcome).
    ///
    /// # Errors
    /// [`CommandError::IdempotencyKeyReused`] when the key came with another request; store
    /// failures.
    pub async fn replay<E: std::error::Error + 'static>(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Executed>, CommandError<E>> {
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(StoreError::db("acquiring a connection"))?;
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

/// The cache key of an aggregate: the type is part of it, so one cache serves every type.
fn cache_key<A: Aggregate>(id: &str) -> String {
    format!("{}\u{0}{id}", A::TYPE)
}

/// Jittered exponential backoff: up to 1, 2, 4 ... 64 ms, so racing processes spread out.
fn backoff(attempt: u32) -> Duration {
    let ceiling_us = 1_000u64 << attempt.min(6);
    let jitter = (Uuid::new_v4().as_u128() % u128::from(ceiling_us)) as u64;
    Duration::from_micros(ceiling_us / 2 + jitter / 2)
}
