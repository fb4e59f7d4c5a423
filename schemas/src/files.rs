//! Events of the files bounded context: stored files, upload sessions, share links.
//!
//! Bytes never appear in an event: a file names its bytes by their SHA-256 (the object's
//! name in the object store). A share link's token never appears either: its aggregate id
//! is the token's SHA-256, so the log holds nothing a reader could download with.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Everything that happens to a file (aggregate type `file`, id = a UUID v7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum FileEvent {
    /// The file exists; its bytes are the object named `sha256`.
    FileStored {
        file_id: String,
        owner_id: String,
        name: String,
        size: u64,
        content_type: String,
        /// Lowercase hex SHA-256 of the bytes.
        sha256: String,
        stored_at: DateTime<Utc>,
    },
    FileRenamed {
        name: String,
    },
    /// The file is gone; its bytes stay while another live file refers to them.
    FileDeleted {
        deleted_at: DateTime<Utc>,
    },
}

event_types!(FileEvent: FileStored, FileRenamed, FileDeleted);

/// A resumable upload (aggregate type `upload`, id = a UUID v7): declared size and hash,
/// chunks in any order, completed once every chunk is in and the bytes hash as declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum UploadEvent {
    UploadStarted {
        upload_id: String,
        owner_id: String,
        name: String,
        size: u64,
        content_type: String,
        sha256: String,
        /// Every chunk is this long but the last, which holds the rest.
        chunk_size: u64,
        expires_at: DateTime<Utc>,
    },
    /// Chunk `index` is stored, in object `part` (absent in events from before chunks had
    /// objects of their own: then it is the object named after the index). A chunk sent
    /// again records nothing.
    ChunkReceived {
        index: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part: Option<String>,
    },
    /// The bytes are complete and hash as declared: they are file `file_id` now.
    UploadCompleted { file_id: String },
    /// Abandoned past its expiry: its chunks may be removed.
    UploadExpired {},
}

event_types!(UploadEvent:
    UploadStarted,
    ChunkReceived,
    UploadCompleted,
    UploadExpired,
);

/// A tus 1.0 upload (aggregate type `tus_upload`, id = a UUID v7): a declared length,
/// bytes appended in order at the offset the server holds, each `PATCH` kept as one
/// object-store part, finished when the last byte is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum TusUploadEvent {
    TusUploadCreated {
        upload_id: String,
        owner_id: String,
        name: String,
        size: u64,
        content_type: String,
        expires_at: DateTime<Utc>,
    },
    /// `length` bytes at `offset` are stored as object `part`.
    TusSegmentStored {
        offset: u64,
        length: u64,
        part: String,
    },
    /// Every byte is in; they hash to `sha256` and are file `file_id`.
    TusUploadFinished { file_id: String, sha256: String },
    /// The client ended it (`DELETE`): its parts may be removed.
    TusUploadTerminated {},
    /// Abandoned past its expiry: its parts may be removed.
    TusUploadExpired {},
}

event_types!(TusUploadEvent:
    TusUploadCreated,
    TusSegmentStored,
    TusUploadFinished,
    TusUploadTerminated,
    TusUploadExpired,
);

/// A link that serves a file without authentication until it expires or is revoked
/// (aggregate type `share`, id = the SHA-256 of its token; the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ShareEvent {
    ShareCreated {
        file_id: String,
        owner_id: String,
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    ShareRevoked {
        revoked_at: DateTime<Utc>,
    },
}

event_types!(ShareEvent: ShareCreated, ShareRevoked);
