//! The `users` read model: public profiles, no secrets.

use chronicle_identity::{User, UserEvent};
use chronicle_schemas::AggregateKind;
use chronicle_schemas::Envelope;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::{Definition, Projection, ProjectionError};
use chronicle_commands::contexts;

/// A user as `GET /api/v1/users/{id}` returns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct UserView {
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub version: i64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct UsersProjection;

const DDL: &str = "CREATE TABLE IF NOT EXISTS users (
    user_id      text PRIMARY KEY,
    username     text        NOT NULL UNIQUE,
    display_name text        NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    version      bigint      NOT NULL
)";

impl Projection for UsersProjection {
    const DEFINITION: Definition = Definition::new("users", contexts::IDENTITY, &["users"], DDL)
        .reading(&[(User::CONTEXT, User::TYPE)]);

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        // Few events per user: one statement per event keeps this simple, and each is
        // guarded by the version so a replayed event changes nothing.
        for envelope in events.iter().filter(|e| e.aggregate_type == User::TYPE) {
            match envelope.decode::<UserEvent>()? {
                UserEvent::UserRegistered {
                    username,
                    display_name,
                } => {
                    sqlx::query(
                        "INSERT INTO users (user_id, username, display_name, created_at, updated_at, version) \
                         VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (user_id) DO NOTHING",
                    )
                    .bind(&envelope.aggregate_id)
                    .bind(username)
                    .bind(display_name)
                    .bind(envelope.recorded_at)
                    .bind(ProjectionError::bigint(envelope.sequence)?)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("inserting a user"))?;
                }
                UserEvent::ProfileChanged { display_name } => {
                    sqlx::query(
                        "UPDATE users SET display_name = $2, updated_at = $3, version = $4 \
                         WHERE user_id = $1 AND version < $4",
                    )
                    .bind(&envelope.aggregate_id)
                    .bind(display_name)
                    .bind(envelope.recorded_at)
                    .bind(ProjectionError::bigint(envelope.sequence)?)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("updating a user"))?;
                }
            }
        }
        Ok(())
    }
}

/// The one user whose `column` (a unique one: `user_id` or `username`) is `value`.
async fn one_by(
    pool: &PgPool,
    column: &'static str,
    value: &str,
) -> Result<Option<UserView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT user_id, username, display_name, created_at, version FROM users WHERE {column} = $1"
    ))
    .bind(value)
    .fetch_optional(pool)
    .await
}

/// One user by username (exact).
///
/// # Errors
/// When the database fails.
pub async fn by_username(pool: &PgPool, username: &str) -> Result<Option<UserView>, sqlx::Error> {
    one_by(pool, "username", username).await
}

/// One user by id.
///
/// # Errors
/// When the database fails.
pub async fn get(pool: &PgPool, user_id: &str) -> Result<Option<UserView>, sqlx::Error> {
    one_by(pool, "user_id", user_id).await
}
