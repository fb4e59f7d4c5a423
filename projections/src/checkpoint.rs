use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::ProjectionError;

/// The checkpoints table: one row per projection, the last stream sequence applied.
pub const CHECKPOINTS_DDL: &str = "CREATE TABLE IF NOT EXISTS projection_checkpoints (\
    name text PRIMARY KEY, \
    checkpoint bigint NOT NULL DEFAULT 0, \
    updated_at timestamptz NOT NULL DEFAULT now())";

/// Reads and locks the checkpoint of `name` for the rest of the transaction, so two
/// instances of one projector never apply the same event twice.
pub(crate) async fn lock(conn: &mut PgConnection, name: &str) -> Result<u64, ProjectionError> {
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(ProjectionError::db("creating a checkpoint"))?;
    let (checkpoint,): (i64,) =
        sqlx::query_as("SELECT checkpoint FROM projection_checkpoints WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_one(&mut *conn)
            .await
            .map_err(ProjectionError::db("reading a checkpoint"))?;
    Ok(checkpoint as u64)
}

pub(crate) async fn store(
    conn: &mut PgConnection,
    name: &str,
    checkpoint: u64,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE projection_checkpoints SET checkpoint = $2, updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(checkpoint as i64)
    .execute(&mut *conn)
    .await
    .map_err(ProjectionError::db("storing a checkpoint"))?;
    Ok(())
}

pub(crate) async fn read(pool: &PgPool, name: &str) -> Result<u64, ProjectionError> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT checkpoint FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(ProjectionError::db("reading a checkpoint"))?;
    Ok(row.map_or(0, |(c,)| c as u64))
}

/// One projection's progress, as `GET /api/v1/projections` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub checkpoint: u64,
    pub stream_last_seq: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
    pub status: &'static str,
}

/// The status of projection `name`.
///
/// `lag_events` is what its durable consumer has not yet had acknowledged (pending plus
/// in flight), so messages on subjects it does not read never count as lag. `lag_seconds` is
/// how long the checkpoint has not moved while there is lag, else 0.
///
/// # Errors
/// When Postgres or NATS cannot be read.
pub async fn status(
    pool: &PgPool,
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Result<ProjectionStatus, ProjectionError> {
    let row: Option<(i64, f64)> = sqlx::query_as(
        "SELECT checkpoint, EXTRACT(EPOCH FROM now() - updated_at)::float8 \
         FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(ProjectionError::db("reading a checkpoint"))?;
    let (checkpoint, idle) = row.map_or((0, 0.0), |(c, s)| (c as u64, s));
    let nats =
        |e: &dyn std::fmt::Display| ProjectionError::nats("reading the stream")(e.to_string());
    let stream = js
        .get_stream(chronicle_bus::EVENTS_STREAM)
        .await
        .map_err(|e| nats(&e))?;
    let last = stream
        .get_info()
        .await
        .map_err(|e| nats(&e))?
        .state
        .last_sequence;
    let consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            &crate::runtime::durable_name(name),
        )
        .await;
    let (lag_events, running) = match consumer {
        Ok(consumer) => {
            let info = consumer.get_info().await.map_err(|e| nats(&e))?;
            (info.num_pending + info.num_ack_pending as u64, true)
        }
        Err(_) => (last.saturating_sub(checkpoint), false),
    };
    Ok(ProjectionStatus {
        name: name.to_owned(),
        checkpoint,
        stream_last_seq: last,
        lag_events,
        lag_seconds: if lag_events == 0 { 0.0 } else { idle },
        status: match (running, lag_events) {
            (false, _) => "not_started",
            (true, 0) => "live",
            (true, _) => "catching_up",
        },
    })
}
