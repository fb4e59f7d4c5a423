//! A projection run by the shared subscriber runtime of `chronicle-bus`: the projection is
//! the handler, its batch is applied in the transaction that moves its checkpoint, and
//! readers waiting for a version are notified on commit.

use std::{future::Future, time::Duration};

use chronicle_bus::{Faults, Handler, HandlerError, Subscriber, SubscriberConfig, SubscriberError};
use chronicle_schemas::Envelope;
use sqlx::{PgConnection, PgPool};

use crate::{Projection, ProjectionError};

/// The Postgres channel a projector notifies (payload: the projection's name) whenever a
/// batch commits, so readers waiting for a version wake at once.
pub const PROJECTION_CHANNEL: &str = "chronicle_projections";

/// The durable consumer a projection reads through.
pub fn durable_name(projection: &str) -> String {
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
    /// Tries of an event before it is parked, and the first pause between them.
    pub attempts: u32,
    pub backoff: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_max: 500,
            ack_wait: Duration::from_secs(30),
            attempts: 5,
            backoff: Duration::from_millis(100),
        }
    }
}

impl ProjectorConfig {
    /// The subscriber configuration of `projection`: named after it, reading through
    /// `projector-<name>`, fault points `projector.before_commit` / `projector.after_commit`.
    pub fn subscriber<P: Projection>(&self, projection: &P) -> SubscriberConfig {
        SubscriberConfig {
            batch_max: self.batch_max,
            ack_wait: self.ack_wait,
            attempts: self.attempts,
            backoff: self.backoff,
            fault_prefix: "projector",
            ..SubscriberConfig::new(
                projection.name(),
                durable_name(projection.name()),
                projection.subjects(),
            )
        }
    }
}

/// A [`Projection`] as a subscriber [`Handler`].
pub struct Apply<P>(pub P);

impl From<ProjectionError> for HandlerError {
    /// Events that do not decode, carry values the read model cannot hold, or that
    /// PostgreSQL refuses as data (SQLSTATE class 22: a NUL in text, a number out of
    /// range) can never be applied by this code: they are parked at once. Anything else
    /// may pass (a lost connection, a deadlock) and is retried first.
    fn from(error: ProjectionError) -> Self {
        match error {
            ProjectionError::Fault(f) => HandlerError::Fault(f),
            ProjectionError::Decode(_) | ProjectionError::OutOfRange(_) => {
                HandlerError::rejected(error)
            }
            ProjectionError::Database(chronicle_bus::DbError { ref source, .. })
                if is_data_exception(source) =>
            {
                HandlerError::rejected(error)
            }
            other => HandlerError::failed(other),
        }
    }
}

fn is_data_exception(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code.starts_with("22"))
}

impl<P: Projection> Handler for Apply<P> {
    fn ddl(&self) -> &'static str {
        self.0.ddl()
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), HandlerError> {
        self.0.apply(&mut *conn, events).await?;
        // Delivered on commit: wakes readers waiting for `?min_version`.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(PROJECTION_CHANNEL)
            .bind(self.0.name())
            .execute(&mut *conn)
            .await
            .map_err(ProjectionError::db("notifying readers"))?;
        Ok(())
    }
}

/// Runs one [`Projection`] against the live stream on the subscriber runtime.
pub struct Projector<P: Projection> {
    subscriber: Subscriber<Apply<P>>,
}

impl<P: Projection> Projector<P> {
    pub fn new(
        projection: P,
        pool: PgPool,
        client: async_nats::Client,
        config: ProjectorConfig,
    ) -> Self {
        let subscriber_config = config.subscriber(&projection);
        Self {
            subscriber: Subscriber::new(Apply(projection), pool, client, subscriber_config),
        }
    }

    /// Reports progress, parked events and repositions to `observer` (metrics).
    pub fn with_observer(mut self, observer: std::sync::Arc<dyn chronicle_bus::Observer>) -> Self {
        self.subscriber = self.subscriber.with_observer(observer);
        self
    }

    /// Fault points: `projector.before_commit` (batch applied, transaction open) and
    /// `projector.after_commit` (committed, messages not yet acked).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.subscriber = self.subscriber.with_faults(faults);
        self
    }

    /// Creates the checkpoints table and the projection's tables if they are missing.
    ///
    /// # Errors
    /// When the DDL fails.
    pub async fn setup(&self) -> Result<(), SubscriberError> {
        self.subscriber.setup().await
    }

    /// Runs until `shutdown` completes or a fault point stops it.
    ///
    /// # Errors
    /// Only [`SubscriberError::Fault`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), SubscriberError> {
        self.subscriber.run(shutdown).await
    }
}

/// Creates the subscriber tables and the projection's tables on `pool` (its context's: a
/// process that holds only that pool, such as a saga reading its context's read model).
///
/// # Errors
/// When the database fails.
pub async fn setup<P: Projection + ?Sized>(
    pool: &PgPool,
    projection: &P,
) -> Result<(), ProjectionError> {
    chronicle_bus::setup_subscriber_tables(pool, projection.ddl())
        .await
        .map_err(|e| match e {
            SubscriberError::Database(db) => ProjectionError::Database(db),
            other => ProjectionError::nats("creating the projection's tables")(other),
        })
}
