use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::error::{KeyLookup, StoreError};

/// How long a key's first response is replayed (API.md: 24 h).
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

/// Records the response inside the command's transaction. Returns `false` when a live
/// record for the key already exists (a concurrent request with the same key won).
pub(crate) async fn record(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    response: &StoredResponse,
) -> Result<bool, StoreError> {
    // An expired record is overwritten; a live one makes this insert a no-op.
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status, body) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (scope, key) DO UPDATE \
           SET request_hash = EXCLUDED.request_hash, status = EXCLUDED.status, \
               body = EXCLUDED.body, created_at = now() \
         WHERE idempotency_keys.created_at <= now() - make_interval(secs => $6)",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .bind(&key.request_hash)
    .bind(response.status as i16)
    .bind(&response.body)
    .bind(IDEMPOTENCY_TTL.as_secs_f64())
    .execute(conn)
    .await
    .map_err(StoreError::db("recording an idempotency key"))?;
    Ok(inserted.rows_affected() == 1)
}
