use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::error::{KeyLookup, StoreError};

/// How long a key's first response is replayed (the API contract: 24 h).
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// An `Idempotency-Key` with what it must match to be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// Whose key it is and for which route (`POST /api/v1/inventory/items` by user X), so
    /// two callers or two routes never share a key.
    pub scope: String,
    /// The client's key, at most 255 characters.
    pub key: String,
    /// SHA-256 of the request body (and anything else that must be identical to replay).
    pub request_hash: Vec<u8>,
}

impl IdempotencyKey {
    pub fn new(scope: impl Into<String>, key: impl Into<String>, request: &[u8]) -> Self {
        Self {
            scope: scope.into(),
            key: key.into(),
            request_hash: Sha256::digest(request).to_vec(),
        }
    }
}

/// The response given the first time, returned again on a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

pub(crate) async fn lookup(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
) -> Result<KeyLookup, StoreError> {
    let row: Option<(Vec<u8>, i16, serde_json::Value)> = sqlx::query_as(
        "SELECT request_hash, status, body FROM idempotency_keys \
         WHERE scope = $1 AND key = $2 AND created_at > now() - make_interval(secs => $3)",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .bind(IDEMPOTENCY_TTL.as_secs_f64())
    .fetch_optional(conn)
    .await
    .map_err(StoreError::db("looking up an idempotency key"))?;
    Ok(match row {
        None => KeyLookup::Fresh,
        Some((hash, _, _)) if hash != key.request_hash => KeyLookup::Reused,
        Some((_, status, body)) => KeyLookup::Replay(StoredResponse {
            status: status as u16,
            body,
        }),
    })
}

/// Records the responses of a group of commands inside their transaction. Returns, per
/// key, `false` when a live record for it already exists (a concurrent request with the
/// same key won); an expired record is overwritten. Keys must be distinct.
pub(crate) async fn record_all(
    conn: &mut PgConnection,
    keys: &[(&IdempotencyKey, &StoredResponse)],
) -> Result<Vec<bool>, StoreError> {
    let recorded: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status, body) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::smallint[], $5::jsonb[]) \
         ON CONFLICT (scope, key) DO UPDATE \
           SET request_hash = EXCLUDED.request_hash, status = EXCLUDED.status, \
               body = EXCLUDED.body, created_at = now() \
         WHERE idempotency_keys.created_at <= now() - make_interval(secs => $6) \
         RETURNING scope, key",
    )
    .bind(
        keys.iter()
            .map(|(k, _)| k.scope.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(keys.iter().map(|(k, _)| k.key.as_str()).collect::<Vec<_>>())
    .bind(
        keys.iter()
            .map(|(k, _)| k.request_hash.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(
        keys.iter()
            .map(|(_, r)| r.status as i16)
            .collect::<Vec<_>>(),
    )
    .bind(keys.iter().map(|(_, r)| r.body.clone()).collect::<Vec<_>>())
    .bind(IDEMPOTENCY_TTL.as_secs_f64())
    .fetch_all(conn)
    .await
    .map_err(StoreError::db("recording idempotency keys"))?;
    let recorded: std::collections::HashSet<(String, String)> = recorded.into_iter().collect();
    Ok(keys
        .iter()
        .map(|(k, _)| recorded.contains(&(k.scope.clone(), k.key.clone())))
        .collect())
}

/// Deletes up to `batch` records older than [`IDEMPOTENCY_TTL`] (they are never replayed
/// again); returns how many went. Run periodically by the gateway.
///
/// # Errors
/// When Postgres fails.
pub async fn purge_expired(pool: &sqlx::PgPool, batch: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY( \
           SELECT ctid FROM idempotency_keys \
           WHERE created_at <= now() - make_interval(secs => $1) LIMIT $2))",
    )
    .bind(IDEMPOTENCY_TTL.as_secs_f64())
    .bind(batch)
    .execute(pool)
    .await
    .map_err(StoreError::db("purging expired idempotency keys"))?;
    Ok(done.rows_affected())
}
