//! Rebuilding a read model from the log.
//!
//! The projection's tables are created in a shadow schema (`replay_<name>`) and filled by the
//! projection's own `apply`, run with the shadow schema first on the `search_path`, from an
//! ordered consumer reading the stream from sequence 1. At the end one transaction locks the
//! checkpoint row, replaces the live tables with the shadow ones and sets the checkpoint to
//! the last replayed sequence; the live projector notices the checkpoint moved and carries on
//! from there. Readers see the old tables until that commit and the new ones after it.
//!
//! An event that cannot be decoded or applied does not stop a replay, as it does not stop
//! the live projector: its batch is applied again one event at a time under savepoints, the
//! event is left out, and at the swap it becomes the projection's parked list (replacing
//! the old one: what the rebuilt model could not apply is exactly what is parked).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use chronicle_bus::ensure_events_stream;
use chronicle_schemas::Envelope;
use futures::StreamExt;
use sqlx::PgPool;

use crate::{runtime::setup, Projection, ProjectionError};

/// What a replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayStats {
    pub events: u64,
    /// The stream sequence the rebuilt model is at (its new checkpoint).
    pub last_sequence: u64,
    pub seconds: f64,
}

/// Rebuilds `projection` from the `EVENTS` stream and swaps it in.
///
/// `progress(done, total)` is called after each batch (`total` is the number of matching
/// messages when the replay started).
///
/// # Errors
/// When Postgres or NATS fail; the live tables are untouched then.
pub async fn replay<P: Projection>(
    projection: &P,
    pool: &PgPool,
    client: &async_nats::Client,
    batch_max: usize,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplayStats, ProjectionError> {
    let started = Instant::now();
    let shadow = prepare_shadow(projection, pool).await?;

    let nats = ProjectionError::nats::<chronicle_bus::NatsError>;
    let js = jetstream::new(client.clone());
    let stream = ensure_events_stream(&js)
        .await
        .map_err(|e| nats("opening the stream")(e.into()))?;
    let subjects = projection.subjects();
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subjects: subjects.clone(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| nats("creating the replay consumer")(e.into()))?;
    let total = consumer
        .info()
        .await
        .map_err(|e| nats("reading the replay consumer")(e.into()))?
        .num_pending;
    let in_stream = stream
        .get_info()
        .await
        .map_err(|e| nats("reading the stream")(e.into()))?
        .state
        .messages;
    // nats-server matches a wildcard filter against every message block's subjects, which
    // costs it more than sending the messages: when the projection wants a good part of the
    // stream, read all of it and keep the matching subjects here.
    let client_filter = if total.saturating_mul(3) >= in_stream {
        consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| nats("creating the replay consumer")(e.into()))?;
        Some(subjects)
    } else {
        None
    };
    let filled = if total > 0 {
        let messages = consumer
            .messages()
            .await
            .map_err(|e| nats("replaying")(e.into()))?;
        // Reading and decoding overlap with writing: a reader task fills the next batch
        // while this one is applied. Two batches in flight bound the memory.
        let (batches, ready) = tokio::sync::mpsc::channel(2);
        let reader = tokio::spawn(read_batches(messages, client_filter, batch_max, batches));
        let filled = fill(projection, pool, &shadow, ready, total, &mut progress).await?;
        reader.await.map_err(|e| nats("replaying")(e.into()))?;
        filled
    } else {
        Filled::default()
    };
    swap(projection, pool, &shadow, filled.last, &filled.skipped).await?;
    Ok(ReplayStats {
        events: filled.done,
        last_sequence: filled.last,
        seconds: started.elapsed().as_secs_f64(),
    })
}

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
    let contexts: std::collections::HashMap<&str, &str> =
        chronicle_schemas::contracts::event_contracts()
            .into_iter()
            .map(|c| (c.aggregate_type, c.context))
            .collect();
    let subjects = projection.subjects();
    // Only the aggregate types whose subjects the projection reads are read at all, each
    // from its context's store.
    let mut sources: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (aggregate_type, context) in &contexts {
        let subject = format!("events.{context}.{aggregate_type}.x");
        if subjects.iter().any(|p| subject_matches(p, &subject)) {
            sources.entry(context).or_default().push(aggregate_type);
        }
    }
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
                .copied()
                .unwrap_or("unknown");
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

/// Creates the projection's tables in its shadow schema (`replay_<name>`), empty: its name.
async fn prepare_shadow<P: Projection>(
    projection: &P,
    pool: &PgPool,
) -> Result<String, ProjectionError> {
    let shadow = format!("replay_{}", projection.name());
    setup(pool, projection).await?;
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {shadow} CASCADE; CREATE SCHEMA {shadow}; \
         SET search_path TO {shadow}; {ddl}; RESET search_path;",
        ddl = projection.ddl()
    ))
    .execute(pool)
    .await
    .map_err(ProjectionError::db("creating the shadow tables"))?;
    Ok(shadow)
}

/// What filling the shadow tables did.
#[derive(Default)]
struct Filled {
    done: u64,
    /// The stream sequence of the last message read.
    last: u64,
    skipped: Vec<Skipped>,
}

/// Applies the batches from `ready` to the shadow tables, each in a transaction of its own;
/// a batch that fails is applied again one event at a time, leaving out what fails.
async fn fill<P: Projection>(
    projection: &P,
    pool: &PgPool,
    shadow: &str,
    mut ready: tokio::sync::mpsc::Receiver<Result<Batch, ProjectionError>>,
    total: u64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<Filled, ProjectionError> {
    let (mut done, mut last_sequence, mut skipped) = (0, 0, Vec::new());
    {
        let shadow = shadow.to_owned();
        while let Some(batch) = ready.recv().await {
            let mut batch: Batch = batch?;
            let mut tx = pool
                .begin()
                .await
                .map_err(ProjectionError::db("starting a replay batch"))?;
            shadow_path(&mut tx, &shadow, projection.context()).await?;
            if let Err(e) = projection.apply(&mut tx, &batch.events).await {
                if let ProjectionError::Fault(f) = e {
                    return Err(f.into());
                }
                drop(tx);
                tx = pool
                    .begin()
                    .await
                    .map_err(ProjectionError::db("starting a replay batch"))?;
                shadow_path(&mut tx, &shadow, projection.context()).await?;
                apply_one_by_one(projection, &mut tx, &mut batch).await?;
            }
            tx.commit()
                .await
                .map_err(ProjectionError::db("committing a replay batch"))?;
            done += (batch.events.len() + batch.skipped.len()) as u64;
            last_sequence = batch.last;
            skipped.append(&mut batch.skipped);
            progress(done, total.max(done));
        }
    }
    Ok(Filled {
        done,
        last: last_sequence,
        skipped,
    })
}

/// Swaps the shadow tables in, with the checkpoint at `checkpoint` and `skipped` as the
/// projection's parked events, in one transaction.
async fn swap<P: Projection>(
    projection: &P,
    pool: &PgPool,
    shadow: &str,
    last_sequence: u64,
    skipped: &[Skipped],
) -> Result<(), ProjectionError> {
    let name = projection.name();
    let mut tx = pool
        .begin()
        .await
        .map_err(ProjectionError::db("starting the swap"))?;
    chronicle_bus::lock_checkpoint(&mut tx, name).await?;
    let mut swap = String::new();
    for table in projection.tables() {
        swap.push_str(&format!(
            "DROP TABLE IF EXISTS {context}.{table}; ALTER TABLE {shadow}.{table} SET SCHEMA {context}; ",
            context = projection.context()
        ));
    }
    swap.push_str(&format!("DROP SCHEMA {shadow} CASCADE;"));
    sqlx::raw_sql(&swap)
        .execute(&mut *tx)
        .await
        .map_err(ProjectionError::db("swapping in the rebuilt tables"))?;
    chronicle_bus::store_checkpoint(&mut tx, name, last_sequence).await?;
    sqlx::query("DELETE FROM parked_events WHERE subscriber = $1")
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(ProjectionError::db("replacing the parked events"))?;
    for event in skipped {
        sqlx::query(
            "INSERT INTO parked_events (subscriber, stream_seq, subject, event_type, error, attempts) \
             VALUES ($1, $2, $3, $4, $5, 1)",
        )
        .bind(name)
        .bind(event.seq as i64)
        .bind(&event.subject)
        .bind(&event.event_type)
        .bind(&event.error)
        .execute(&mut *tx)
        .await
        .map_err(ProjectionError::db("parking an event replay could not apply"))?;
    }
    if !skipped.is_empty() {
        tracing::warn!(
            projection = name,
            parked = skipped.len(),
            "replay left events it could not apply parked"
        );
    }
    tx.commit()
        .await
        .map_err(ProjectionError::db("committing the swap"))?;
    Ok(())
}

/// Reads the replay consumer until nothing is pending, sending batches of at most
/// `batch_max` decoded events with the stream sequence of the last message read. With
/// `filter`, messages on other subjects are skipped without being decoded.
async fn read_batches(
    mut messages: async_nats::jetstream::consumer::pull::Ordered,
    filter: Option<Vec<String>>,
    batch_max: usize,
    batches: tokio::sync::mpsc::Sender<Result<Batch, ProjectionError>>,
) {
    let nats = ProjectionError::nats::<chronicle_bus::NatsError>;
    let mut batch = Batch::with_capacity(batch_max);
    loop {
        let next = async {
            let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
                .await
                .map_err(|_| nats("replaying")("no message for 30 s".into()))?
                .ok_or_else(|| nats("replaying")("the consumer ended".into()))?
                .map_err(|e| nats("replaying")(e.into()))?;
            let (sequence, pending) = position(&message)?;
            let wanted = filter.as_ref().is_none_or(|patterns| {
                patterns
                    .iter()
                    .any(|pattern| subject_matches(pattern, &message.subject))
            });
            if wanted {
                batch.take(&message, sequence);
            }
            Ok::<_, ProjectionError>((sequence, pending))
        };
        match next.await {
            Ok((sequence, pending)) => {
                batch.last = sequence;
                if batch.events.len() >= batch_max || pending == 0 {
                    let full = std::mem::replace(&mut batch, Batch::with_capacity(batch_max));
                    if batches.send(Ok(full)).await.is_err() || pending == 0 {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = batches.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Decoded events of one replay batch, their stream sequences, the events left out, and
/// the stream sequence of the last message read.
struct Batch {
    events: Vec<Envelope>,
    seqs: Vec<u64>,
    skipped: Vec<Skipped>,
    last: u64,
}

impl Batch {
    /// Adds the event `message` carries (at stream `sequence`), or leaves it out when it
    /// cannot be decoded.
    fn take(&mut self, message: &async_nats::jetstream::Message, sequence: u64) {
        match serde_json::from_slice::<Envelope>(&message.payload) {
            Ok(envelope) => {
                self.events.push(envelope);
                self.seqs.push(sequence);
            }
            Err(e) => self.skipped.push(Skipped {
                seq: sequence,
                subject: message.subject.to_string(),
                event_type: event_type(message),
                error: format!("cannot decode the event envelope: {e}"),
            }),
        }
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            events: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            skipped: Vec::new(),
            last: 0,
        }
    }
}

/// An event replay could not decode or apply.
struct Skipped {
    seq: u64,
    subject: String,
    event_type: String,
    error: String,
}

fn event_type(message: &async_nats::jetstream::Message) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(chronicle_schemas::HEADER_EVENT_TYPE))
        .map_or_else(|| "unknown".to_owned(), |v| v.as_str().to_owned())
}

/// A stream message's stream sequence and how many messages are pending after it.
fn position(message: &async_nats::jetstream::Message) -> Result<(u64, u64), ProjectionError> {
    let info = message
        .info()
        .map_err(ProjectionError::nats("reading message info"))?;
    Ok((info.stream_sequence, info.pending))
}

/// The shadow schema first, then the projection's context's (where what it reads beside its
/// own tables lives), then the shared event store's.
async fn shadow_path(
    conn: &mut sqlx::PgConnection,
    shadow: &str,
    context: &str,
) -> Result<(), ProjectionError> {
    sqlx::raw_sql(&format!(
        "SET LOCAL search_path TO {shadow}, {context}, public"
    ))
    .execute(conn)
    .await
    .map_err(ProjectionError::db("selecting the shadow schema"))?;
    Ok(())
}

/// Applies `batch` one event at a time, each under a savepoint, leaving out (into
/// `batch.skipped`) the ones that fail, as the live projector parks them.
async fn apply_one_by_one<P: Projection>(
    projection: &P,
    conn: &mut sqlx::PgConnection,
    batch: &mut Batch,
) -> Result<(), ProjectionError> {
    let mut kept = Vec::with_capacity(batch.events.len());
    for (event, seq) in std::mem::take(&mut batch.events)
        .into_iter()
        .zip(batch.seqs.drain(..))
    {
        sqlx::raw_sql("SAVEPOINT replay_event")
            .execute(&mut *conn)
            .await
            .map_err(ProjectionError::db("taking a savepoint"))?;
        match projection
            .apply(&mut *conn, std::slice::from_ref(&event))
            .await
        {
            Ok(()) => kept.push(event),
            Err(ProjectionError::Fault(f)) => return Err(f.into()),
            Err(e) => {
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT replay_event")
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("rolling back to a savepoint"))?;
                batch.skipped.push(Skipped {
                    seq,
                    subject: chronicle_schemas::subject_for(
                        &event.context,
                        &event.aggregate_type,
                        &event.aggregate_id,
                    ),
                    event_type: event.event_type.clone(),
                    error: chronicle_bus::ErrorChain(&e).to_string(),
                });
            }
        }
    }
    batch.events = kept;
    Ok(())
}

/// Whether NATS subject `subject` matches `pattern` (`*` one token, `>` the rest).
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for part in pattern.split('.') {
        match (part, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(token)) if literal == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn subjects_match_nats_wildcards() {
        let p = "events.commerce.inventory_item.>";
        assert!(subject_matches(p, "events.commerce.inventory_item.SKU-1"));
        assert!(!subject_matches(p, "events.commerce.order.1"));
        assert!(!subject_matches(p, "events.commerce.inventory_item"));
        assert!(subject_matches("events.*.post.*", "events.blog.post.p1"));
        assert!(!subject_matches("events.*.post.*", "events.blog.post.p1.x"));
        assert!(!subject_matches(
            "events.*.post.*",
            "events.blog.comment.c1"
        ));
        assert!(subject_matches(
            "events.blog.post.p1",
            "events.blog.post.p1"
        ));
        assert!(!subject_matches("events.blog.post.p1", "events.blog.post"));
    }
}
