//! The outbox relay: Postgres outbox → JetStream `EVENTS`, in order, exactly once.
//!
//! A relay publishes the outbox of its pool's schema (each context's store has its own
//! outbox, and its own relay). One relay per outbox is active at a time: it holds a session
//! advisory lock (the configured key and the schema) on a dedicated
//! connection and runs every outbox query on that same connection, so a relay that lost its
//! connection (and with it the lock) cannot delete or publish on the strength of a lock it no
//! longer has. Others wait as standbys and take over when the lock frees.
//!
//! Each round takes the oldest rows (at most 1,000), publishes them as ONE JetStream atomic
//! batch (all stored or none, one fsync for all; a single row as a plain publish), and
//! deletes them only after the batch is acknowledged. Per-aggregate order holds because rows are taken in commit order and a
//! round starts only after the previous one was acknowledged.
//!
//! A crash after the publish and before the delete leaves rows that are already in the
//! stream. After (re)starting, and after any publish whose outcome is unknown, the relay is
//! in recovery: it asks the stream for the last aggregate sequence on each subject of the
//! round and drops the rows at or below it. `Nats-Msg-Id` dedupe is the second line of
//! defence inside its 2-minute window; the recovery check holds beyond it.

use std::{collections::HashMap, future::Future, time::Duration};

use async_nats::{header::NATS_MESSAGE_ID, jetstream, HeaderMap};
use chronicle_commands::outbox_channel;
use chronicle_schemas::{
    HEADER_AGGREGATE_SEQUENCE, HEADER_CORRELATION_ID, HEADER_EVENT_TYPE, HEADER_EVENT_VERSION,
};
use sqlx::{postgres::PgListener, Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    stream::{ensure_events_stream, last_sequence_on_subject, BusError},
    Faults, InjectedFault,
};

/// Tuning of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows published per atomic batch (JetStream allows at most 1,000).
    pub batch_max: usize,
    /// How often to look at the outbox when no notification arrives (the fallback if a
    /// NOTIFY is missed, e.g. while the listener reconnects).
    pub poll_interval: Duration,
    /// The advisory lock key that elects the single active relay of an outbox (combined
    /// with the outbox's schema, so each context's relay is elected apart).
    pub lock_key: i64,
    /// Under load the relay starts at most one round per `linger` (unless the outbox holds
    /// a full batch). Zero by default: a round starts the moment the last one is
    /// acknowledged and publishes whatever is waiting by then, so batches grow with the load
    /// by themselves. Each JetStream atomic batch has a fixed cost (nats-server 2.15 stages
    /// it on disk), so a few tens of milliseconds here turn many small batches into a few
    /// large ones, for at most this much more projection lag. In E1 at 1,000 commands/s
    /// (2026-12-07) 25 ms cost latency and bought no capacity (docs/bench).
    pub linger: Duration,
    /// What "under load" means: the last round published at least this many rows. Below it
    /// (a few commits at a time) every commit is published at once.
    pub linger_after_rows: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_max: 1_000,
            poll_interval: Duration::from_millis(500),
            // "chronicl" in ASCII: a key no other component uses.
            lock_key: 0x6368_726f_6e69_636c,
            linger: Duration::ZERO,
            linger_after_rows: 8,
        }
    }
}

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Database(#[from] chronicle_commands::DbError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Fault(#[from] InjectedFault),
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> RelayError {
    move |source| RelayError::Database(chronicle_commands::DbError { context, source })
}

#[derive(Debug, sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    subject: String,
    message_id: String,
    event_type: String,
    event_version: String,
    aggregate_sequence: i64,
    correlation_id: Uuid,
    envelope: Vec<u8>,
    /// Seconds since the row was committed, as the outbox read saw it.
    age_seconds: f64,
    /// The trace of the command that wrote it (W3C `traceparent`), when spans are exported.
    trace_context: Option<String>,
}

/// The outbox relay. Build it with [`Relay::new`], run it with [`Relay::run`].
pub struct Relay {
    pool: PgPool,
    client: async_nats::Client,
    config: RelayConfig,
    faults: Faults,
}

impl Relay {
    pub fn new(pool: PgPool, client: async_nats::Client, config: RelayConfig) -> Self {
        Self {
            pool,
            client,
            config,
            faults: Faults::default(),
        }
    }

    /// Fault points: `relay.after_publish` (the batch is acknowledged, its rows not yet
    /// deleted).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Runs until `shutdown` completes, or until a fault point stops it. Transient failures
    /// (Postgres or NATS away) are logged and retried; they never end the loop.
    ///
    /// # Errors
    /// Only [`RelayError::Fault`], when an armed fault point is reached.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
        crate::keep_running(
            "relay",
            shutdown,
            || self.lead(),
            |e| matches!(e, RelayError::Fault(_)),
        )
        .await
    }

    /// Waits for the advisory lock, then relays until something fails.
    async fn lead(&self) -> Result<(), RelayError> {
        // A connection of its own, never a pooled one: when the relay stops in any way (this
        // future dropped on shutdown, a crash), the connection closes and the server releases
        // the lock. A pooled connection would go back to the pool still holding it.
        let mut conn = PgConnection::connect_with(&self.pool.connect_options())
            .await
            .map_err(db("connecting"))?;
        loop {
            // One lock per outbox: the key and the schema the connection's path names.
            let (locked,): (bool,) = sqlx::query_as(
                "SELECT pg_try_advisory_lock($1 # hashtext(current_schema())::bigint)",
            )
            .bind(self.config.lock_key)
            .fetch_one(&mut conn)
            .await
            .map_err(db("taking the relay lock"))?;
            if locked {
                break;
            }
            tracing::debug!("another relay is active; standing by");
            tokio::time::sleep(self.config.poll_interval).await;
        }
        // Deleting relayed rows need not wait for the disk: a delete lost in a crash only
        // means those rows are published again, and recovery drops them (see above).
        //
        // The outbox is a queue: it starts empty, each row is deleted a moment after it is
        // written, and the dead rows stay until autovacuum comes by. A plan PostgreSQL makes
        // once for a prepared statement while the table is small (a sequential scan) stays
        // cached while the table grows: the delete then read every page of the table, 9 to
        // 30 ms a batch under E1's load, and the relay fell behind by that much. Planned for
        // the table as it is at each call, both statements stay on the primary key.
        for setting in [
            "SET synchronous_commit = off",
            "SET plan_cache_mode = force_custom_plan",
        ] {
            sqlx::query(setting)
                .execute(&mut conn)
                .await
                .map_err(db("configuring the relay connection"))?;
        }
        tracing::info!("relay is the active publisher");
        self.relay(&mut conn).await
    }

    async fn relay(&self, conn: &mut PgConnection) -> Result<(), RelayError> {
        let js = jetstream::new(self.client.clone());
        let stream = ensure_events_stream(&js).await?;
        let (schema,): (String,) = sqlx::query_as("SELECT current_schema()::text")
            .fetch_one(&mut *conn)
            .await
            .map_err(db("reading the outbox's schema"))?;
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(db("listening for outbox notifications"))?;
        listener
            .listen(&outbox_channel(&schema))
            .await
            .map_err(db("listening for outbox notifications"))?;
        let mut recovering = true;
        let mut round_started = tokio::time::Instant::now();
        let mut backlog = false;
        let mut busy = false;
        loop {
            if busy && !backlog {
                tokio::time::sleep_until(round_started + self.config.linger).await;
            }
            round_started = tokio::time::Instant::now();
            // Notifications that arrived while we worked are answered by the read below; one
            // that arrives after it wakes the wait, so no commit waits for the poll.
            while listener.next_buffered().is_some() {}
            let rows: Vec<OutboxRow> = sqlx::query_as(
                "SELECT id, subject, message_id, event_type, event_version, aggregate_sequence, \
                        correlation_id, envelope, \
                        EXTRACT(EPOCH FROM clock_timestamp() - committed_at)::float8 AS age_seconds, \
                        trace_context \
                 FROM outbox ORDER BY id LIMIT $1",
            )
            .bind(self.config.batch_max.min(1_000) as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(db("reading the outbox"))?;
            if rows.is_empty() {
                tokio::select! {
                    n = listener.recv() => { n.map_err(db("waiting for outbox notifications"))?; }
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
                // A commit after a quiet spell goes out at once.
                backlog = true;
                continue;
            }
            backlog = rows.len() >= self.config.batch_max.min(1_000);
            busy = rows.len() >= self.config.linger_after_rows;
            let rows = if recovering {
                let (published, pending) = split_published(&stream, rows).await?;
                if !published.is_empty() {
                    tracing::info!(
                        count = published.len(),
                        "dropping outbox rows already in the stream"
                    );
                    // Published before a crash: the stream's end is theirs (one publisher).
                    let (last, created) = stream_end(&stream).await?;
                    delete(conn, &published, last, created).await?;
                    continue;
                }
                recovering = false;
                pending
            } else {
                rows
            };
            // On an error the outcome of the batch is unknown: the caller starts over, in
            // recovery, and finds out from the stream.
            let last = self.publish_batch(&js, &rows).await?;
            self.faults.hit("relay.after_publish")?;
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            delete(
                conn,
                &ids,
                last,
                utc(stream.cached_info().created.unix_timestamp_nanos()),
            )
            .await?;
            let lag = metrics::histogram!("chronicle_relay_publish_lag_seconds");
            let round = round_started.elapsed().as_secs_f64();
            metrics::histogram!("chronicle_relay_round_seconds").record(round);
            metrics::histogram!("chronicle_relay_batch_size").record(rows.len() as f64);
            for row in &rows {
                lag.record(row.age_seconds.max(0.0) + round);
            }
            metrics::counter!("chronicle_relay_published_events_total")
                .increment(rows.len() as u64);
            metrics::gauge!("chronicle_relay_last_publish_timestamp_seconds").set(unix_now());
            tracing::debug!(count = rows.len(), "relayed outbox rows");
        }
    }

    /// Publishes `rows` as one atomic batch and waits for its acknowledgement. A batch that
    /// JetStream refuses as a whole (a duplicate id inside the window, say) is published again
    /// message by message, where duplicates are acknowledged as such.
    async fn publish_batch(
        &self,
        js: &jetstream::Context,
        rows: &[OutboxRow],
    ) -> Result<u64, RelayError> {
        // One row alone (a quiet system, one commit at a time) is a plain publish: an atomic
        // batch makes nats-server stage it on disk first, several times the cost of storing
        // one message, for an all-or-nothing that one message has anyway.
        if rows.len() == 1 {
            return self.publish_each(js, rows).await;
        }
        let batch_id = Uuid::now_v7().simple().to_string();
        let last = rows.len() - 1;
        for (i, row) in rows.iter().enumerate() {
            let mut headers = headers_of(row);
            headers.insert("Nats-Batch-Id", batch_id.as_str());
            headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            if i < last {
                self.client
                    .publish_with_headers(row.subject.clone(), headers, row.envelope.clone().into())
                    .await
                    .map_err(BusError::request("publishing a batch message"))?;
            } else {
                headers.insert("Nats-Batch-Commit", "1");
                let reply = self
                    .client
                    .request_with_headers(row.subject.clone(), headers, row.envelope.clone().into())
                    .await
                    .map_err(BusError::request("committing a batch"))?;
                let ack: serde_json::Value =
                    serde_json::from_slice(&reply.payload).unwrap_or_default();
                if let Some(error) = ack.get("error") {
                    tracing::info!(%error, rows = rows.len(), "atomic batch refused; publishing one by one");
                    return self.publish_each(js, rows).await;
                }
                // The batch's last message: the stream's last sequence now (one publisher).
                return ack
                    .get("seq")
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(|| {
                        BusError::request("committing a batch")(format!("unexpected reply {ack}"))
                            .into()
                    });
            }
        }
        Ok(0)
    }

    async fn publish_each(
        &self,
        js: &jetstream::Context,
        rows: &[OutboxRow],
    ) -> Result<u64, RelayError> {
        let mut last = 0;
        for row in rows {
            let ack = js
                .publish_with_headers(
                    row.subject.clone(),
                    headers_of(row),
                    row.envelope.clone().into(),
                )
                .await
                .map_err(BusError::request("publishing an event"))?;
            last = ack
                .await
                .map_err(BusError::request("awaiting a publish ack"))?
                .sequence;
        }
        Ok(last)
    }
}

fn headers_of(row: &OutboxRow) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // The command's trace goes on through a publish span of the relay's, whose context
    // travels with the message.
    if let Some(parent) = &row.trace_context {
        let span = tracing::info_span!("relay.publish", subject = %row.subject, message_id = %row.message_id);
        chronicle_telemetry::continue_trace(&span, parent);
        let _entered = span.enter();
        if let Some(context) = chronicle_telemetry::trace_context() {
            headers.insert(chronicle_telemetry::TRACEPARENT, context.as_str());
        }
    }
    headers.insert(NATS_MESSAGE_ID, row.message_id.as_str());
    headers.insert(HEADER_EVENT_TYPE, row.event_type.as_str());
    headers.insert(HEADER_EVENT_VERSION, row.event_version.as_str());
    headers.insert(
        HEADER_AGGREGATE_SEQUENCE,
        row.aggregate_sequence.to_string().as_str(),
    );
    headers.insert(
        HEADER_CORRELATION_ID,
        row.correlation_id.to_string().as_str(),
    );
    headers
}

/// The stream's last sequence and creation time, as the server has them now.
async fn stream_end(
    stream: &jetstream::stream::Stream,
) -> Result<(u64, chrono::DateTime<chrono::Utc>), RelayError> {
    let info = stream
        .get_info()
        .await
        .map_err(BusError::request("reading the stream"))?;
    Ok((
        info.state.last_sequence,
        utc(info.created.unix_timestamp_nanos()),
    ))
}

/// A NATS time (nanoseconds since the epoch) as chrono's.
fn utc(nanos: i128) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// Splits rows into those whose event is already in the stream (their ids) and the rest.
async fn split_published(
    stream: &jetstream::stream::Stream,
    rows: Vec<OutboxRow>,
) -> Result<(Vec<i64>, Vec<OutboxRow>), RelayError> {
    let mut last_by_subject: HashMap<String, u64> = HashMap::new();
    let mut published = Vec::new();
    let mut pending = Vec::new();
    for row in rows {
        let last = match last_by_subject.get(&row.subject) {
            Some(last) => *last,
            None => {
                let last = last_sequence_on_subject(stream, &row.subject).await?;
                last_by_subject.insert(row.subject.clone(), last);
                last
            }
        };
        if row.aggregate_sequence as u64 <= last {
            published.push(row.id);
        } else {
            pending.push(row);
        }
    }
    Ok((published, pending))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Deletes published rows and records, in the same statement, that the stream created at
/// `created` holds everything up to `stream_seq` (see migration 0011: what a rebuild from
/// the event store starts the readers from).
async fn delete(
    conn: &mut PgConnection,
    ids: &[i64],
    stream_seq: u64,
    created: chrono::DateTime<chrono::Utc>,
) -> Result<(), RelayError> {
    sqlx::query(
        "WITH gone AS (DELETE FROM outbox WHERE id = ANY($1)) \
         INSERT INTO relay_position (id, stream_seq, stream_created, updated_at) \
         VALUES (true, $2, $3, now()) \
         ON CONFLICT (id) DO UPDATE SET stream_seq = excluded.stream_seq, \
             stream_created = excluded.stream_created, updated_at = now()",
    )
    .bind(ids)
    .bind(i64::try_from(stream_seq).unwrap_or(i64::MAX))
    .bind(created)
    .execute(&mut *conn)
    .await
    .map_err(db("deleting relayed outbox rows"))?;
    Ok(())
}
