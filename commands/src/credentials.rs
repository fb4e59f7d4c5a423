//! Provides the identity context's records that are not events: password hashes (never in
//! an event: architecture.md invariant 6) and the roles `chronicle users grant` adds, both kept in
//! the identity context's schema (who holds a username is its claim:
//! [`crate::EventStore::claim_holder`]).
//!
//! It stops at storage: hashing and checking passwords, and what a role allows, are the
//! caller's.

use sqlx::PgPool;

use crate::error::StoreError;

/// The identity context's records on its pool ([`crate::Databases::of`] `identity`).
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pool: &'a PgPool,
}

impl<'a> Credentials<'a> {
    /// The records on `pool`, the identity context's.
    pub fn new(pool: &'a PgPool) -> Self {
        Self { pool }
    }

    /// Stores `password_hash` (a PHC string) for `user_id`.
    ///
    /// # Errors
    /// When the database fails, or `user_id` has a hash already.
    pub async fn store_hash(&self, user_id: &str, password_hash: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO credentials (user_id, password_hash) VALUES ($1, $2)")
            .bind(user_id)
            .bind(password_hash)
            .execute(self.pool)
            .await
            .map(|_| ())
            .map_err(StoreError::db("storing a password hash"))
    }

    /// Removes `user_id`'s hash (a registration that did not commit).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn remove(&self, user_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM credentials WHERE user_id = $1")
            .bind(user_id)
            .execute(self.pool)
            .await
            .map(|_| ())
            .map_err(StoreError::db("removing a password hash"))
    }

    /// The user holding `username` and their password hash, if someone holds it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn of_username(
        &self,
        username: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        sqlx::query_as(
            "SELECT c.aggregate_id, k.password_hash FROM unique_claims c \
             JOIN credentials k ON k.user_id = c.aggregate_id \
             WHERE c.namespace = 'username' AND c.value = $1",
        )
        .bind(username)
        .fetch_optional(self.pool)
        .await
        .map_err(StoreError::db("reading a login"))
    }

    /// Whether `user_id` was granted `role`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn has_role(&self, user_id: &str, role: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM user_roles WHERE user_id = $1 AND role = $2)",
        )
        .bind(user_id)
        .bind(role)
        .fetch_one(self.pool)
        .await
        .map_err(StoreError::db("reading a role"))
    }

    /// Grants `role` to `user_id` (once: granting again changes nothing).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn grant(&self, user_id: &str, role: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO user_roles (user_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(user_id)
            .bind(role)
            .execute(self.pool)
            .await
            .map(|_| ())
            .map_err(StoreError::db("granting a role"))
    }
}
