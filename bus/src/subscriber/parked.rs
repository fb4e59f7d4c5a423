//! Parked events: events a subscriber could not handle after its retries, kept with their
//! error until someone retries them (architecture.md invariant 8).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::SubscriberError;

/// One parked event, as `GET /api/v1/projections/{name}/parked` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ParkedEvent {
    pub stream_seq: i64,
    pub subject: String,
    pub event_type: String,
    pub error: String,
    pub attempts: i32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
}

/// What a failed event is recorded as.
pub(crate) struct Failure<'a> {
    pub stream_seq: u64,
    pub subject: &'a str,
    pub event_type: &'a str,
    pub error: &'a str,
    pub attempts: u32,
}

/// Records `failure` as parked, or adds the attempts to the row already there.
pub(crate) async fn record(
    conn: &mut PgConnection,
    subscriber: &str,
    failure: &Failure<'_>,
) -> Result<(), SubscriberError> {
    sqlx::query(
        "INSERT INTO parked_events (subscriber, stream_seq, subject, event_type, error, attempts) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (subscriber, stream_seq) DO UPDATE SET error = EXCLUDED.error, \
         attempts = parked_events.attempts + EXCLUDED.attempts, last_failed_at = now()",
    )
    .bind(subscriber)
    .bind(failure.stream_seq as i64)
    .bind(failure.subject)
    .bind(failure.event_type)
    .bind(failure.error)
    .bind(failure.attempts as i32)
    .execute(conn)
    .await
    .map_err(SubscriberError::db("parking an event"))?;
    Ok(())
}

/// Drops the parked row of `stream_seq` (it has now been handled).
pub(crate) async fn clear(
    conn: &mut PgConnection,
    subscriber: &str,
    stream_seq: u64,
) -> Result<(), SubscriberError> {
    sqlx::query("DELETE FROM parked_events WHERE subscriber = $1 AND stream_seq = $2")
        .bind(subscriber)
        .bind(stream_seq as i64)
        .execute(conn)
        .await
        .map_err(SubscriberError::db("clearing a parked event"))?;
    Ok(())
}

/// The parked events of `subscriber`, oldest first (at most 1,000).
///
/// # Errors
/// When Postgres fails.
pub async fn parked(pool: &PgPool, subscriber: &str) -> Result<Vec<ParkedEvent>, SubscriberError> {
    sqlx::query_as(
        "SELECT stream_seq, subject, event_type, error, attempts, first_failed_at, last_failed_at \
         FROM parked_events WHERE subscriber = $1 ORDER BY stream_seq LIMIT 1000",
    )
    .bind(subscriber)
    .fetch_all(pool)
    .await
    .map_err(SubscriberError::db("reading parked events"))
}

/// How many events `subscriber` has parked, and the newest error.
pub(crate) async fn summary(
    pool: &PgPool,
    subscriber: &str,
) -> Result<(u64, Option<String>), SubscriberError> {
    let (count, error): (i64, Option<String>) = sqlx::query_as(
        "SELECT count(*), (SELECT error FROM parked_events WHERE subscriber = $1 \
         ORDER BY last_failed_at DESC LIMIT 1) FROM parked_events WHERE subscriber = $1",
    )
    .bind(subscriber)
    .fetch_one(pool)
    .await
    .map_err(SubscriberError::db("counting parked events"))?;
    Ok((count as u64, error))
}
