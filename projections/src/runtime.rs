use std::{future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
};
use chronicle_bus::{ensure_events_stream, Faults};
use chronicle_schemas::Envelope;
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;

use crate::{checkpoint, Projection, ProjectionError};

/// The Postgres channel a projector notifies (payload: the projection's name) whenever a
/// batch commits, so readers waiting for a version wake at once.
pub const PROJECTION_CHANNEL: &str = "chronicle_projections";

/// A stream message's stream sequence and how many messages are pending after it.
pub(crate) fn position(message: &jetstream::Message) -> Result<(u64, u64), ProjectionError> {
    let info = message
        .info()
        .map_err(|e| ProjectionError::nats("reading message info")(e.to_string()))?;
    Ok((info.stream_sequence, info.pending))
}

/// The envelope a stream message carries.
pub(crate) fn decode(
    message: &jetstream::Message,
    sequence: u64,
) -> Result<Envelope, ProjectionError> {
    serde_json::from_slice(&message.payload).map_err(|source| {
        ProjectionError::Decode(chronicle_schemas::DecodeError {
            event_type: format!("stream message {sequence}"),
            source,
        })
    })
}

/// The durable consumer a projection reads through.
pub(crate) fn durable_name(projection: &str) -> String {
    format!("projector-{projection}")
}

/// Tuning of a projector.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Most events applied in one transaction. A projector that is behind takes what is
    /// already delivered, up to this, so catching up costs one commit per batch.
    pub batch_max: usize,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_max: 500,
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// Runs one [`Projection`] against the live stream. One instance per projection is
/// expected; a second one would not double-apply (the checkpoint row is locked per batch),
/// but the two would take turns repositioning the consumer.
pub struct Projector<P> {
    projection: Arc<P>,
    pool: PgPool,
    client: async_nats::Client,
    config: ProjectorConfig,
    faults: Faults,
}

impl<P: Projection> Projector<P> {
    pub fn new(
        projection: P,
        pool: PgPool,
        client: async_nats::Client,
        config: ProjectorConfig,
    ) -> Self {
        Self {
            projection: Arc::new(projection),
            pool,
            client,
            config,
            faults: Faults::default(),
        }
    }

    /// Fault points: `projector.before_commit` (batch applied, transaction open) and
    /// `projector.after_commit` (committed, messages not yet acked).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Creates the checkpoints table and the projection's tables if they are missing.
    ///
    /// # Errors
    /// When the DDL fails.
    pub async fn setup(&self) -> Result<(), ProjectionError> {
        setup(&self.pool, &*self.projection).await
    }

    /// Runs until `shutdown` completes or a fault point stops it. Lost connections are
    /// retried; they never end the loop.
    ///
    /// # Errors
    /// Only [`ProjectionError::Fault`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                result = self.consume() => match result {
                    Err(ProjectionError::Fault(f)) => return Err(ProjectionError::Fault(f)),
                    Err(e) => {
                        tracing::warn!(projection = self.projection.name(), error = %chronicle_bus::ErrorChain(&e), "projector interrupted; retrying");
                        tokio::select! {
                            () = &mut shutdown => return Ok(()),
                            () = tokio::time::sleep(Duration::from_millis(250)) => {}
                        }
                    }
                    // Repositioned after a replay: start over from the new checkpoint.
                    Ok(()) => {}
                }
            }
        }
    }

    async fn consume(&self) -> Result<(), ProjectionError> {
        let name = self.projection.name();
        self.setup().await?;
        let js = jetstream::new(self.client.clone());
        let stream = ensure_events_stream(&js)
            .await
            .map_err(|e| ProjectionError::nats("opening the stream")(e.to_string()))?;
        let mut expected = checkpoint::read(&self.pool, name).await?;
        let consumer = self.position(&stream, expected).await?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| ProjectionError::nats("consuming")(e.to_string()))?;
        loop {
            let first = messages
                .next()
                .await
                .ok_or_else(|| ProjectionError::nats("consuming")("the consumer ended".into()))?
                .map_err(|e| ProjectionError::nats("consuming")(e.to_string()))?;
            let mut batch = vec![first];
            while batch.len() < self.config.batch_max {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(ProjectionError::db("starting a batch"))?;
            let stored = checkpoint::lock(&mut tx, name).await?;
            if stored < expected {
                tracing::info!(
                    projection = name,
                    stored,
                    expected,
                    "checkpoint moved back (replayed); repositioning"
                );
                return Ok(());
            }
            let mut events = Vec::with_capacity(batch.len());
            let mut last = stored;
            for message in &batch {
                let (sequence, _) = position(message)?;
                if sequence <= stored {
                    continue;
                }
                let envelope = decode(message, sequence)?;
                events.push(envelope);
                last = last.max(sequence);
            }
            if !events.is_empty() {
                self.projection.apply(&mut tx, &events).await?;
                checkpoint::store(&mut tx, name, last).await?;
                // Delivered on commit: wakes readers waiting for `?min_version`.
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(PROJECTION_CHANNEL)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(ProjectionError::db("notifying readers"))?;
            }
            self.faults.hit("projector.before_commit")?;
            tx.commit()
                .await
                .map_err(ProjectionError::db("committing a batch"))?;
            self.faults.hit("projector.after_commit")?;
            expected = last;
            for message in batch {
                // A lost ack means a redelivery, which the checkpoint skips.
                if let Err(e) = message.ack().await {
                    tracing::debug!(projection = name, error = %e, "ack failed");
                }
            }
        }
    }

    /// The durable consumer, positioned right after `checkpoint`. An existing one is kept
    /// unless it already delivered past the checkpoint (a previous instance died with
    /// unacked messages, or a replay moved the checkpoint back) or reads other subjects;
    /// then it is recreated, so nothing waits for an ack timeout to be redelivered.
    async fn position(
        &self,
        stream: &jetstream::stream::Stream,
        checkpoint: u64,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, ProjectionError> {
        let nats = |context| move |e: String| ProjectionError::nats(context)(e);
        let durable = durable_name(self.projection.name());
        let subjects = self.projection.subjects();
        if let Ok(mut existing) = stream.get_consumer::<pull::Config>(&durable).await {
            let info = existing
                .info()
                .await
                .map_err(|e| nats("reading the consumer")(e.to_string()))?;
            let same_subjects = info.config.filter_subjects == subjects
                || (subjects.len() == 1 && info.config.filter_subject == subjects[0]);
            if same_subjects && info.delivered.stream_sequence <= checkpoint {
                return Ok(existing);
            }
            tracing::info!(
                consumer = durable,
                delivered = info.delivered.stream_sequence,
                checkpoint,
                "repositioning the consumer at the checkpoint"
            );
            stream
                .delete_consumer(&durable)
                .await
                .map_err(|e| nats("deleting the consumer")(e.to_string()))?;
        }
        stream
            .create_consumer(pull::Config {
                durable_name: Some(durable),
                filter_subjects: subjects,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: checkpoint + 1,
                },
                ack_policy: AckPolicy::Explicit,
                ack_wait: self.config.ack_wait,
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .map_err(|e| nats("creating the consumer")(e.to_string()))
    }
}

/// Creates the checkpoints table and the projection's tables.
///
/// `CREATE TABLE IF NOT EXISTS` is not safe against itself: two projectors starting at once
/// can both pass the check and one fails on the catalog's unique index. So the DDL runs in
/// a transaction holding an advisory lock shared by every projector.
pub(crate) async fn setup<P: Projection + ?Sized>(
    pool: &PgPool,
    projection: &P,
) -> Result<(), ProjectionError> {
    create_tables(pool, projection.ddl()).await
}

/// One multi-statement simple query: PostgreSQL runs it as one implicit transaction, so the
/// transaction-scoped lock is held until the last statement is done.
async fn create_tables(pool: &PgPool, ddl: &'static str) -> Result<(), ProjectionError> {
    let script = format!(
        "SELECT pg_advisory_xact_lock({SETUP_LOCK}); {}; {ddl};",
        checkpoint::CHECKPOINTS_DDL
    );
    sqlx::raw_sql(&script)
        .execute(pool)
        .await
        .map_err(ProjectionError::db("creating the projection's tables"))?;
    Ok(())
}

/// The advisory lock key that serialises projection DDL ("chronpro" in ASCII).
const SETUP_LOCK: i64 = 0x6368_726f_6e70_726f;
