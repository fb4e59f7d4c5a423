//! The transactional append: a group of commands' events, their outbox rows, idempotency
//! records, claims and snapshots, written in one transaction (ADR 0005), each command with
//! its own optimistic-concurrency check. The [`PendingAppend`]s are encoded on the
//! callers' tasks; the committer hands a group to [`EventStore::append_group`].

use chronicle_schemas::{AggregateKind, Envelope, Metadata, StoredEvent};
use chrono::{SubsecRound, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use uuid::Uuid;

use super::{EventStore, UniqueClaim, OUTBOX_CHANNEL};
use crate::{
    error::{DbError, StoreError},
    idempotency::{self, IdempotencyKey, StoredResponse},
};

/// Who asked for the events being appended; becomes each event's [`Metadata`].
#[derive(Debug, Clone)]
pub(crate) struct Provenance<'a> {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub actor: Option<&'a str>,
}

/// How one append of a group ended when the database itself did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendOutcome {
    Appended,
    /// Another writer appended at one of our sequences first (optimistic concurrency).
    Conflict,
    /// A live idempotency record for the key exists (a concurrent request with it won).
    KeyTaken,
    /// The unique claim at this index of the append's claims belongs to someone else.
    ClaimTaken(usize),
}

/// One event, encoded and ready to insert: its events row and its outbox row.
#[derive(Debug, Clone)]
pub(crate) struct EncodedEvent {
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    subject: String,
    message_id: String,
    envelope: Vec<u8>,
    /// The request that caused it (commands run together each keep their own).
    correlation_id: Uuid,
}

/// Everything one command writes, encoded before it reaches the committer so the CPU work
/// happens on the caller's task, not in the single committer.
#[derive(Debug, Clone)]
pub(crate) struct PendingAppend {
    /// The aggregate's context: whose store it is appended to.
    pub context: &'static str,
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub events: Vec<EncodedEvent>,
    pub idempotency: Option<(IdempotencyKey, StoredResponse)>,
    /// Unique values this command takes for its aggregate.
    pub claims: Vec<UniqueClaim>,
    /// `(last_sequence, state)`: a snapshot to store with the events.
    pub snapshot: Option<(u64, serde_json::Value)>,
    /// The trace the command ran in (W3C `traceparent`), when spans are exported.
    pub trace_context: Option<String>,
}

impl PendingAppend {
    /// Encodes `events`, appended after `from_version` to aggregate `id` of type `A`.
    pub(crate) fn encode<A: Aggregate + AggregateKind>(
        id: &str,
        from_version: u64,
        events: &[A::Event],
        provenance: &Provenance<'_>,
    ) -> Result<Self, StoreError> {
        let recorded_at = Utc::now().trunc_subsecs(6);
        let corrupt = |sequence, source| StoreError::Corrupt {
            aggregate_type: A::TYPE.into(),
            aggregate_id: id.into(),
            sequence,
            source,
        };
        let mut encoded = Vec::with_capacity(events.len());
        for (offset, event) in events.iter().enumerate() {
            let sequence = from_version + 1 + offset as u64;
            let metadata = Metadata {
                event_id: Uuid::now_v7(),
                recorded_at,
                correlation_id: provenance.correlation_id,
                causation_id: provenance.causation_id,
                actor: provenance.actor.map(str::to_owned),
            };
            let payload = serde_json::to_value(event).map_err(|e| corrupt(sequence, e))?;
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
                    payload: chronicle_schemas::untagged(payload.clone(), &event_type),
                },
                &metadata,
            );
            encoded.push(EncodedEvent {
                sequence: sequence as i64,
                subject: envelope.subject(),
                message_id: envelope.message_id(),
                envelope: serde_json::to_vec(&envelope).map_err(|e| corrupt(sequence, e))?,
                event_type,
                event_version,
                payload: payload.to_string(),
                metadata: serde_json::to_string(&metadata).map_err(|e| corrupt(sequence, e))?,
                correlation_id: provenance.correlation_id,
            });
        }
        Ok(Self {
            context: A::CONTEXT,
            aggregate_type: A::TYPE,
            aggregate_id: id.to_owned(),
            events: encoded,
            idempotency: None,
            claims: Vec::new(),
            snapshot: None,
            trace_context: chronicle_telemetry::trace_context(),
        })
    }
}

impl EventStore {
    /// Appends a group of commands' events in ONE transaction, each with its own
    /// optimistic-concurrency check: a command whose sequence another writer took, or whose
    /// idempotency key is taken, fails alone and its neighbours commit. With the events go
    /// their outbox rows, the idempotency records and snapshots; the relay is notified on
    /// commit.
    ///
    /// Callers must not put two appends for one aggregate in a group (the command bus's
    /// per-aggregate queue guarantees it).
    pub(crate) async fn append_group(
        &self,
        group: &[PendingAppend],
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let mut outcomes = vec![AppendOutcome::Appended; group.len()];
        let plain = group
            .iter()
            .all(|a| a.idempotency.is_none() && a.claims.is_empty() && a.snapshot.is_none());
        if plain {
            match self.try_plain_group(group).await {
                Ok(true) => return Ok(outcomes),
                // A conflict somewhere: the general path below finds out whose.
                Ok(false) => {}
                Err(StoreError::Database(DbError { source, .. })) if is_deadlock(&source) => {}
                Err(e) => return Err(e),
            }
        }
        let mut deadlocks = 0;
        loop {
            match self.try_group(group, &mut outcomes).await {
                Ok(true) => return Ok(outcomes),
                // Losers were found and marked; run again with the others.
                Ok(false) => continue,
                // Two groups from different processes can wait on each other's keys.
                Err(StoreError::Database(DbError { source, .. }))
                    if is_deadlock(&source) && deadlocks < 5 =>
                {
                    deadlocks += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(deadlocks)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Appends every one of `appends` (several aggregates' events) in ONE transaction, or
    /// none of them: each keeps its optimistic-concurrency check, and if any loses (another
    /// writer took one of its sequences, or the idempotency key is taken) nothing is
    /// appended. The outcome is `Appended`, or the first loser's.
    ///
    /// Callers must not put two appends for one aggregate in `appends`.
    pub(crate) async fn append_together(
        &self,
        appends: &[PendingAppend],
    ) -> Result<AppendOutcome, StoreError> {
        let mut deadlocks = 0;
        loop {
            let mut outcomes = vec![AppendOutcome::Appended; appends.len()];
            match self.try_group(appends, &mut outcomes).await {
                // On `false` the transaction was rolled back: the losers are marked, and
                // the others, marked `Appended`, were not appended either.
                Ok(_) => {
                    return Ok(outcomes
                        .into_iter()
                        .find(|o| *o != AppendOutcome::Appended)
                        .unwrap_or(AppendOutcome::Appended))
                }
                Err(StoreError::Database(DbError { source, .. }))
                    if is_deadlock(&source) && deadlocks < 5 =>
                {
                    deadlocks += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(deadlocks)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The common group (events only: no idempotency key, claim or snapshot) as ONE
    /// statement in its own implicit transaction: events, outbox rows and the relay's
    /// notification in a single round trip. If any event's key is taken, the statement
    /// fails on purpose (a division by zero) so nothing of it stays: `Ok(false)`.
    async fn try_plain_group(&self, group: &[PendingAppend]) -> Result<bool, StoreError> {
        let live: Vec<usize> = (0..group.len()).collect();
        let rows = sorted_rows(group, &live);
        if rows.is_empty() {
            return Ok(true);
        }
        let c = Columns::of(group, &rows);
        self.faults.hit("store.before_commit")?;
        let result = sqlx::query(
            "WITH e AS ( \
               INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
               SELECT at, ai, s, t, v, p::json, m::json \
               FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[]) \
                 AS e(at, ai, s, t, v, p, m) \
               ON CONFLICT DO NOTHING RETURNING 1), \
             o AS ( \
               INSERT INTO outbox (subject, message_id, event_type, event_version, aggregate_sequence, correlation_id, envelope, trace_context) \
               SELECT * FROM UNNEST($8::text[], $9::text[], $4::text[], $5::text[], $3::bigint[], $10::uuid[], $11::bytea[], $13::text[]) \
               RETURNING 1) \
             SELECT 1 / (CASE WHEN (SELECT count(*) FROM e) = cardinality($1::text[]) THEN 1 ELSE 0 END), \
                    (SELECT count(*) FROM o), pg_notify($12 || '_' || current_schema(), '')",
        )
        .bind(&c.aggregate_types)
        .bind(&c.aggregate_ids)
        .bind(&c.sequences)
        .bind(&c.event_types)
        .bind(&c.event_versions)
        .bind(&c.payloads)
        .bind(&c.metadata)
        .bind(&c.subjects)
        .bind(&c.message_ids)
        .bind(&c.correlation_ids)
        .bind(&c.envelopes)
        .bind(OUTBOX_CHANNEL)
        .bind(&c.trace_contexts)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("22012") => Ok(false),
            Err(source) => Err(StoreError::db("appending a group")(source)),
        }
    }

    /// One attempt at a group. Returns `Ok(false)` after marking new losers in `outcomes`
    /// (the transaction is rolled back), `Ok(true)` once everything left committed.
    async fn try_group(
        &self,
        group: &[PendingAppend],
        outcomes: &mut [AppendOutcome],
    ) -> Result<bool, StoreError> {
        let live: Vec<usize> = (0..group.len())
            .filter(|&i| outcomes[i] == AppendOutcome::Appended)
            .collect();
        if live.is_empty() {
            return Ok(true);
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(StoreError::db("starting an append"))?;

        let keyed: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| group[i].idempotency.is_some())
            .collect();
        if !keyed.is_empty() {
            let keys: Vec<(&IdempotencyKey, &StoredResponse)> = keyed
                .iter()
                .filter_map(|&i| group[i].idempotency.as_ref().map(|(k, r)| (k, r)))
                .collect();
            let recorded = idempotency::record_all(&mut tx, &keys).await?;
            let mut lost = false;
            for (&i, ok) in keyed.iter().zip(recorded) {
                if !ok {
                    outcomes[i] = AppendOutcome::KeyTaken;
                    lost = true;
                }
            }
            if lost {
                return Ok(false);
            }
        }

        let claimed: Vec<(usize, usize, &UniqueClaim)> = live
            .iter()
            .flat_map(|&i| {
                group[i]
                    .claims
                    .iter()
                    .enumerate()
                    .map(move |(c, claim)| (i, c, claim))
            })
            .collect();
        if !claimed.is_empty() {
            let taken: Vec<(String, String)> = sqlx::query_as(
                "INSERT INTO unique_claims (namespace, value, aggregate_type, aggregate_id) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
                 ON CONFLICT DO NOTHING RETURNING namespace, value",
            )
            .bind(
                claimed
                    .iter()
                    .map(|(_, _, c)| c.namespace.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                claimed
                    .iter()
                    .map(|(_, _, c)| c.value.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                claimed
                    .iter()
                    .map(|(i, _, _)| group[*i].aggregate_type)
                    .collect::<Vec<_>>(),
            )
            .bind(
                claimed
                    .iter()
                    .map(|(i, _, _)| group[*i].aggregate_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::db("taking unique claims"))?;
            if taken.len() < claimed.len() {
                let taken: std::collections::HashSet<(String, String)> =
                    taken.into_iter().collect();
                for (i, c, claim) in &claimed {
                    if !taken.contains(&(claim.namespace.clone(), claim.value.clone())) {
                        outcomes[*i] = AppendOutcome::ClaimTaken(*c);
                    }
                }
                return Ok(false);
            }
        }

        let rows = sorted_rows(group, &live);
        if !rows.is_empty() {
            let c = Columns::of(group, &rows);
            let inserted: Vec<(String, String, i64)> = sqlx::query_as(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                 SELECT at, ai, s, t, v, p::json, m::json \
                 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[]) \
                   AS e(at, ai, s, t, v, p, m) \
                 ON CONFLICT DO NOTHING RETURNING aggregate_type, aggregate_id, sequence",
            )
            .bind(&c.aggregate_types)
            .bind(&c.aggregate_ids)
            .bind(&c.sequences)
            .bind(&c.event_types)
            .bind(&c.event_versions)
            .bind(&c.payloads)
            .bind(&c.metadata)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::db("appending events"))?;
            if inserted.len() < rows.len() {
                let inserted: std::collections::HashSet<(String, String, i64)> =
                    inserted.into_iter().collect();
                // A key the group itself holds twice is inserted once (for the first row
                // that has it, as PostgreSQL inserts in order): every later holder lost,
                // even though the key is among the inserted ones.
                let mut held = std::collections::HashSet::new();
                let mut lost = false;
                for (i, e) in &rows {
                    let key = (
                        group[*i].aggregate_type.to_owned(),
                        group[*i].aggregate_id.clone(),
                        e.sequence,
                    );
                    let first_holder = held.insert(key.clone());
                    if !inserted.contains(&key) || !first_holder {
                        outcomes[*i] = AppendOutcome::Conflict;
                        lost = true;
                    }
                }
                if !lost {
                    // Never loop on a group that cannot tell its loser.
                    return Err(StoreError::db(
                        "appending events (an insert did nothing and no append lost)",
                    )(sqlx::Error::Protocol(
                        "unexplained event conflict".into(),
                    )));
                }
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO outbox (subject, message_id, event_type, event_version, aggregate_sequence, correlation_id, envelope, trace_context) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::uuid[], $7::bytea[], $8::text[])",
            )
            .bind(&c.subjects)
            .bind(&c.message_ids)
            .bind(&c.event_types)
            .bind(&c.event_versions)
            .bind(&c.sequences)
            .bind(&c.correlation_ids)
            .bind(&c.envelopes)
            .bind(&c.trace_contexts)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("writing the outbox"))?;
            sqlx::query("SELECT pg_notify($1 || '_' || current_schema(), '')")
                .bind(OUTBOX_CHANNEL)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::db("notifying the relay"))?;
        }

        let snapshots: Vec<(&PendingAppend, &(u64, serde_json::Value))> = live
            .iter()
            .filter_map(|&i| group[i].snapshot.as_ref().map(|s| (&group[i], s)))
            .collect();
        if !snapshots.is_empty() {
            // One snapshot per aggregate: the new one replaces the old.
            sqlx::query(
                "WITH gone AS (DELETE FROM snapshots s USING UNNEST($1::text[], $2::text[]) AS n(t, i) \
                               WHERE s.aggregate_type = n.t AND s.aggregate_id = n.i) \
                 INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
                 SELECT t, i, l, l, p::json FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[]) AS n(t, i, l, p)",
            )
            .bind(snapshots.iter().map(|(a, _)| a.aggregate_type).collect::<Vec<_>>())
            .bind(snapshots.iter().map(|(a, _)| a.aggregate_id.as_str()).collect::<Vec<_>>())
            .bind(snapshots.iter().map(|(_, (l, _))| *l as i64).collect::<Vec<_>>())
            .bind(snapshots.iter().map(|(_, (_, p))| p.to_string()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("writing snapshots"))?;
        }
        self.faults.hit("store.before_commit")?;
        tx.commit()
            .await
            .map_err(StoreError::db("committing an append"))?;
        Ok(true)
    }
}

/// A group's events as the column arrays the `UNNEST` inserts of events and outbox take.
struct Columns<'a> {
    aggregate_types: Vec<&'a str>,
    aggregate_ids: Vec<&'a str>,
    sequences: Vec<i64>,
    event_types: Vec<&'a str>,
    event_versions: Vec<&'a str>,
    payloads: Vec<&'a str>,
    metadata: Vec<&'a str>,
    subjects: Vec<&'a str>,
    message_ids: Vec<&'a str>,
    correlation_ids: Vec<Uuid>,
    envelopes: Vec<&'a [u8]>,
    trace_contexts: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(group: &'a [PendingAppend], rows: &[(usize, &'a EncodedEvent)]) -> Self {
        Self {
            aggregate_types: rows.iter().map(|(i, _)| group[*i].aggregate_type).collect(),
            aggregate_ids: rows
                .iter()
                .map(|(i, _)| group[*i].aggregate_id.as_str())
                .collect(),
            sequences: rows.iter().map(|(_, e)| e.sequence).collect(),
            event_types: rows.iter().map(|(_, e)| e.event_type.as_str()).collect(),
            event_versions: rows.iter().map(|(_, e)| e.event_version.as_str()).collect(),
            payloads: rows.iter().map(|(_, e)| e.payload.as_str()).collect(),
            metadata: rows.iter().map(|(_, e)| e.metadata.as_str()).collect(),
            subjects: rows.iter().map(|(_, e)| e.subject.as_str()).collect(),
            message_ids: rows.iter().map(|(_, e)| e.message_id.as_str()).collect(),
            correlation_ids: rows.iter().map(|(_, e)| e.correlation_id).collect(),
            envelopes: rows.iter().map(|(_, e)| e.envelope.as_slice()).collect(),
            trace_contexts: rows
                .iter()
                .map(|(i, _)| group[*i].trace_context.as_deref())
                .collect(),
        }
    }
}

/// The events of the `live` appends, in one order for every writer (type, id, sequence), so
/// two groups never wait on each other in a cycle.
fn sorted_rows<'a>(group: &'a [PendingAppend], live: &[usize]) -> Vec<(usize, &'a EncodedEvent)> {
    let mut rows: Vec<(usize, &EncodedEvent)> = live
        .iter()
        .flat_map(|&i| group[i].events.iter().map(move |e| (i, e)))
        .collect();
    rows.sort_by(|(a, x), (b, y)| {
        (
            group[*a].aggregate_type,
            &group[*a].aggregate_id,
            x.sequence,
        )
            .cmp(&(
                group[*b].aggregate_type,
                &group[*b].aggregate_id,
                y.sequence,
            ))
    });
    rows
}

fn is_deadlock(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("40P01"))
}
