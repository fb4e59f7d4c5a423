//! Rebuilding a read model from the event stores in PostgreSQL instead of the stream
//! (`chronicle replay`'s default source): each store the read model reads, in one snapshot
//! each, copied out in PostgreSQL's binary format by a reader task of its own, merged in
//! commit order, with the stream read for what a store behind the checkpoint published
//! (see [`replay_from_store`]). The shadow tables, the fill and the swap are the log
//! replay's (`mod.rs`).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use chronicle_bus::ensure_events_stream;
use chronicle_schemas::Envelope;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sqlx::{pool::PoolConnection, PgConnection, Postgres};

use super::{
    copy::{self, BinaryRows},
    fill, position, prepare_shadow, subject_matches, swap, Batch, ReplayStats, Skipped, Total,
};
use crate::{Projection, ProjectionError};

/// Rebuilds `projection` from the event stores in PostgreSQL instead of the stream, for when
/// the stream was lost or trimmed or is slower to read, and swaps it in (`chronicle replay`).
///
/// The events come from the store of each context whose events the projection reads (each
/// through that context's pool in `db`), the rebuilt tables go to the projection's own.
/// One snapshot of a store gives its events and its relay's position (migration 0011):
/// every event of the snapshot that is not in its outbox is in the stream at or below that
/// position, and every event in its outbox comes after it. So the rebuilt model takes the
/// former, its checkpoint is the position, and the live projector goes on with the latter
/// as the relay publishes them: nothing missed, nothing twice. When the stream was created
/// after the position was recorded (lost and made again), no event of the new stream was in
/// the snapshot, and the checkpoint is 0. Each store's events come in the order they were
/// written (its `position`, migration 0016; those from before it first, by commit time), so
/// each aggregate's keep their order; the stores' are merged by commit time.
///
/// A projection that reads the events of several contexts has one position per store. Its
/// checkpoint is the furthest; a store whose position is behind it had events published up
/// to the checkpoint that its snapshot held unpublished, and those are read from the stream
/// between the two. When the stream no longer holds them (trimmed), the rebuild is refused
/// ([`ProjectionError::Refused`]; rebuild it from the stream).
///
/// Events it cannot read or apply are parked without a stream sequence (at -1, -2, ...):
/// retry them by replaying again once the cause is fixed.
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
    let mut snapshots = Vec::with_capacity(sources.len());
    let mut positions = Vec::with_capacity(sources.len());
    let mut outboxes = Vec::with_capacity(sources.len());
    let mut counts = Vec::with_capacity(sources.len());
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
        // Counting the events scans the store (a tenth of a rebuild's time when its table
        // was just written): it runs beside the copy, on a connection of its own that shares
        // the snapshot, and the progress has its total when the count ends.
        let exported: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut *conn)
            .await
            .map_err(ProjectionError::db("sharing the snapshot"))?;
        counts.push(tokio::spawn(count_events(
            db.of(context).clone(),
            exported,
            types.clone(),
        )));
        // What the relay has not published yet (usually little): the live projector
        // applies it after the checkpoint, so the rebuild leaves it out.
        let unpublished: Vec<String> = sqlx::query_scalar("SELECT message_id FROM outbox")
            .fetch_all(&mut *conn)
            .await
            .map_err(ProjectionError::db("reading the outbox"))?;
        outboxes.push(unpublished.into_iter().collect::<HashSet<String>>());
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
    // A reader task per store, each on its snapshot's connection, decoding its rows while
    // the others and the fill go on.
    let mut heads = Vec::with_capacity(snapshots.len());
    let mut readers = Vec::with_capacity(snapshots.len());
    for ((conn, (context, types)), unpublished) in snapshots.into_iter().zip(&sources).zip(outboxes)
    {
        // Room for about a batch of rows, so the store keeps copying out while the fill
        // decodes and writes the batch before.
        let (rows, ready) = tokio::sync::mpsc::channel((batch_max / CHUNK).clamp(4, 64));
        let store = Store {
            context: context.clone(),
            types: types.clone(),
            every_id: types
                .iter()
                .all(|t| subjects.contains(&chronicle_schemas::subject_for(context, t, ">"))),
            subjects: subjects.clone(),
            unpublished,
        };
        readers.push(tokio::spawn(store.read(conn, rows)));
        heads.push(Head {
            ready,
            chunk: std::collections::VecDeque::new(),
            done: false,
        });
    }
    let (batches, ready) = tokio::sync::mpsc::channel(2);
    let filling = fill(
        projection,
        pool,
        &shadow.schema,
        ready,
        Total::Counting(counts),
        &mut progress,
    );
    let reading = async move {
        let mut batch = Batch::with_capacity(batch_max);
        while let Some(row) = next_in_commit_order(&mut heads).await {
            batch.last = checkpoint;
            match row? {
                Ok(envelope) => {
                    batch.events.push(envelope);
                    batch.seqs.push(0);
                }
                Err(skipped) => batch.skipped.push(skipped),
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
    let mut ended = Vec::with_capacity(readers.len());
    for reader in readers {
        let (conn, ok) = reader.await.map_err(|e| {
            ProjectionError::db("reading the events")(sqlx::Error::Protocol(e.to_string()))
        })?;
        if ok {
            ended.push(conn);
        } else {
            // A copy cut short leaves the connection mid-protocol: it is not reused.
            let _ = conn.close().await;
        }
    }
    end_snapshots(ended).await?;
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

/// How many events of `types` the store held in the snapshot `exported`. The connection
/// that took it keeps it open until the copy and the fill end, and the fill waits for the
/// counts, so the snapshot is still there when a count imports it.
async fn count_events(
    pool: sqlx::PgPool,
    exported: String,
    types: Vec<String>,
) -> Result<u64, ProjectionError> {
    use sqlx::Executor as _;
    let mut conn = pool
        .acquire()
        .await
        .map_err(ProjectionError::db("counting the events"))?;
    // `Executor::execute`, not `raw_sql`: a task's future using the latter is not `Send`
    // (sqlx issue 3150).
    let share = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
        exported.replace('\'', "''")
    );
    let count = async {
        conn.execute(share.as_str())
            .await
            .map_err(ProjectionError::db("sharing the snapshot"))?;
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE aggregate_type = ANY($1)")
            .bind(&types)
            .fetch_one(&mut *conn)
            .await
            .map_err(ProjectionError::db("counting the events"))
    }
    .await;
    // Also after a failure, so the connection goes back to its pool outside a transaction.
    conn.execute("ROLLBACK")
        .await
        .map_err(ProjectionError::db("counting the events"))?;
    Ok(count?.max(0) as u64)
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

/// One store's events for a rebuild: its context, the aggregate types read from it, the
/// projection's subjects and what its outbox still holds.
struct Store {
    context: String,
    types: Vec<String>,
    subjects: Vec<String>,
    /// Every event of `types` matches `subjects` (`events.<context>.<type>.>` each), so
    /// no event's subject need be made and matched.
    every_id: bool,
    unpublished: HashSet<String>,
}

/// An event read from a store, decoded (or left out, with why), with when it committed.
type Row = (Option<DateTime<Utc>>, Result<Envelope, Skipped>);

/// Rows a reader task sends at once.
const CHUNK: usize = 1_024;

impl Store {
    /// Sends the store's events on `rows` in chunks, in the order they were written: first
    /// those from before the stores numbered their events (migration 0016), by commit time,
    /// then the numbered ones by `position`, copied out in PostgreSQL's binary format. Hands
    /// back the snapshot's connection, and sends an error on `rows` when reading fails.
    async fn read(
        self,
        mut conn: PoolConnection<Postgres>,
        rows: tokio::sync::mpsc::Sender<Result<Vec<Row>, ProjectionError>>,
    ) -> (PoolConnection<Postgres>, bool) {
        let read = self.read_on(&mut conn, &rows).await;
        let ok = read.is_ok();
        if let Err(e) = read {
            let _ = rows.send(Err(e)).await;
        }
        (conn, ok)
    }

    async fn read_on(
        &self,
        conn: &mut PgConnection,
        rows: &tokio::sync::mpsc::Sender<Result<Vec<Row>, ProjectionError>>,
    ) -> Result<(), ProjectionError> {
        let types = self
            .types
            .iter()
            .map(|t| format!("'{}'", t.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        // Those from before positions, with when their aggregate's events up to them were
        // committed (the latest `recorded_at`), then the numbered ones.
        let before = format!(
            "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
                    e.payload, e.metadata, e.at \
             FROM (SELECT *, max((metadata->>'recorded_at')::timestamptz) \
                       OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY sequence) AS at \
                   FROM events WHERE position IS NULL AND aggregate_type IN ({types})) e \
             ORDER BY e.at, e.aggregate_type, e.aggregate_id, e.sequence"
        );
        let numbered = format!(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
                    metadata, NULL::timestamptz \
             FROM events WHERE position IS NOT NULL AND aggregate_type IN ({types}) \
             ORDER BY position"
        );
        let mut chunk = Vec::with_capacity(CHUNK);
        let (started, mut blocked, mut read) = (Instant::now(), Duration::ZERO, 0u64);
        for query in [before, numbered] {
            let mut copy = conn
                .copy_out_raw(&format!("COPY ({query}) TO STDOUT (FORMAT binary)"))
                .await
                .map_err(ProjectionError::db("copying the events out"))?;
            let mut parser = BinaryRows::default();
            while let Some(bytes) = copy.next().await {
                let bytes = bytes.map_err(ProjectionError::db("copying the events out"))?;
                parser.push(&bytes);
                while let Some(fields) = parser.next_row().map_err(copy_error)? {
                    let [aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, at] =
                        fields[..]
                    else {
                        return Err(copy_error(format!("a row of {} fields", fields.len())));
                    };
                    let event = StoredFields {
                        aggregate_type: copy::text(aggregate_type).map_err(copy_error)?,
                        aggregate_id: copy::text(aggregate_id).map_err(copy_error)?,
                        sequence: copy::int8(sequence).map_err(copy_error)?,
                        event_type: copy::text(event_type).map_err(copy_error)?,
                        event_version: copy::text(event_version).map_err(copy_error)?,
                        payload: payload.ok_or_else(|| copy_error("a NULL payload".into()))?,
                        metadata: metadata.ok_or_else(|| copy_error("NULL metadata".into()))?,
                        at: at.map(copy::timestamptz).transpose().map_err(copy_error)?,
                    };
                    if let Some(decoded) = self.decode(event) {
                        read += 1;
                        chunk.push(decoded);
                    }
                }
                if chunk.len() >= CHUNK {
                    let since = Instant::now();
                    if !send(rows, &mut chunk).await {
                        // The rebuild stopped (it failed elsewhere): the copy is left unread.
                        return Err(copy_error("the rebuild stopped reading".into()));
                    }
                    blocked += since.elapsed();
                }
            }
            if !parser.ended() {
                return Err(copy_error("the copy ended before its end marker".into()));
            }
        }
        send(rows, &mut chunk).await;
        tracing::debug!(
            context = self.context,
            events = read,
            read_ms = started.elapsed().as_millis() as u64,
            blocked_ms = blocked.as_millis() as u64,
            "copied the events out"
        );
        Ok(())
    }

    /// The event of a stored row with when it committed, or why it is left out; `None` for
    /// an event the rebuild does not take (its outbox still holds it, or the projection's
    /// subjects leave it out).
    fn decode(&self, row: StoredFields<'_>) -> Option<Row> {
        if !self.unpublished.is_empty()
            && self.unpublished.contains(&format!(
                "{}:{}:{}",
                row.aggregate_type, row.aggregate_id, row.sequence
            ))
        {
            return None;
        }
        let subject =
            || chronicle_schemas::subject_for(&self.context, row.aggregate_type, row.aggregate_id);
        if !self.every_id && !self.subjects.iter().any(|p| subject_matches(p, &subject())) {
            return None;
        }
        let skipped = |error: String| Skipped {
            seq: 0,
            subject: subject(),
            event_type: row.event_type.to_owned(),
            error,
        };
        let metadata = match serde_json::from_slice::<chronicle_schemas::Metadata>(row.metadata) {
            Ok(metadata) => metadata,
            Err(e) => {
                return Some((
                    row.at,
                    Err(skipped(format!("cannot read the event's metadata: {e}"))),
                ))
            }
        };
        let at = Some(row.at.unwrap_or(metadata.recorded_at));
        let payload = match chronicle_schemas::read_untagged(row.payload, row.event_type) {
            Ok(payload) => payload,
            Err(e) => {
                return Some((
                    at,
                    Err(skipped(format!("cannot read the event's payload: {e}"))),
                ))
            }
        };
        let envelope = Envelope::from_stored(
            chronicle_schemas::StoredEvent {
                context: &self.context,
                aggregate_type: row.aggregate_type,
                aggregate_id: row.aggregate_id,
                sequence: row.sequence.max(0) as u64,
                event_type: row.event_type,
                event_version: row.event_version,
                payload,
            },
            &metadata,
        );
        Some((at, Ok(envelope)))
    }
}

/// One row of the events table, as read.
struct StoredFields<'a> {
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    sequence: i64,
    event_type: &'a str,
    event_version: &'a str,
    payload: &'a [u8],
    metadata: &'a [u8],
    /// When its aggregate's events up to it were committed, for an event from before
    /// positions (otherwise its own `recorded_at` is used).
    at: Option<DateTime<Utc>>,
}

/// Sends the rows gathered so far; false when nobody reads them any more.
async fn send(
    rows: &tokio::sync::mpsc::Sender<Result<Vec<Row>, ProjectionError>>,
    chunk: &mut Vec<Row>,
) -> bool {
    if chunk.is_empty() {
        return true;
    }
    let full = std::mem::replace(chunk, Vec::with_capacity(CHUNK));
    rows.send(Ok(full)).await.is_ok()
}

fn copy_error(why: String) -> ProjectionError {
    ProjectionError::db("copying the events out")(sqlx::Error::Protocol(why))
}

/// One store's rows as its reader sends them, and those of the last chunk not yet taken.
struct Head {
    ready: tokio::sync::mpsc::Receiver<Result<Vec<Row>, ProjectionError>>,
    chunk: std::collections::VecDeque<Row>,
    done: bool,
}

/// The event that committed first among the stores' next ones: each store's come in the
/// order they were written, and the stores' are merged by commit time (an event whose time
/// is unknown waits until the other stores are done).
async fn next_in_commit_order(
    heads: &mut [Head],
) -> Option<Result<Result<Envelope, Skipped>, ProjectionError>> {
    for head in heads.iter_mut() {
        while head.chunk.is_empty() && !head.done {
            match head.ready.recv().await {
                Some(Ok(rows)) => head.chunk.extend(rows),
                // An error goes out at once.
                Some(Err(e)) => return Some(Err(e)),
                None => head.done = true,
            }
        }
    }
    heads
        .iter_mut()
        .filter(|head| !head.chunk.is_empty())
        .min_by_key(|head| {
            let at = head.chunk.front().and_then(|(at, _)| *at);
            (at.is_none(), at)
        })
        .and_then(|head| head.chunk.pop_front())
        .map(|(_, row)| Ok(row))
}
