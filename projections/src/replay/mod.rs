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
//!
//! The same shadow tables, fill and swap serve a rebuild from the event stores instead of
//! the stream (`store.rs`).

mod copy;
mod store;

pub use store::replay_from_store;

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
        let filled = fill(
            projection,
            pool,
            &shadow.schema,
            ready,
            Total::Known(total),
            &mut progress,
        )
        .await?;
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

/// The schema a rebuild fills (`replay_<name>`), and the indexes it builds at the end.
struct Shadow {
    schema: String,
    /// `CREATE INDEX` statements of the secondary indexes left out while filling.
    deferred: Vec<String>,
}

/// Creates the projection's tables in its shadow schema, empty, without the secondary
/// indexes its `apply` does not look up by ([`Projection::indexed_while_rebuilt`]): those
/// are built once the tables are filled ([`build_deferred_indexes`]). Keys, unique indexes
/// and the indexes behind constraints stay.
async fn prepare_shadow<P: Projection>(
    projection: &P,
    pool: &PgPool,
) -> Result<Shadow, ProjectionError> {
    let schema = format!("replay_{}", projection.name());
    setup(pool, projection).await?;
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
         SET search_path TO {schema}; {ddl}; RESET search_path;",
        ddl = projection.ddl()
    ))
    .execute(pool)
    .await
    .map_err(ProjectionError::db("creating the shadow tables"))?;
    let deferred: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_indexdef(x.indexrelid) \
         FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND NOT x.indisprimary AND NOT x.indisunique \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid) \
           AND c.relname::text <> ALL($2) \
         ORDER BY c.relname",
    )
    .bind(&schema)
    .bind(projection.indexed_while_rebuilt())
    .fetch_all(pool)
    .await
    .map_err(ProjectionError::db("reading the shadow's indexes"))?;
    if !deferred.is_empty() {
        let drop = deferred
            .iter()
            .map(|(name, _)| format!("DROP INDEX {schema}.\"{}\";", name.replace('"', "\"\"")))
            .collect::<String>();
        sqlx::raw_sql(&drop)
            .execute(pool)
            .await
            .map_err(ProjectionError::db("deferring the shadow's indexes"))?;
    }
    Ok(Shadow {
        schema,
        deferred: deferred.into_iter().map(|(_, create)| create).collect(),
    })
}

/// Builds the indexes [`prepare_shadow`] left out, over the filled tables, before the swap.
async fn build_deferred_indexes(pool: &PgPool, shadow: &Shadow) -> Result<(), ProjectionError> {
    for create in &shadow.deferred {
        sqlx::raw_sql(create)
            .execute(pool)
            .await
            .map_err(ProjectionError::db("building the rebuilt tables' indexes"))?;
    }
    Ok(())
}

/// What filling the shadow tables did.
#[derive(Default)]
struct Filled {
    done: u64,
    /// The stream sequence of the last message read.
    last: u64,
    skipped: Vec<Skipped>,
}

/// How many events a rebuild reads: known when it starts (the stream's count), or once the
/// counts beside the copy end (the stores').
enum Total {
    Known(u64),
    Counting(Vec<tokio::task::JoinHandle<Result<u64, ProjectionError>>>),
}

impl Total {
    /// The total if it is known by now.
    async fn now(&mut self) -> Result<Option<u64>, ProjectionError> {
        match self {
            Total::Counting(counts) if !counts.iter().all(|c| c.is_finished()) => Ok(None),
            _ => self.wait().await.map(Some),
        }
    }

    async fn wait(&mut self) -> Result<u64, ProjectionError> {
        let total = match self {
            Total::Known(total) => *total,
            Total::Counting(counts) => {
                let mut total = 0;
                for count in counts.drain(..) {
                    total += count.await.map_err(|e| {
                        ProjectionError::db("counting the events")(sqlx::Error::Protocol(
                            e.to_string(),
                        ))
                    })??;
                }
                total
            }
        };
        *self = Total::Known(total);
        Ok(total)
    }
}

/// Applies the batches from `ready` to the shadow tables, each in a transaction of its own;
/// a batch that fails is applied again one event at a time, leaving out what fails.
/// `progress` hears of each batch once the total is known, and of the last one always.
async fn fill<P: Projection>(
    projection: &P,
    pool: &PgPool,
    shadow: &str,
    mut ready: tokio::sync::mpsc::Receiver<Result<Batch, ProjectionError>>,
    mut total: Total,
    progress: &mut impl FnMut(u64, u64),
) -> Result<Filled, ProjectionError> {
    let (mut done, mut last_sequence, mut skipped) = (0, 0, Vec::new());
    let mut reported = None;
    // Where the fill's time went, for the log line at the end: waiting for events (the
    // reading is slower), applying them, committing.
    let (mut waited, mut applied, mut committed) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    {
        let shadow = shadow.to_owned();
        let mut since = Instant::now();
        while let Some(batch) = ready.recv().await {
            waited += since.elapsed();
            since = Instant::now();
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
            applied += since.elapsed();
            since = Instant::now();
            tx.commit()
                .await
                .map_err(ProjectionError::db("committing a replay batch"))?;
            committed += since.elapsed();
            done += (batch.events.len() + batch.skipped.len()) as u64;
            last_sequence = batch.last;
            skipped.append(&mut batch.skipped);
            // Freeing a batch's events (each payload a tree of JSON values) is work of its
            // own: it is done beside the next batch, not before it.
            let events = std::mem::take(&mut batch.events);
            tokio::task::spawn_blocking(move || drop(events));
            if let Some(total) = total.now().await? {
                progress(done, total.max(done));
                reported = Some(done);
            }
            since = Instant::now();
        }
    }
    let total = total.wait().await?;
    if reported != Some(done) {
        progress(done, total.max(done));
    }
    tracing::debug!(
        projection = projection.name(),
        events = done,
        waited_ms = waited.as_millis() as u64,
        applied_ms = applied.as_millis() as u64,
        committed_ms = committed.as_millis() as u64,
        "filled the rebuilt tables"
    );
    Ok(Filled {
        done,
        last: last_sequence,
        skipped,
    })
}

/// Builds the shadow's deferred indexes, then swaps the shadow tables in, with the
/// checkpoint at `checkpoint` and `skipped` as the projection's parked events, in one
/// transaction.
async fn swap<P: Projection>(
    projection: &P,
    pool: &PgPool,
    shadow: &Shadow,
    last_sequence: u64,
    skipped: &[Skipped],
) -> Result<(), ProjectionError> {
    build_deferred_indexes(pool, shadow).await?;
    let name = projection.name();
    let shadow = &shadow.schema;
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
    // A rebuild from the event stores does not know its events' stream sequences: what it
    // left out is parked at -1, -2, ... in the order it met them (the next rebuild
    // replaces them; a retry, which reads the stream, passes them by).
    let mut unnumbered = 0i64;
    for event in skipped {
        let seq = if event.seq == 0 {
            unnumbered -= 1;
            unnumbered
        } else {
            event.seq as i64
        };
        sqlx::query(
            "INSERT INTO parked_events (subscriber, stream_seq, subject, event_type, error, attempts) \
             VALUES ($1, $2, $3, $4, $5, 1)",
        )
        .bind(name)
        .bind(seq)
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
            Ok(mut envelope) => {
                envelope.stream_seq = Some(sequence);
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
