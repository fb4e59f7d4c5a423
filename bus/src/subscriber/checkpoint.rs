//! Where each reader of the log stands: one row per subscriber, the last stream sequence it
//! handled, written in the same transaction as the handler's effects.

use sqlx::{PgConnection, PgPool};

use super::SubscriberError;

/// The checkpoints table (the name predates sagas using it too; kept so a running system
/// keeps its positions) and the parked-events table.
pub const SUBSCRIBER_DDL: &str = "CREATE TABLE IF NOT EXISTS projection_checkpoints (\
    name text PRIMARY KEY, \
    checkpoint bigint NOT NULL DEFAULT 0, \
    updated_at timestamptz NOT NULL DEFAULT now()); \
    CREATE TABLE IF NOT EXISTS parked_events (\
    subscriber text NOT NULL, \
    stream_seq bigint NOT NULL, \
    subject text NOT NULL, \
    event_type text NOT NULL, \
    error text NOT NULL, \
    attempts integer NOT NULL, \
    first_failed_at timestamptz NOT NULL DEFAULT now(), \
    last_failed_at timestamptz NOT NULL DEFAULT now(), \
    PRIMARY KEY (subscriber, stream_seq))";

/// Creates the checkpoints and parked-events tables when they are missing.
///
/// `CREATE TABLE IF NOT EXISTS` is not safe against itself (two processes starting at once
/// can both pass the check), so the DDL runs under a transaction-scoped advisory lock in one
/// multi-statement query, which PostgreSQL runs as one implicit transaction.
///
/// # Errors
/// When the DDL fails.
pub async fn setup(pool: &PgPool, extra_ddl: &str) -> Result<(), SubscriberError> {
    let script =
        format!("SELECT pg_advisory_xact_lock({SETUP_LOCK}); {SUBSCRIBER_DDL}; {extra_ddl};");
    sqlx::raw_sql(&script)
        .execute(pool)
        .await
        .map_err(SubscriberError::db("creating the subscriber tables"))?;
    Ok(())
}

/// The advisory lock key that serialises subscriber DDL ("chronpro" in ASCII).
const SETUP_LOCK: i64 = 0x6368_726f_6e70_726f;

/// Reads and locks the checkpoint of `name` for the rest of the transaction, so two
/// instances of one subscriber never handle the same event twice.
///
/// # Errors
/// When Postgres fails.
pub async fn lock(conn: &mut PgConnection, name: &str) -> Result<u64, SubscriberError> {
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(SubscriberError::db("creating a checkpoint"))?;
    let (checkpoint,): (i64,) =
        sqlx::query_as("SELECT checkpoint FROM projection_checkpoints WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_one(&mut *conn)
            .await
            .map_err(SubscriberError::db("reading a checkpoint"))?;
    Ok(checkpoint as u64)
}

/// Moves the checkpoint of `name` (locked by [`lock`] in the same transaction).
///
/// # Errors
/// When Postgres fails.
pub async fn store(
    conn: &mut PgConnection,
    name: &str,
    checkpoint: u64,
) -> Result<(), SubscriberError> {
    sqlx::query(
        "UPDATE projection_checkpoints SET checkpoint = $2, updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(checkpoint as i64)
    .execute(&mut *conn)
    .await
    .map_err(SubscriberError::db("storing a checkpoint"))?;
    Ok(())
}

/// The checkpoint of `name`, 0 when it has none yet.
///
/// # Errors
/// When Postgres fails.
pub async fn read(pool: &PgPool, name: &str) -> Result<u64, SubscriberError> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT checkpoint FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(SubscriberError::db("reading a checkpoint"))?;
    Ok(row.map_or(0, |(c,)| c as u64))
}
