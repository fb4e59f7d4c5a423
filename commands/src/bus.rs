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
/// - Commands for one aggregate that queue up while its previous append commits are run
///   together, in arrival order, as ONE append (when the aggregate takes no services and the
///   commands carry no idempotency key, claim or expected version): a hot aggregate (a busy
///   chat room) commits many commands per round trip instead of one, each still decided on
///   the state its predecessors left, each answered with its own version or refusal.
/// - Aggregates are cached after each command. The cache is only a guess: a stale entry
///   ends in a conflict (retried on fresh state), and any refusal or no-op decided on
///   cached state is decided again on fresh state before it is returned.
#[derive(Clone)]
pub struct CommandBus {
    store: EventStore,
    stripes: Arc<Vec<tokio::sync::Mutex<()>>>,
    /// Commands waiting for their aggregate's turn, by aggregate: whichever takes the turn
    /// first runs all of them as one append (see [`Waiting`]).
    waiting: Arc<std::sync::Mutex<WaitingCommands>>,
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
            waiting: Arc::default(),
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
        A::Command: Clone + Send,
        A::Services: Clone,
        A::Error: Send + 'static,
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
        A::Command: Clone + Send,
        A::Services: Clone,
        A::Error: Send + 'static,
    {
        let started = std::time::Instant::now();
        let result = self
            .decide_and_commit::<A>(id, command, services, ctx, respond)
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CommandError::Rejected(_) | CommandError::ClaimTaken { .. }) => "refused",
            Err(CommandError::VersionMismatch { .. } | CommandError::Conflict) => "conflict",
            Err(CommandError::IdempotencyKeyReused) => "refused",
            Err(CommandError::Store(_)) => "error",
        };
        metrics::counter!("chronicle_commands_total", "aggregate" => A::TYPE, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("chronicle_command_duration_seconds", "aggregate" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn decide_and_commit<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        ctx: &CommandContext,
        respond: impl Fn(&Committed) -> StoredResponse,
    ) -> Result<Executed, CommandError<A::Error>>
    where
        A: Aggregate + AggregateKind + Clone + 'static,
        A::Command: Clone + Send,
        A::Services: Clone,
        A::Error: Send + 'static,
    {
        if let Some(key) = &ctx.idempotency {
            if let Some(done) = self.replay::<A::Error>(key).await? {
                return Ok(done);
            }
        }
        // Commands that can share an append: no services (so any caller's will do), nothing
        // recorded or checked beside the events.
        let batchable = std::mem::size_of::<A::Services>() == 0
            && ctx.idempotency.is_none()
            && ctx.claims.is_empty()
            && ctx.expected_version.is_none()
            && !ctx.fresh_state;
        if batchable {
            return self.execute_batched::<A>(id, command, services, ctx).await;
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
            // Nothing to append checks nothing at append: on cached state, decide again.
            if events.is_empty() && cached {
                trust_cache = false;
                continue;
            }
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

    /// Queues `command` for aggregate `id`, then takes the aggregate's turn: if a command
    /// that took it before already ran ours, its answer; otherwise ours and every command
    /// queued behind it run now as one append.
    async fn execute_batched<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        ctx: &CommandContext,
    ) -> Result<Executed, CommandError<A::Error>>
    where
        A: Aggregate + AggregateKind + Clone + 'static,
        A::Command: Clone + Send,
        A::Services: Clone,
        A::Error: Send + 'static,
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
        A: Aggregate + AggregateKind + Clone + 'static,
        A::Command: Clone + Send,
        A::Services: Clone,
        A::Error: Send + 'static,
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
                    if let Some(cache) = &self.cache {
                        let entry: Cached = Arc::new((state, version));
                        cache.insert(cache_key, entry).await;
                    }
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
                    self.forget(&cache_key).await;
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

    /// Offers the cache a state of aggregate `id` at `version` that the caller read
    /// elsewhere (a read model that keeps the aggregate's state), so the next command on it
    /// need not load it. It is only a guess like any cached entry: if the aggregate has moved
    /// on, the command's append conflicts and is decided again on the state in Postgres. An
    /// entry the cache holds at the same or a newer version is kept.
    pub async fn prime<A>(&self, id: &str, state: A, version: u64)
    where
        A: Aggregate + AggregateKind + Clone + 'static,
    {
        let Some(cache) = &self.cache else { return };
        let cache_key = cache_key::<A>(id);
        if let Some(entry) = cache.get(&cache_key).await {
            if entry
                .downcast_ref::<(A, u64)>()
                .is_some_and(|(_, held)| *held >= version)
            {
                return;
            }
        }
        let entry: Cached = Arc::new((state, version));
        cache.insert(cache_key, entry).await;
    }

    /// The current state of aggregate `id` as Postgres has it, whatever this process's
    /// cache holds: for answers that must not lag another process's writes (where a
    /// resumable upload stands, which a client behind a load balancer asks any gateway).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn fresh_state<A>(&self, id: &str) -> Result<LoadedAggregate<A>, StoreError>
    where
        A: Aggregate + AggregateKind + Clone + 'static,
    {
        let cache_key = cache_key::<A>(id);
        Ok(self.load::<A>(id, &cache_key, false).await?.0)
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
struct WaitingCommands {
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
