//! Where a subscriber stands, as `GET /api/v1/projections` and `chronicle projections
//! status` report it.

use async_nats::jetstream::consumer::pull;
use serde::Serialize;
use sqlx::PgPool;

use super::{parked, SubscriberError};
use crate::EVENTS_STREAM;

/// A subscriber as status reports name it: its checkpoint name, its durable consumer, and
/// the bounded context whose schema holds its checkpoint and parked events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberRef {
    pub name: String,
    pub durable: String,
    pub context: &'static str,
}

/// One subscriber's progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubscriberStatus {
    pub name: String,
    pub checkpoint: u64,
    pub stream_last_seq: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
    /// `live`, `catching_up`, `failed` (it has parked events) or `not_started`.
    pub status: &'static str,
    pub parked: u64,
    /// The newest parked event's error, when `status` is `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The status of subscriber `name` reading through consumer `durable`.
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
    durable: &str,
) -> Result<SubscriberStatus, SubscriberError> {
    let row: Option<(i64, f64)> = sqlx::query_as(
        "SELECT checkpoint, EXTRACT(EPOCH FROM now() - updated_at)::float8 \
         FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(SubscriberError::db("reading a checkpoint"))?;
    let (checkpoint, idle) = row.map_or((0, 0.0), |(c, s)| (c as u64, s));
    let (parked, error) = parked::summary(pool, name).await?;
    let stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(SubscriberError::nats("reading the stream"))?;
    let last = stream
        .get_info()
        .await
        .map_err(SubscriberError::nats("reading the stream"))?
        .state
        .last_sequence;
    let (lag_events, running) = match stream.get_consumer::<pull::Config>(durable).await {
        Ok(consumer) => {
            let info = consumer
                .get_info()
                .await
                .map_err(SubscriberError::nats("reading the consumer"))?;
            (info.num_pending + info.num_ack_pending as u64, true)
        }
        Err(_) => (last.saturating_sub(checkpoint), false),
    };
    Ok(SubscriberStatus {
        name: name.to_owned(),
        checkpoint,
        stream_last_seq: last,
        lag_events,
        lag_seconds: if lag_events == 0 { 0.0 } else { idle },
        status: match (running, lag_events, parked) {
            (_, _, 1..) => "failed",
            (false, _, _) => "not_started",
            (true, 0, _) => "live",
            (true, _, _) => "catching_up",
        },
        parked,
        error: if parked > 0 { error } else { None },
    })
}
