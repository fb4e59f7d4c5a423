use chronicle_schemas::{AggregateKind, Envelope, Metadata, StoredEvent};
use chrono::{SubsecRound, Utc};
use cqrs_es::{persist::PersistedEventRepository, Aggregate, DomainEvent};
use postgres_es::PostgresEventRepository;
use sqlx::{migrate::Migrator, PgPool};
use uuid::Uuid;

use crate::{
    error::StoreError,
    idempotency::{self, IdempotencyKey, StoredResponse},
};

/// The Postgres channel the write side notifies after every commit that added outbox rows;
/// the relay listens on it so it publishes at once instead of waiting for its next poll.
pub const OUTBOX_CHANNEL: &str = "chronicle_outbox";

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates or updates the event-store tables (`events`, `snapshots`, `outbox`,
/// `idempotency_keys`).
///
/// # Errors
/// When the database cannot be reached or a migration fails.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// An aggregate rebuilt from its events, with the sequence of the last one (0 when none).
#[derive(Debug, Clone)]
pub struct LoadedAggregate<A> {
    pub state: A,
    pub version: u64,
}

/// Who asked for the events being appended; becomes each event's [`Metadata`].
#[derive(Debug, Clone)]
pub(crate) struct Provenance<'a> {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub actor: Option<&'a str>,
}

/// How an append ended when the database itself did not fail.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AppendOutcome {
    Appended,
    /// Another writer appended at one of our sequences first (optimistic concurrency).
    Conflict,
    /// A live idempotency record for the key exists (a concurrent request with it won).
    KeyTaken,
}

/// The Postgres event store: postgres-es's tables, Chronicle's transactional append.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    repo: std::sync::Arc<PostgresEventRepository>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore").finish_non_exhaustive()
    }
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        let repo = std::sync::Arc::new(PostgresEventRepository::new(pool.clone()));
        Self { pool, repo }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Rebuilds aggregate `id` of type `A` from all its events.
    ///
    /// # Errors
    /// When the database fails or a stored event no longer decodes.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<LoadedAggregate<A>, StoreError> {
        let events = self.repo.get_events::<A>(id).await?;
        let mut state = A::default();
        let mut version = 0;
        for stored in events {
            let event: A::Event =
                serde_json::from_value(stored.payload).map_err(|source| StoreError::Corrupt {
                    aggregate_type: A::TYPE.into(),
                    aggregate_id: id.into(),
                    sequence: stored.sequence as u64,
                    source,
                })?;
            state.apply(event);
            version = stored.sequence as u64;
        }
        Ok(LoadedAggregate { state, version })
    }

    /// Appends `events` after `from_version`, with their outbox rows and, when given, the
    /// idempotency record, in one transaction; notifies the relay on commit.
    pub(crate) async fn append<A: Aggregate + AggregateKind>(
        &self,
        id: &str,
        from_version: u64,
        events: &[A::Event],
        provenance: &Provenance<'_>,
        idempotency: Option<(&IdempotencyKey, &StoredResponse)>,
    ) -> Result<AppendOutcome, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(StoreError::db("starting an append"))?;
        if !events.is_empty() {
            let recorded_at = Utc::now().trunc_subsecs(6);
            let n = events.len();
            let (mut sequences, mut types, mut versions) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut payloads, mut metadatas, mut envelopes) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut subjects, mut message_ids) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for (offset, event) in events.iter().enumerate() {
                let sequence = from_version + 1 + offset as u64;
                let metadata = Metadata {
                    event_id: Uuid::now_v7(),
                    recorded_at,
                    correlation_id: provenance.correlation_id,
                    causation_id: provenance.causation_id,
                    actor: provenance.actor.map(str::to_owned),
                };
                let payload =
                    serde_json::to_value(event).map_err(|source| StoreError::Corrupt {
                        aggregate_type: A::TYPE.into(),
                        aggregate_id: id.into(),
                        sequence,
                        source,
                    })?;
                let event_type = event.event_type();
                let event_version = event.event_version();
                let envelope = Envelope::from_stored(
                    StoredEvent {
                        context: A::CONTEXT,
                        aggregate_type: A::TYPE,
                        aggregate_id: id,
                        sequence,
                        event_type: &event_type,
                        event_version: &event_version,
                        payload: payload.clone(),
                    },
                    &metadata,
                );
                subjects.push(envelope.subject());
                message_ids.push(envelope.message_id());
                envelopes.push(serde_json::to_vec(&envelope).map_err(|source| {
                    StoreError::Corrupt {
                        aggregate_type: A::TYPE.into(),
                        aggregate_id: id.into(),
                        sequence,
                        source,
                    }
                })?);
                sequences.push(sequence as i64);
                types.push(event_type);
                versions.push(event_version);
                payloads.push(payload.to_string());
                metadatas.push(serde_json::json!(metadata).to_string());
            }
            let inserted = sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                 SELECT $1, $2, s, t, v, p::json, m::json \
                 FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[]) AS e(s, t, v, p, m)",
            )
            .bind(A::TYPE)
            .bind(id)
            .bind(&sequences)
            .bind(&types)
            .bind(&versions)
            .bind(&payloads)
            .bind(&metadatas)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e, "events_pkey") => {
                    return Ok(AppendOutcome::Conflict)
                }
                Err(e) => return Err(StoreError::db("appending events")(e)),
            }
            let correlation = vec![provenance.correlation_id; n];
            sqlx::query(
                "INSERT INTO outbox (subject, message_id, event_type, event_version, aggregate_sequence, correlation_id, envelope) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::uuid[], $7::bytea[])",
            )
            .bind(&subjects)
            .bind(&message_ids)
            .bind(&types)
            .bind(&versions)
            .bind(&sequences)
            .bind(&correlation)
            .bind(&envelopes)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("writing the outbox"))?;
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(OUTBOX_CHANNEL)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db("notifying the relay"))?;
        }
        if let Some((key, response)) = idempotency {
            if !idempotency::record(&mut tx, key, response).await? {
                return Ok(AppendOutcome::KeyTaken);
            }
        }
        match tx.commit().await {
            Ok(()) => Ok(AppendOutcome::Appended),
            // With deferred checks a conflict can surface at commit; treat it the same way.
            Err(e) if is_unique_violation(&e, "events_pkey") => Ok(AppendOutcome::Conflict),
            Err(e) => Err(StoreError::db("committing an append")(e)),
        }
    }
}

fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("23505") && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}
