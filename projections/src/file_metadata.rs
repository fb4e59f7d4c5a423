//! The `file_metadata` read model: every file with its owner, name, size, content type and
//! hash, and for every hash how many live files refer to those bytes (the reference count
//! that decides when bytes may go).

use chronicle_files::{File, FileEvent, Share, ShareEvent, TusUpload, Upload};
use chronicle_schemas::files::{TusUploadEvent, UploadEvent};
use chronicle_schemas::AggregateKind;
use chronicle_schemas::Envelope;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::{Definition, Projection, ProjectionError};
use chronicle_commands::contexts;

/// A file as `GET /api/v1/files` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct FileView {
    pub id: String,
    pub owner_id: String,
    pub name: String,
    pub size: i64,
    pub content_type: String,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct FileMetadataProjection;

const DDL: &str = "CREATE TABLE IF NOT EXISTS files (
    id           text PRIMARY KEY,
    owner_id     text        NOT NULL,
    name         text        NOT NULL,
    size         bigint      NOT NULL,
    content_type text        NOT NULL,
    sha256       text        NOT NULL,
    created_at   timestamptz NOT NULL,
    deleted_at   timestamptz,
    version      bigint      NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE TABLE IF NOT EXISTS file_blobs (
    sha256     text PRIMARY KEY,
    live_files bigint NOT NULL,
    unreferenced_since timestamptz
);
ALTER TABLE file_blobs ADD COLUMN IF NOT EXISTS unreferenced_since timestamptz;
CREATE TABLE IF NOT EXISTS file_uploads (
    id         text PRIMARY KEY,
    kind       text        NOT NULL,
    expires_at timestamptz NOT NULL,
    parts      bigint      NOT NULL,
    segments   text[]      NOT NULL DEFAULT '{}',
    open       boolean     NOT NULL
);
CREATE INDEX IF NOT EXISTS file_uploads_open ON file_uploads (expires_at) WHERE open;
CREATE TABLE IF NOT EXISTS file_shares (
    id         text PRIMARY KEY,
    file_id    text        NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX IF NOT EXISTS file_shares_by_file ON file_shares (file_id, created_at)";

/// A share link as `GET /api/v1/files/{id}` lists it: its id is the SHA-256 of its token
/// (the token itself is given out once, when the link is made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ShareView {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Projection for FileMetadataProjection {
    const DEFINITION: Definition = Definition::new(
        "file_metadata",
        contexts::FILES,
        &["files", "file_blobs", "file_shares", "file_uploads"],
        DDL,
    )
    .reading(&[
        (File::CONTEXT, File::TYPE),
        (Share::CONTEXT, Share::TYPE),
        (Upload::CONTEXT, Upload::TYPE),
        (TusUpload::CONTEXT, TusUpload::TYPE),
    ]);

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        for envelope in events.iter().filter(|e| e.aggregate_type == Share::TYPE) {
            let id = envelope.aggregate_id.as_str();
            match envelope.decode::<ShareEvent>()? {
                ShareEvent::ShareCreated {
                    file_id,
                    created_at,
                    expires_at,
                    ..
                } => {
                    sqlx::query(
                        "INSERT INTO file_shares (id, file_id, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(id)
                    .bind(file_id)
                    .bind(created_at)
                    .bind(expires_at)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("storing a share"))?;
                }
                ShareEvent::ShareRevoked { revoked_at } => {
                    sqlx::query(
                        "UPDATE file_shares SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                    )
                    .bind(id)
                    .bind(revoked_at)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("revoking a share"))?;
                }
            }
        }
        for envelope in events.iter().filter(|e| e.aggregate_type == Upload::TYPE) {
            let id = envelope.aggregate_id.as_str();
            match envelope.decode::<UploadEvent>()? {
                UploadEvent::UploadStarted {
                    size,
                    chunk_size,
                    expires_at,
                    ..
                } => {
                    let parts = if chunk_size == 0 {
                        0
                    } else {
                        size.div_ceil(chunk_size)
                    };
                    sqlx::query(
                        "INSERT INTO file_uploads (id, kind, expires_at, parts, open) \
                         VALUES ($1, 'chunks', $2, $3, true) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(id)
                    .bind(expires_at)
                    .bind(ProjectionError::bigint(parts)?)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("storing an upload"))?;
                }
                UploadEvent::ChunkReceived { part, .. } => {
                    // Replayed, a chunk's object is listed once.
                    if let Some(part) = part {
                        sqlx::query(
                            "UPDATE file_uploads SET segments = segments || $2::text \
                             WHERE id = $1 AND NOT ($2 = ANY(segments))",
                        )
                        .bind(id)
                        .bind(part)
                        .execute(&mut *conn)
                        .await
                        .map_err(ProjectionError::db("storing a chunk's object"))?;
                    }
                }
                UploadEvent::UploadCompleted { .. } | UploadEvent::UploadExpired {} => {
                    sqlx::query("UPDATE file_uploads SET open = false WHERE id = $1")
                        .bind(id)
                        .execute(&mut *conn)
                        .await
                        .map_err(ProjectionError::db("closing an upload"))?;
                }
            }
        }
        for envelope in events
            .iter()
            .filter(|e| e.aggregate_type == TusUpload::TYPE)
        {
            let id = envelope.aggregate_id.as_str();
            let version = ProjectionError::bigint(envelope.sequence)?;
            match envelope.decode::<TusUploadEvent>()? {
                TusUploadEvent::TusUploadCreated { expires_at, .. } => {
                    sqlx::query(
                        "INSERT INTO file_uploads (id, kind, expires_at, parts, open) \
                         VALUES ($1, 'tus', $2, 0, true) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(id)
                    .bind(expires_at)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("storing a tus upload"))?;
                }
                TusUploadEvent::TusSegmentStored { part, .. } => {
                    // The n-th segment is event n + 1: a replayed event appends nothing.
                    sqlx::query(
                        "UPDATE file_uploads SET segments = segments || $2::text, parts = parts + 1 \
                         WHERE id = $1 AND parts + 2 = $3",
                    )
                    .bind(id)
                    .bind(part)
                    .bind(version)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("storing a tus segment"))?;
                }
                TusUploadEvent::TusUploadFinished { .. }
                | TusUploadEvent::TusUploadTerminated {}
                | TusUploadEvent::TusUploadExpired {} => {
                    sqlx::query("UPDATE file_uploads SET open = false WHERE id = $1")
                        .bind(id)
                        .execute(&mut *conn)
                        .await
                        .map_err(ProjectionError::db("closing a tus upload"))?;
                }
            }
        }
        for envelope in events.iter().filter(|e| e.aggregate_type == File::TYPE) {
            let id = envelope.aggregate_id.as_str();
            let version = ProjectionError::bigint(envelope.sequence)?;
            match envelope.decode::<FileEvent>()? {
                FileEvent::FileStored {
                    owner_id,
                    name,
                    size,
                    content_type,
                    sha256,
                    stored_at,
                    ..
                } => {
                    // A replayed event inserts nothing and counts nothing twice.
                    sqlx::query(
                        "WITH f AS ( \
                           INSERT INTO files (id, owner_id, name, size, content_type, sha256, created_at, version) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING RETURNING sha256) \
                         INSERT INTO file_blobs (sha256, live_files) SELECT sha256, 1 FROM f \
                         ON CONFLICT (sha256) DO UPDATE \
                           SET live_files = file_blobs.live_files + 1, unreferenced_since = NULL",
                    )
                    .bind(id)
                    .bind(owner_id)
                    .bind(name)
                    .bind(ProjectionError::bigint(size)?)
                    .bind(content_type)
                    .bind(sha256)
                    .bind(stored_at)
                    .bind(version)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("storing a file"))?;
                }
                FileEvent::FileRenamed { name } => {
                    sqlx::query(
                        "UPDATE files SET name = $2, version = $3 WHERE id = $1 AND version < $3",
                    )
                    .bind(id)
                    .bind(name)
                    .bind(version)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("renaming a file"))?;
                }
                FileEvent::FileDeleted { deleted_at } => {
                    sqlx::query(
                        "WITH f AS ( \
                           UPDATE files SET deleted_at = $2, version = $3 \
                           WHERE id = $1 AND version < $3 AND deleted_at IS NULL RETURNING sha256) \
                         UPDATE file_blobs SET live_files = live_files - 1, \
                           unreferenced_since = CASE WHEN live_files = 1 THEN $2 END \
                         WHERE sha256 = (SELECT sha256 FROM f)",
                    )
                    .bind(id)
                    .bind(deleted_at)
                    .bind(version)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("deleting a file"))?;
                }
            }
        }
        Ok(())
    }
}

/// The live files of `owner_id`, newest first, `limit` of them after the cursor
/// `(created_at, id)` when one is given.
///
/// # Errors
/// Database failures.
pub async fn files_of(
    pool: &PgPool,
    owner_id: &str,
    after: Option<(DateTime<Utc>, &str)>,
    limit: i64,
) -> Result<Vec<FileView>, sqlx::Error> {
    let (at, id) = after.unzip();
    sqlx::query_as(
        "SELECT id, owner_id, name, size, content_type, sha256, created_at FROM files \
         WHERE owner_id = $1 AND deleted_at IS NULL \
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(owner_id)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How many live files refer to the bytes named `sha256`.
///
/// # Errors
/// Database failures.
pub async fn live_references(pool: &PgPool, sha256: &str) -> Result<i64, sqlx::Error> {
    Ok(
        sqlx::query_scalar("SELECT live_files FROM file_blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(pool)
            .await?
            .unwrap_or(0),
    )
}

/// The share links of file `file_id`, oldest first.
///
/// # Errors
/// Database failures.
pub async fn shares_of(pool: &PgPool, file_id: &str) -> Result<Vec<ShareView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, created_at, expires_at, revoked_at FROM file_shares \
         WHERE file_id = $1 ORDER BY created_at, id",
    )
    .bind(file_id)
    .fetch_all(pool)
    .await
}

/// The ids of up to `limit` files of `owner_id`'s whose bytes are `sha256` and that this
/// read model holds as live (it may be behind a deletion: ask the file itself).
///
/// # Errors
/// Database failures.
pub async fn files_with_bytes(
    pool: &PgPool,
    owner_id: &str,
    sha256: &str,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM files WHERE owner_id = $1 AND sha256 = $2 AND deleted_at IS NULL \
         LIMIT $3",
    )
    .bind(owner_id)
    .bind(sha256)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Claims the bytes named `sha256` before a file is made to point at them (new or already
/// stored): the files janitor leaves claimed bytes alone for its grace period, and a claim
/// made while the janitor removes them waits until the removal is done.
///
/// # Errors
/// Database failures.
pub async fn claim_bytes(pool: &PgPool, sha256: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO file_bytes (sha256, claimed_at) VALUES ($1, now()) \
         ON CONFLICT (sha256) DO UPDATE SET claimed_at = now(), removed_at = NULL",
    )
    .bind(sha256)
    .execute(pool)
    .await
    .map(|_| ())
}

/// The condition under which bytes may go: stored, not claimed since `cutoff`, and no live
/// file refers to them since `cutoff` (or ever).
const UNREFERENCED: &str = "fb.removed_at IS NULL AND fb.claimed_at < $1 \
    AND COALESCE(b.live_files, 0) = 0 \
    AND (b.unreferenced_since IS NULL OR b.unreferenced_since < $1)";

/// Up to `limit` hashes of bytes that may go (see [`lock_unreferenced`]).
///
/// # Errors
/// Database failures.
pub async fn unreferenced_bytes(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT fb.sha256 FROM file_bytes fb LEFT JOIN file_blobs b USING (sha256) \
         WHERE {UNREFERENCED} ORDER BY fb.claimed_at LIMIT $2"
    ))
    .bind(cutoff)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Locks the claim on `sha256` for the transaction if the bytes may still go.
///
/// # Errors
/// Database failures.
pub async fn lock_unreferenced(
    conn: &mut PgConnection,
    sha256: &str,
    cutoff: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let locked: Option<String> = sqlx::query_scalar(&format!(
        "SELECT fb.sha256 FROM file_bytes fb LEFT JOIN file_blobs b USING (sha256) \
         WHERE fb.sha256 = $2 AND {UNREFERENCED} FOR UPDATE OF fb"
    ))
    .bind(cutoff)
    .bind(sha256)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(locked.is_some())
}

/// Records that the bytes named `sha256` were removed.
///
/// # Errors
/// Database failures.
pub async fn mark_removed(conn: &mut PgConnection, sha256: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE file_bytes SET removed_at = now() WHERE sha256 = $1")
        .bind(sha256)
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

/// An upload the janitor may clean up.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AbandonedUpload {
    pub id: String,
    /// `chunks` (the chunked route) or `tus`.
    pub kind: String,
    /// Chunks: how many the declared size makes.
    pub parts: i64,
    /// Tus: the objects holding its bytes.
    pub segments: Vec<String>,
}

/// Up to `limit` uploads neither finished nor closed whose expiry is before `cutoff`.
///
/// # Errors
/// Database failures.
pub async fn abandoned_uploads(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<AbandonedUpload>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, parts, segments FROM file_uploads WHERE open AND expires_at < $1 \
         ORDER BY expires_at LIMIT $2",
    )
    .bind(cutoff)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The ids of uploads neither finished nor closed.
///
/// # Errors
/// Database failures.
pub async fn open_uploads(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM file_uploads WHERE open")
        .fetch_all(pool)
        .await
}
