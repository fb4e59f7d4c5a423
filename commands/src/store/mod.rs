//! The Postgres event store (postgres-es's tables): loading aggregates (from their events,
//! or a snapshot and the events after it), an aggregate's own history for answers that must
//! not wait for a read model, and the indexes written with the events (claims, the outbox's
//! depth). Appending is [`append`]'s.

mod append;

use cqrs_es::Aggregate;
use sqlx::{migrate::Migrator, PgPool};

pub(crate) use append::{AppendOutcome, PendingAppend, Provenance};

use crate::error::StoreError;

/// The Postgres channel the write side notifies after every commit that added outbox rows,
/// before `_<schema>` (the store's schema, its context's: [`outbox_channel`]); the relay of
/// that outbox listens on it so it publishes at once instead of waiting for its next poll.
pub const OUTBOX_CHANNEL: &str = "chronicle_outbox";

/// The channel of the outbox in `schema` (`chronicle_outbox_commerce`).
pub fn outbox_channel(schema: &str) -> String {
    format!("{OUTBOX_CHANNEL}_{schema}")
}

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates or updates the tables: the event store's in `public` (for a store on a plain
/// pool), and the schema of each of `contexts` (the list of contexts' names) with its event
/// store and where its readers stand, made when it is not there yet (a context added to
/// the list gets them at the next start), its events numbered by `position` (migration
/// 0016).
///
/// # Errors
/// When the database cannot be reached or a migration fails.
pub async fn migrate(pool: &PgPool, contexts: &[&str]) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await?;
    for context in contexts {
        for function in ["chronicle_context_store", "chronicle_event_positions"] {
            sqlx::query(&format!("SELECT {function}($1)"))
                .bind(context)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// An aggregate rebuilt from its events, with the sequence of the last one (0 when none).
#[derive(Debug, Clone)]
pub struct LoadedAggregate<A> {
    pub state: A,
    pub version: u64,
}

/// A value at most one aggregate may hold, such as a username (`namespace` = `username`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UniqueClaim {
    pub namespace: String,
    pub value: String,
}

impl UniqueClaim {
    pub fn new(namespace: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            value: value.into(),
        }
    }
}

/// The Postgres event store: postgres-es's tables, Chronicle's transactional append.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    faults: crate::faults::Faults,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore").finish_non_exhaustive()
    }
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            faults: crate::faults::Faults::default(),
        }
    }

    /// Fault points: `store.before_commit` (a group's statements ran, its transaction is
    /// still open).
    pub fn with_faults(mut self, faults: crate::faults::Faults) -> Self {
        self.faults = faults;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How many outbox rows wait for the relay, counted up to `cap` (a huge backlog is
    /// reported as `cap`, not counted row by row).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn outbox_depth(&self, cap: i64) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT $1) o")
            .bind(cap)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::db("counting the outbox"))
    }

    /// The newest outbox row now, if any: with [`outbox_holds_through`](Self::outbox_holds_through),
    /// a reader waits until everything committed before a moment is published.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn outbox_newest(&self) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT max(id) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::db("reading the outbox"))
    }

    /// Whether outbox rows up to `id` still wait for the relay.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn outbox_holds_through(&self, id: i64) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox WHERE id <= $1)")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::db("reading the outbox"))
    }

    /// The aggregate holding claim `value` in `namespace`, if one does.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn claim_holder(
        &self,
        namespace: &str,
        value: &str,
    ) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT aggregate_id FROM unique_claims WHERE namespace = $1 AND value = $2",
        )
        .bind(namespace)
        .bind(value)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::db("reading a claim"))
    }

    /// Every claim in `namespace`: `(value, holding aggregate's id)`, oldest first, at most
    /// `limit`. Claims commit with the events that take them, so this answers what the write
    /// side decided the moment a command is acknowledged, before any read model catches up:
    /// a namespace per key (`<kind>:<key>`) with a value per fact is an index of such facts.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn claims_in(
        &self,
        namespace: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query_as(
            "SELECT value, aggregate_id FROM unique_claims WHERE namespace = $1 \
             ORDER BY claimed_at, value LIMIT $2",
        )
        .bind(namespace)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::db("reading claims"))
    }

    /// Rebuilds aggregate `id` of type `A` from all its events.
    ///
    /// # Errors
    /// When the database fails or a stored event no longer decodes.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<LoadedAggregate<A>, StoreError> {
        self.fold_stored(A::default(), 0, id).await
    }

    /// Rebuilds aggregate `id` from its latest snapshot, if it has one, and the events after
    /// it.
    ///
    /// # Errors
    /// When the database fails or a stored event or snapshot no longer decodes.
    pub async fn load_from_snapshot<A: Aggregate>(
        &self,
        id: &str,
    ) -> Result<LoadedAggregate<A>, StoreError> {
        let snapshot: Option<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT last_sequence, payload FROM snapshots \
             WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY last_sequence DESC LIMIT 1",
        )
        .bind(A::TYPE)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::db("reading a snapshot"))?;
        let Some((last, payload)) = snapshot else {
            return self.load::<A>(id).await;
        };
        let state: A = serde_json::from_value(payload).map_err(|source| StoreError::Corrupt {
            aggregate_type: A::TYPE.into(),
            aggregate_id: id.into(),
            sequence: last as u64,
            source,
        })?;
        self.fold_stored(state, last as u64, id).await
    }

    /// Applies the stored events of `id` after sequence `after` to `state`.
    async fn fold_stored<A: Aggregate>(
        &self,
        mut state: A,
        after: u64,
        id: &str,
    ) -> Result<LoadedAggregate<A>, StoreError> {
        let mut version = after;
        self.each_stored::<A>(id, after, None, |sequence, event| {
            state.apply(event);
            version = sequence;
            true
        })
        .await?;
        Ok(LoadedAggregate { state, version })
    }

    /// The stored events of aggregate `id` after sequence `after` whose type is
    /// `event_type` and that `keep` accepts, oldest first, at most `limit`, each with its
    /// sequence: the aggregate's own history, for an answer that must not wait for a read
    /// model to catch up. Only kept events are held in memory, and the read stops at the
    /// `limit`-th.
    ///
    /// # Errors
    /// When the database fails or a stored event no longer decodes.
    pub async fn events_of<A: Aggregate>(
        &self,
        id: &str,
        after: u64,
        event_type: &str,
        mut keep: impl FnMut(&A::Event) -> bool,
        limit: usize,
    ) -> Result<Vec<(u64, A::Event)>, StoreError> {
        let mut events = Vec::new();
        if limit == 0 {
            return Ok(events);
        }
        self.each_stored::<A>(id, after, Some(event_type), |sequence, event| {
            if keep(&event) {
                events.push((sequence, event));
            }
            events.len() < limit
        })
        .await?;
        Ok(events)
    }

    /// Hands the stored events of `id` after sequence `after` (of one type, if given) to
    /// `each` until it returns `false`: ONE query whose rows are decoded as they arrive, each payload read as text
    /// straight into the event type (no intermediate JSON tree, no metadata: loading needs
    /// neither). An old event version goes through its upcaster first
    /// (`chronicle_schemas::upcast`).
    async fn each_stored<A: Aggregate>(
        &self,
        id: &str,
        after: u64,
        event_type: Option<&str>,
        mut each: impl FnMut(u64, A::Event) -> bool,
    ) -> Result<(), StoreError> {
        use futures::TryStreamExt;
        use sqlx::Row;
        let mut rows = sqlx::query(
            "SELECT sequence, event_type, event_version, payload::text FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 \
               AND ($4::text IS NULL OR event_type = $4) \
             ORDER BY sequence",
        )
        .bind(A::TYPE)
        .bind(id)
        .bind(after as i64)
        .bind(event_type)
        .fetch(&self.pool);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(StoreError::db("loading events"))?
        {
            let sequence: i64 = row.try_get(0).map_err(StoreError::db("loading events"))?;
            let event_type: &str = row.try_get(1).map_err(StoreError::db("loading events"))?;
            let event_version: &str = row.try_get(2).map_err(StoreError::db("loading events"))?;
            let payload: &str = row.try_get(3).map_err(StoreError::db("loading events"))?;
            let corrupt = |source| StoreError::Corrupt {
                aggregate_type: A::TYPE.into(),
                aggregate_id: id.into(),
                sequence: sequence as u64,
                source,
            };
            let event: A::Event = if chronicle_schemas::is_current(event_type, event_version) {
                serde_json::from_str(payload).map_err(corrupt)?
            } else {
                let stored = serde_json::from_str(payload).map_err(corrupt)?;
                serde_json::from_value(upcast_tagged(event_type, event_version, stored))
                    .map_err(corrupt)?
            };
            if !each(sequence as u64, event) {
                break;
            }
        }
        Ok(())
    }
}

/// A stored payload (`{event_type: fields}`, postgres-es's form) with its fields upcast.
fn upcast_tagged(event_type: &str, version: &str, payload: serde_json::Value) -> serde_json::Value {
    match payload {
        serde_json::Value::Object(mut map) if map.len() == 1 && map.contains_key(event_type) => {
            let fields = map.remove(event_type).unwrap_or_default();
            map.insert(
                event_type.to_owned(),
                chronicle_schemas::upcast(event_type, version, fields),
            );
            serde_json::Value::Object(map)
        }
        other => other,
    }
}
