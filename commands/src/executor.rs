//! Provides [`CommandExecutor`], which runs a command end to end: the idempotency-key replay,
//! the aggregate's turn in its lane (`lanes.rs`), the `If-Match` check, `handle` on state
//! from the cache (`cache.rs`) or Postgres, the append through the committer
//! (`committer.rs`) with optimistic concurrency, and a bounded retry on conflict.
//!
//! It promises that a command's events, their outbox rows, its idempotency record and its
//! claims commit together or not at all (architecture.md invariant 1), that a command is decided on
//! state checked at append (a lost race is decided again on fresh state, never appended over),
//! and that its answer says which: committed at a version, refused, conflicted, or unknown
//! after a store failure.
//!
//! Each aggregate's events go to its context's store ([`AggregateKind::CONTEXT`]) when the
//! executor runs on every context's schema ([`CommandExecutor::for_contexts`]), each store
//! with its own committer; or all to one store ([`CommandExecutor::new`]).

use std::{collections::BTreeMap, sync::Arc};

use chronicle_schemas::AggregateKind;
use cqrs_es::{event_sink::EventSink, Aggregate};

use crate::{
    cache::{cache_key, AggregateCache},
    committer::Committer,
    context::{backoff, CommandContext, Committed, Executable, Executed},
    error::{CommandError, KeyLookup, StoreError},
    idempotency::{self, IdempotencyKey, StoredResponse},
    lanes::{WaitingCommands, STRIPES},
    store::{AppendOutcome, EventStore, LoadedAggregate, PendingAppend, Provenance},
    Databases,
};

/// One event store and the committer that groups its appends.
#[derive(Clone)]
struct Store {
    store: EventStore,
    committer: Committer,
}

impl Store {
    fn spawn(store: EventStore, config: &ExecutorConfig) -> Self {
        Self {
            committer: Committer::spawn(store.clone(), config.max_group, config.groups_in_flight),
            store,
        }
    }
}

/// Where the executor's aggregates are stored.
enum Stores {
    /// Every aggregate in one store.
    One(Store),
    /// Each aggregate in its context's store, by context.
    PerContext(BTreeMap<&'static str, Store>),
}

impl Stores {
    /// The store of `context`.
    ///
    /// # Panics
    /// When the executor has no store for `context`: a context missing from
    /// its databases, a programming error.
    fn of(&self, context: &str) -> &Store {
        match self {
            Self::One(store) => store,
            Self::PerContext(stores) => stores
                .get(context)
                .unwrap_or_else(|| panic!("no event store for the context {context:?}")),
        }
    }
}

/// Tuning of the write path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// Aggregates kept in memory between commands; 0 turns the cache off and every command
    /// loads its aggregate from Postgres.
    pub cache_capacity: u64,
    /// Store a snapshot of an aggregate every this many events (0: never). Loads then read
    /// the snapshot and only the events after it.
    pub snapshot_every: u64,
    /// Most commands committed in one transaction (group commit).
    pub max_group: usize,
    /// Most groups committing at once: the next group forms and is sent while the ones
    /// before are being made durable (1: one group at a time).
    pub groups_in_flight: usize,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            cache_capacity: 100_000,
            snapshot_every: 100,
            max_group: 256,
            groups_in_flight: 2,
        }
    }
}

impl ExecutorConfig {
    /// No cache and no snapshots: every command loads all its events from Postgres.
    pub fn uncached() -> Self {
        Self {
            cache_capacity: 0,
            snapshot_every: 0,
            ..Self::default()
        }
    }
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
pub struct CommandExecutor {
    stores: Arc<Stores>,
    /// The lanes: one async lock per stripe of aggregates (`lanes.rs`).
    pub(crate) stripes: Arc<Vec<tokio::sync::Mutex<()>>>,
    /// Commands waiting for their aggregate's turn, by aggregate: whichever takes the turn
    /// first runs all of them as one append (`lanes.rs`).
    pub(crate) waiting: Arc<std::sync::Mutex<WaitingCommands>>,
    pub(crate) cache: Arc<AggregateCache>,
    pub(crate) config: ExecutorConfig,
}

impl std::fmt::Debug for CommandExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandExecutor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CommandExecutor {
    /// An executor storing every aggregate in `store`, with the default configuration.
    /// Must be called inside a tokio runtime (it starts the committer task, which ends when
    /// the last clone is dropped).
    pub fn new(store: EventStore) -> Self {
        Self::with_config(store, ExecutorConfig::default())
    }

    /// An executor storing every aggregate in `store`.
    pub fn with_config(store: EventStore, config: ExecutorConfig) -> Self {
        let one = Store::spawn(store, &config);
        Self::on(Stores::One(one), config)
    }

    /// An executor storing each aggregate in its context's schema (`db`'s pool of
    /// [`AggregateKind::CONTEXT`]), each store with its own committer and `faults`.
    pub fn for_contexts(db: &Databases, faults: &crate::Faults, config: ExecutorConfig) -> Self {
        let stores = db
            .contexts()
            .map(|(context, pool)| {
                let store = EventStore::new(pool.clone()).with_faults(faults.clone());
                (context, Store::spawn(store, &config))
            })
            .collect();
        Self::on(Stores::PerContext(stores), config)
    }

    fn on(stores: Stores, config: ExecutorConfig) -> Self {
        let stripes = (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Self {
            stores: Arc::new(stores),
            cache: Arc::new(AggregateCache::new(config.cache_capacity)),
            stripes: Arc::new(stripes),
            waiting: Arc::default(),
            config,
        }
    }

    /// The store of `context`'s aggregates: its claims, its outbox, an aggregate's history.
    ///
    /// # Panics
    /// When the executor has no store for `context` (not one of its databases').
    pub fn store_of(&self, context: &str) -> &EventStore {
        &self.stores.of(context).store
    }

    /// The store of aggregate `A`'s context.
    pub fn store_for<A: AggregateKind>(&self) -> &EventStore {
        self.store_of(A::CONTEXT)
    }

    /// Every store the executor appends to (one, or one per context).
    pub fn stores(&self) -> Vec<&EventStore> {
        match &*self.stores {
            Stores::One(one) => vec![&one.store],
            Stores::PerContext(stores) => stores.values().map(|s| &s.store).collect(),
        }
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
        A: Executable,
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
        A: Executable,
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
        A: Executable,
    {
        if let Some(key) = &ctx.idempotency {
            if let Some(done) = self.replay::<A>(key).await? {
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
                    self.cache.put(cache_key, state, committed.version).await;
                    return Ok(Executed::Committed(committed));
                }
                AppendOutcome::KeyTaken => {
                    let key = ctx
                        .idempotency
                        .as_ref()
                        .expect("KeyTaken only happens with a key");
                    return match self.replay::<A>(key).await? {
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
                    self.cache.forget(&cache_key).await;
                    trust_cache = false;
                    if ctx.expected_version.is_some() {
                        let actual = self.store_for::<A>().load::<A>(id).await?.version;
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

    /// Offers the cache a state of aggregate `id` at `version` that the caller read
    /// elsewhere (a read model that keeps the aggregate's state), so the next command on it
    /// need not load it. It is only a guess like any cached entry: if the aggregate has moved
    /// on, the command's append conflicts and is decided again on the state in Postgres. An
    /// entry the cache holds at the same or a newer version is kept.
    pub async fn prime<A>(&self, id: &str, state: A, version: u64)
    where
        A: Aggregate + AggregateKind + Clone + 'static,
    {
        self.cache
            .put_if_newer(cache_key::<A>(id), state, version)
            .await;
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
    pub(crate) async fn load<A: Aggregate + AggregateKind + Clone + 'static>(
        &self,
        id: &str,
        cache_key: &str,
        trust_cache: bool,
    ) -> Result<(LoadedAggregate<A>, bool), StoreError> {
        if trust_cache {
            if let Some((state, version)) = self.cache.get::<A>(cache_key).await {
                return Ok((LoadedAggregate { state, version }, true));
            }
        }
        let store = self.store_for::<A>();
        let loaded = if self.config.snapshot_every > 0 {
            store.load_from_snapshot::<A>(id).await?
        } else {
            store.load::<A>(id).await?
        };
        Ok((loaded, false))
    }

    pub(crate) async fn commit(&self, append: PendingAppend) -> Result<AppendOutcome, StoreError> {
        self.stores
            .of(append.context)
            .committer
            .commit(append)
            .await
    }

    /// The first response recorded under `key` in `A`'s context, for a flow of several
    /// commands whose last one records it (a payment: request, charge, outcome).
    ///
    /// # Errors
    /// [`CommandError::IdempotencyKeyReused`] when the key came with another request; store
    /// failures.
    pub async fn replay<A: Executable>(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Executed>, CommandError<A::Error>> {
        let mut conn = self
            .store_for::<A>()
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
}
