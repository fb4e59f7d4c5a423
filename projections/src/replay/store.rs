//! Rebuilding a read model from the event stores in PostgreSQL instead of the stream
//! (`chronicle replay --from postgres`): each store the read model reads, in one snapshot
//! each, merged in commit order, with the stream read for what a store behind the
//! checkpoint published (see [`replay_from_store`]). The shadow tables, the fill and the
//! swap are the log replay's (`mod.rs`).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use chronicle_bus::ensure_events_stream;
use chronicle_schemas::Envelope;
use futures::StreamExt;

use super::{fill, position, prepare_shadow, subject_matches, swap, Batch, ReplayStats, Skipped};
use crate::{Projection, ProjectionError};

/// Rebuilds `projection` from the event stores in PostgreSQL instead of the stream, for when
/// the stream was lost or trimmed, and swaps it in (`chronicle replay --from postgres`).
///
/// The events come from the store of each context whose events the projection reads (each
/// through that context's pool in `db`), the rebuilt tables go to the projection's own.
/// One snapshot of a store gives its events and its relay's position (migration 0011):
/// every event of the snapshot that is not in its outbox is in the stream at or below that
/// position, and every event in its outbox comes after it. So the rebuilt model takes the
/// former, its checkpoint is the position, and the live projector goes on with the latter
/// as the relay publishes them: nothing missed, nothing twice. When the stream was created
/// after the position was recorded (lost and made again), no event of the new stream was in
/// the snapshot, and the checkpoint is 0. Events keep each aggregate's order; across
/// aggregates they come in commit time order.
///
/// A projection that reads the events of several contexts has one position per store. Its
/// checkpoint is the furthest; a store whose position is behind it had events published up
/// to the checkpoint that its snapshot held unpublished, and those are read from the stream
/// between the two. When the stream no longer holds them (trimmed), the rebuild is refused
/// ([`ProjectionError::Refused`]; rebuild it from the stream).
///
/// Events it cannot apply are parked without a stream sequence (0): retry them by replaying
/// again once the cause is fixed.
///
/// # Errors
/// When Postgres or NATS fail, or the rebuild is refused; the live tables are untouched then.
pub async fn replay_from_store<P: Projection>(
    projection: &P,
    db: &chronicle_commands::Databases,
    client: &async_nats::Client,
    batch_max: usize,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplayStats, ProjectionError> {
    let started = Instant::now();
    let pool = db.of(projection.context());
    let nats = ProjectionError::nats::<chronicle_bus::NatsError>;
    let js = jetstream::new(client.clone());
    let stream = ensure_events_stream(&js)
        .await
        .map_err(|e| nats("opening the stream")(e.into()))?;
    let created = stream.cached_info().created.unix_timestamp_nanos() / 1_000;
    // Each subject the projection reads names a context and an aggregate type
    // (`events.<context>.<aggregate_type>.>`): those types are read, each from its
    // context's store.
    let subjects = projection.subjects();
    let mut sources: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for subject in &subjects {
        match subject.split('.').collect::<Vec<_>>()[..] {
            [_, context, aggregate_type, ..]
                if ![context, aggregate_type]
                    .iter()
                    .any(|t| *t == "*" || *t == ">") =>
            {
                let types = sources.entry(context.to_owned()).or_default();
                if !types.iter().any(|t| t == aggregate_type) {
                    types.push(aggregate_type.to_owned());
                }
            }
            _ => {
                return Err(ProjectionError::Refused(format!(
                    "{subject:?} names no context and aggregate type to read from the store"
                )))
            }
        }
    }
    let contexts: std::collections::HashMap<String, String> = sources
        .iter()
        .flat_map(|(context, types)| types.iter().map(|t| (t.clone(), context.clone())))
        .collect();
    let mut snapshots = Vec::with_capacity(sources.len());
    let mut positions = Vec::with_capacity(sources.len());
    let mut total = 0i64;
    for (context, types) in &sources {
        let mut conn = db
            .of(context)
            .acquire()
            .await
            .map_err(ProjectionError::db("connecting for the snapshot"))?;
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *conn)
            .await
            .map_err(ProjectionError::db("taking a snapshot"))?;
        let position: Option<(i64, i64)> = sqlx::query_as(
            "SELECT stream_seq, (EXTRACT(EPOCH FROM stream_created) * 1000000)::bigint FROM relay_position",
        )
        .fetch_optional(&mut *conn)
        .await
        .map_err(ProjectionError::db("reading the relay's position"))?;
        // The same stream when its creation time matches to the millisecond (PostgreSQL keeps
        // microseconds, NATS nanoseconds).
        positions.push(match position {
            Some((seq, at)) if (i128::from(at) - created).abs() < 1_000 => seq.max(0) as u64,
            _ => 0,
        });
        total += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM events WHERE aggregate_type = ANY($1)",
        )
        .bind(types)
        .fetch_one(&mut *conn)
        .await
        .map_err(ProjectionError::db("counting the events"))?;
        snapshots.push(conn);
    }
    // The checkpoint is the furthest position. A store whose position is below it had
    // events published between the two, which its snapshot did not have as published: they
    // are read from the stream (the catch-up), from its position to the checkpoint.
    let checkpoint = positions.iter().copied().max().unwrap_or(0);
    let lagging: std::collections::HashMap<String, u64> = sources
        .keys()
        .zip(&positions)
        .filter(|(_, position)| **position < checkpoint)
        .map(|(context, position)| ((*context).to_owned(), *position))
        .collect();
    let catch_up_from = lagging.values().copied().min().map(|p| p + 1);
    if let Some(from) = catch_up_from {
        let first = stream
            .get_info()
            .await
            .map_err(|e| nats("reading the stream")(e.into()))?
            .state
            .first_sequence;
        if first > from {
            end_snapshots(snapshots).await?;
            return Err(ProjectionError::Refused(format!(
                "{} reads the events of several contexts, and the stream no longer holds \
                 sequences {from} to {} that a rebuild from the event stores needs: rebuild it \
                 from the stream (`chronicle replay {}`)",
                projection.name(),
                first - 1,
                projection.name()
            )));
        }
    }
    let shadow = prepare_shadow(projection, pool).await?;
    let mut heads = Vec::with_capacity(snapshots.len());
    for (conn, types) in snapshots.iter_mut().zip(sources.values()) {
        heads.push(Head {
            rows: sqlx::query_as::<_, StoredRow>(
                "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
                        e.payload::jsonb AS payload, e.metadata::jsonb AS metadata, e.at \
                 FROM (SELECT *, max((metadata->>'recorded_at')::timestamptz) \
                           OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY sequence) AS at \
                       FROM events WHERE aggregate_type = ANY($1)) e \
                 WHERE NOT EXISTS (SELECT 1 FROM outbox o \
                                   WHERE o.message_id = e.aggregate_type || ':' || e.aggregate_id || ':' || e.sequence) \
                 ORDER BY e.at, e.aggregate_type, e.aggregate_id, e.sequence",
            )
            .bind(types.clone())
            .fetch(&mut **conn),
            next: None,
            done: false,
        });
    }
    let (batches, ready) = tokio::sync::mpsc::channel(2);
    let filling = fill(
        projection,
        pool,
        &shadow,
        ready,
        total.max(0) as u64,
        &mut progress,
    );
    let reading = async move {
        let mut batch = Batch::with_capacity(batch_max);
        while let Some(row) = next_in_commit_order(&mut heads).await {
            let row = row.map_err(ProjectionError::db("reading the events"))?;
            let context = contexts
                .get(row.aggregate_type.as_str())
                .map_or("unknown", String::as_str);
            let subject =
                chronicle_schemas::subject_for(context, &row.aggregate_type, &row.aggregate_id);
            if !subjects.iter().any(|p| subject_matches(p, &subject)) {
                continue;
            }
            batch.last = checkpoint;
            match serde_json::from_value::<chronicle_schemas::Metadata>(row.metadata) {
                Ok(metadata) => {
                    let envelope = Envelope::from_stored(
                        chronicle_schemas::StoredEvent {
                            context,
                            aggregate_type: &row.aggregate_type,
                            aggregate_id: &row.aggregate_id,
                            sequence: row.sequence.max(0) as u64,
                            event_type: &row.event_type,
                            event_version: &row.event_version,
                            payload: row.payload,
                        },
                        &metadata,
                    );
                    batch.events.push(envelope);
                    batch.seqs.push(0);
                }
                Err(e) => batch.skipped.push(Skipped {
                    seq: 0,
                    subject,
                    event_type: row.event_type.clone(),
                    error: format!("cannot read the event's metadata: {e}"),
                }),
            }
            if batch.events.len() >= batch_max {
                let full = std::mem::replace(&mut batch, Batch::with_capacity(batch_max));
                if batches.send(Ok(full)).await.is_err() {
                    return Ok(());
                }
            }
        }
        if let Some(from) = catch_up_from {
            batch = catch_up(
                &stream, &subjects, from, checkpoint, &lagging, batch, batch_max, &batches,
            )
            .await?;
        }
        batch.last = checkpoint;
        let _ = batches.send(Ok(batch)).await;
        Ok::<(), ProjectionError>(())
    };
    let (read, filled) = tokio::join!(reading, filling);
    end_snapshots(snapshots).await?;
    read?;
    let filled = filled?;
    swap(projection, pool, &shadow, checkpoint, &filled.skipped).await?;
    Ok(ReplayStats {
        events: filled.done,
        last_sequence: checkpoint,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Adds to `batch` (sending full ones) the stream's messages from `from` to `checkpoint` on
/// `subjects` whose context lags: published after that context's position, so not in its
/// store's snapshot as published. The batch being filled.
#[allow(clippy::too_many_arguments)]
async fn catch_up(
    stream: &jetstream::stream::Stream,
    subjects: &[String],
    from: u64,
    checkpoint: u64,
    lagging: &std::collections::HashMap<String, u64>,
    mut batch: Batch,
    batch_max: usize,
    batches: &tokio::sync::mpsc::Sender<Result<Batch, ProjectionError>>,
) -> Result<Batch, ProjectionError> {
    let nats = ProjectionError::nats::<chronicle_bus::NatsError>;
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subjects: subjects.to_vec(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| nats("creating the catch-up consumer")(e.into()))?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| nats("reading the catch-up consumer")(e.into()))?
        .num_pending;
    if pending == 0 {
        return Ok(batch);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| nats("catching up")(e.into()))?;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| nats("catching up")("no message for 30 s".into()))?
            .ok_or_else(|| nats("catching up")("the consumer ended".into()))?
            .map_err(|e| nats("catching up")(e.into()))?;
        let (sequence, pending) = position(&message)?;
        if sequence > checkpoint {
            return Ok(batch);
        }
        let context = message.subject.split('.').nth(1).unwrap_or_default();
        if lagging
            .get(context)
            .is_some_and(|position| sequence > *position)
        {
            batch.take(&message, sequence);
            if batch.events.len() >= batch_max {
                let full = std::mem::replace(&mut batch, Batch::with_capacity(batch_max));
                if batches.send(Ok(full)).await.is_err() {
                    return Ok(Batch::with_capacity(0));
                }
            }
        }
        if pending == 0 || sequence == checkpoint {
            return Ok(batch);
        }
    }
}

/// Ends the snapshots (they were only read) before their connections go back to the pools.
async fn end_snapshots(
    snapshots: Vec<sqlx::pool::PoolConnection<sqlx::Postgres>>,
) -> Result<(), ProjectionError> {
    for mut conn in snapshots {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut *conn)
            .await
            .map_err(ProjectionError::db("ending the snapshot"))?;
    }
    Ok(())
}

/// One store's rows, in commit order, and the next of them once read.
struct Head<'a> {
    rows: futures::stream::BoxStream<'a, Result<StoredRow, sqlx::Error>>,
    next: Option<StoredRow>,
    done: bool,
}

/// The row that committed first among the stores' heads (each store's rows come in commit
/// order): by commit time, then aggregate and sequence, as one store's query orders them.
async fn next_in_commit_order(heads: &mut [Head<'_>]) -> Option<Result<StoredRow, sqlx::Error>> {
    for head in heads.iter_mut() {
        if head.next.is_none() && !head.done {
            match head.rows.next().await {
                Some(Ok(row)) => head.next = Some(row),
                // An error goes out at once.
                Some(Err(e)) => return Some(Err(e)),
                None => head.done = true,
            }
        }
    }
    heads
        .iter_mut()
        .filter(|head| head.next.is_some())
        .min_by(|a, b| {
            let (a, b) = (a.next.as_ref(), b.next.as_ref());
            a.map(StoredRow::order_key)
                .cmp(&b.map(StoredRow::order_key))
        })
        .and_then(|head| head.next.take())
        .map(Ok)
}

/// One row of the events table, as a rebuild from the event store reads it.
#[derive(sqlx::FromRow)]
struct StoredRow {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: serde_json::Value,
    metadata: serde_json::Value,
    /// When its aggregate's events up to it were committed (the latest `recorded_at`).
    at: Option<chrono::DateTime<chrono::Utc>>,
}

impl StoredRow {
    /// As the query orders rows: by `at` (none last, as PostgreSQL puts NULLs), then
    /// aggregate and sequence.
    fn order_key(&self) -> (bool, Option<chrono::DateTime<chrono::Utc>>, &str, &str, i64) {
        (
            self.at.is_none(),
            self.at,
            &self.aggregate_type,
            &self.aggregate_id,
            self.sequence,
        )
    }
}
