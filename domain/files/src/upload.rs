use std::collections::BTreeSet;

use chronicle_schemas::{
    files::UploadEvent,
    limits::{self, Invalid},
    AggregateKind,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{check_sha256, Declared};

/// Smallest chunk (the last one may be shorter).
pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
/// Largest chunk.
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;
/// Most chunks of one upload: the state that remembers which are in stays bounded.
pub const MAX_CHUNKS: u64 = 100_000;

/// What can be asked of an upload. `by` is the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadCommand {
    Start {
        upload_id: String,
        owner_id: String,
        name: String,
        size: u64,
        content_type: String,
        sha256: String,
        chunk_size: u64,
        expires_at: DateTime<Utc>,
    },
    /// Chunk `index`, `length` bytes long, is stored. Sent again, it changes nothing.
    /// `part` is the object holding it (`None`: the one named after the index).
    ReceiveChunk {
        index: u64,
        length: u64,
        part: Option<String>,
        by: String,
    },
    /// Every chunk is in and the stored bytes hash to `computed_sha256`: they become file
    /// `file_id`. Asked again after it completed, it changes nothing.
    Complete {
        file_id: String,
        computed_sha256: String,
        by: String,
    },
    /// The upload is abandoned if it is past its expiry and not completed.
    Expire { now: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// No such upload, or not the caller's.
    #[error("no such upload")]
    NotFound,
    #[error("the upload already exists")]
    Exists,
    #[error("invalid {0}")]
    Invalid(#[from] Invalid),
    #[error("chunk {index} is {expected} bytes long")]
    ChunkLength { index: u64, expected: u64 },
    #[error("{missing} chunks are still missing")]
    Incomplete { missing: u64 },
    #[error("the bytes do not hash to the declared SHA-256")]
    ChecksumMismatch,
    #[error("the upload is completed or expired")]
    Closed,
    #[error("the upload has not expired")]
    NotExpired,
}

chronicle_schemas::domain_rules!(UploadError {
    Self::NotFound => NotFound,
    Self::Exists => Conflict("upload_exists"),
    Self::Invalid(invalid) => Invalid(invalid),
    Self::ChunkLength { .. } => Invalid("chunk"),
    Self::ChecksumMismatch => Invalid("sha256", "checksum_mismatch"),
    Self::Incomplete { .. } => Conflict("upload_incomplete"),
    Self::Closed => Conflict("upload_closed"),
    Self::NotExpired => Conflict("upload_not_expired"),
});

/// A resumable upload: what was declared, and which chunks are in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    upload_id: String,
    #[serde(flatten)]
    pub(crate) declared: Declared,
    sha256: String,
    chunk_size: u64,
    expires_at: Option<DateTime<Utc>>,
    received: BTreeSet<u64>,
    /// The objects chunks are in, where the event named one.
    parts: std::collections::BTreeMap<u64, String>,
    completed: Option<String>,
    expired: bool,
}

impl Upload {
    pub fn exists(&self) -> bool {
        !self.upload_id.is_empty()
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// How many chunks the declared size makes.
    pub fn chunks(&self) -> u64 {
        chunk_count(self.size, self.chunk_size)
    }

    /// The length chunk `index` must have.
    pub fn chunk_length(&self, index: u64) -> u64 {
        if index + 1 < self.chunks() {
            self.chunk_size
        } else {
            self.size - self.chunk_size * index
        }
    }

    /// The chunks in, in order.
    pub fn received(&self) -> impl Iterator<Item = u64> + '_ {
        self.received.iter().copied()
    }

    /// The object chunk `index` is in, when its event named one.
    pub fn chunk_object(&self, index: u64) -> Option<&str> {
        self.parts.get(&index).map(String::as_str)
    }

    /// Whether chunk `index` is in.
    pub fn has_chunk(&self, index: u64) -> bool {
        self.received.contains(&index)
    }

    /// The chunks still missing, in order.
    pub fn missing(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.chunks()).filter(|i| !self.received.contains(i))
    }

    /// The file the upload became, once completed.
    pub fn completed(&self) -> Option<&str> {
        self.completed.as_deref()
    }

    pub fn is_expired(&self) -> bool {
        self.expired
    }

    /// The upload, if `by` started it.
    fn owned_by(&self, by: &str) -> Result<(), UploadError> {
        if self.exists() && self.owner_id == by {
            Ok(())
        } else {
            Err(UploadError::NotFound)
        }
    }

    fn decide(&self, command: UploadCommand) -> Result<Vec<UploadEvent>, UploadError> {
        use UploadCommand as C;
        use UploadEvent as E;
        match command {
            C::Start {
                upload_id,
                owner_id,
                name,
                size,
                content_type,
                sha256,
                chunk_size,
                expires_at,
            } => {
                if self.exists() {
                    return Err(UploadError::Exists);
                }
                Declared::check(&owner_id, &name, size, &content_type)?;
                check_sha256("sha256", &sha256)?;
                limits::in_range(
                    "chunk_size",
                    chunk_size.into(),
                    MIN_CHUNK_SIZE.into(),
                    MAX_CHUNK_SIZE.into(),
                )?;
                if chunk_count(size, chunk_size) > MAX_CHUNKS {
                    return Err(Invalid::new(
                        "size",
                        format!("at most {MAX_CHUNKS} chunks of chunk_size"),
                    )
                    .into());
                }
                Ok(vec![E::UploadStarted {
                    upload_id,
                    owner_id,
                    name,
                    size,
                    content_type,
                    sha256,
                    chunk_size,
                    expires_at,
                }])
            }
            C::ReceiveChunk {
                index,
                length,
                part,
                by,
            } => {
                self.owned_by(&by)?;
                if self.completed.is_some() || self.expired {
                    return Err(UploadError::Closed);
                }
                if index >= self.chunks() {
                    return Err(Invalid::new(
                        "index",
                        format!("chunks are numbered 0 to {}", self.chunks() - 1),
                    )
                    .into());
                }
                let expected = self.chunk_length(index);
                if length != expected {
                    return Err(UploadError::ChunkLength { index, expected });
                }
                if self.received.contains(&index) {
                    return Ok(vec![]);
                }
                if part.as_ref().is_some_and(|p| p.is_empty() || p.len() > 128) {
                    return Err(Invalid::new("part", "an object name").into());
                }
                Ok(vec![E::ChunkReceived { index, part }])
            }
            C::Complete {
                file_id,
                computed_sha256,
                by,
            } => {
                self.owned_by(&by)?;
                if self.completed.is_some() {
                    return Ok(vec![]);
                }
                if self.expired {
                    return Err(UploadError::Closed);
                }
                let missing = self.chunks() - self.received.len() as u64;
                if missing > 0 {
                    return Err(UploadError::Incomplete { missing });
                }
                if computed_sha256 != self.sha256 {
                    return Err(UploadError::ChecksumMismatch);
                }
                Ok(vec![E::UploadCompleted { file_id }])
            }
            C::Expire { now } => {
                if !self.exists() {
                    return Err(UploadError::NotFound);
                }
                if self.completed.is_some() || self.expired {
                    return Ok(vec![]);
                }
                if self.expires_at.is_some_and(|at| now < at) {
                    return Err(UploadError::NotExpired);
                }
                Ok(vec![E::UploadExpired {}])
            }
        }
    }
}

fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    if chunk_size == 0 {
        0
    } else {
        size.div_ceil(chunk_size)
    }
}

impl AggregateKind for Upload {
    const CONTEXT: &'static str = "files";
}

chronicle_schemas::decided_aggregate!(Upload: "upload", UploadCommand => UploadEvent, UploadError);

impl Upload {
    fn apply_event(&mut self, event: UploadEvent) {
        match event {
            UploadEvent::UploadStarted {
                upload_id,
                owner_id,
                name,
                size,
                content_type,
                sha256,
                chunk_size,
                expires_at,
            } => {
                *self = Self {
                    upload_id,
                    declared: Declared {
                        owner_id,
                        name,
                        size,
                        content_type,
                    },
                    sha256,
                    chunk_size,
                    expires_at: Some(expires_at),
                    ..Self::default()
                };
            }
            UploadEvent::ChunkReceived { index, part } => {
                self.received.insert(index);
                if let Some(part) = part {
                    self.parts.insert(index, part);
                }
            }
            UploadEvent::UploadCompleted { file_id } => self.completed = Some(file_id),
            UploadEvent::UploadExpired {} => self.expired = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use UploadCommand as C;
    use UploadEvent as E;

    type Given = TestFramework<Upload>;
    const CHUNK: u64 = MIN_CHUNK_SIZE;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("a valid time")
    }

    /// Two full chunks and a 10-byte last one.
    fn started() -> E {
        E::UploadStarted {
            upload_id: "u1".into(),
            owner_id: "alice".into(),
            name: "big.bin".into(),
            size: 2 * CHUNK + 10,
            content_type: "application/octet-stream".into(),
            sha256: "cd".repeat(32),
            chunk_size: CHUNK,
            expires_at: at(3_600),
        }
    }

    fn chunk(index: u64, length: u64) -> C {
        C::ReceiveChunk {
            index,
            length,
            part: None,
            by: "alice".into(),
        }
    }

    fn all_in() -> Vec<E> {
        vec![
            started(),
            E::ChunkReceived {
                index: 2,
                part: None,
            },
            E::ChunkReceived {
                index: 0,
                part: None,
            },
            E::ChunkReceived {
                index: 1,
                part: None,
            },
        ]
    }

    fn complete(hash: &str) -> C {
        C::Complete {
            file_id: "f1".into(),
            computed_sha256: hash.into(),
            by: "alice".into(),
        }
    }

    #[test]
    fn an_upload_declares_sane_sizes() {
        let E::UploadStarted {
            upload_id,
            owner_id,
            name,
            size,
            content_type,
            sha256,
            chunk_size,
            expires_at,
        } = started()
        else {
            unreachable!()
        };
        let start = C::Start {
            upload_id,
            owner_id,
            name,
            size,
            content_type,
            sha256,
            chunk_size,
            expires_at,
        };
        Given::with(())
            .given_no_previous_events()
            .when(start.clone())
            .then_expect_events(vec![started()]);
        Given::with(())
            .given(vec![started()])
            .when(start.clone())
            .then_expect_error(UploadError::Exists);
        let with = |edit: &dyn Fn(&mut C)| {
            let mut command = start.clone();
            edit(&mut command);
            Given::with(())
                .given_no_previous_events()
                .when(command)
                .inspect_result()
        };
        let field = |result: Result<Vec<E>, UploadError>| match result {
            Err(UploadError::Invalid(invalid)) => invalid.field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(with(&|c| if let C::Start { size, .. } = c {
                *size = 0;
            })),
            "size"
        );
        assert_eq!(
            field(with(&|c| if let C::Start { chunk_size, .. } = c {
                *chunk_size = 1;
            })),
            "chunk_size"
        );
        assert_eq!(
            field(with(&|c| if let C::Start { size, .. } = c {
                *size = (MAX_CHUNKS + 1) * CHUNK;
            })),
            "size"
        );
        assert_eq!(
            field(with(&|c| if let C::Start { name, .. } = c {
                *name = "../../x".into();
            })),
            "name"
        );
    }

    #[test]
    fn chunks_arrive_in_any_order_with_exact_lengths_and_a_resend_records_nothing() {
        Given::with(())
            .given(vec![started()])
            .when(chunk(2, 10))
            .then_expect_events(vec![E::ChunkReceived {
                index: 2,
                part: None,
            }]);
        Given::with(())
            .given(vec![
                started(),
                E::ChunkReceived {
                    index: 2,
                    part: None,
                },
            ])
            .when(chunk(2, 10))
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![started()])
            .when(chunk(0, 10))
            .then_expect_error(UploadError::ChunkLength {
                index: 0,
                expected: CHUNK,
            });
        Given::with(())
            .given(vec![started()])
            .when(chunk(2, CHUNK))
            .then_expect_error(UploadError::ChunkLength {
                index: 2,
                expected: 10,
            });
        assert!(matches!(
            Given::with(()).given(vec![started()]).when(chunk(3, 10)).inspect_result(),
            Err(UploadError::Invalid(ref i)) if i.field == "index"
        ));
        Given::with(())
            .given(vec![started()])
            .when(C::ReceiveChunk {
                index: 0,
                length: CHUNK,
                part: None,
                by: "mallory".into(),
            })
            .then_expect_error(UploadError::NotFound);
    }

    #[test]
    fn it_completes_only_with_every_chunk_and_the_declared_hash_and_only_once() {
        Given::with(())
            .given(vec![
                started(),
                E::ChunkReceived {
                    index: 0,
                    part: None,
                },
            ])
            .when(complete(&"cd".repeat(32)))
            .then_expect_error(UploadError::Incomplete { missing: 2 });
        Given::with(())
            .given(all_in())
            .when(complete(&"ee".repeat(32)))
            .then_expect_error(UploadError::ChecksumMismatch);
        Given::with(())
            .given(all_in())
            .when(complete(&"cd".repeat(32)))
            .then_expect_events(vec![E::UploadCompleted {
                file_id: "f1".into(),
            }]);
        let mut done = all_in();
        done.push(E::UploadCompleted {
            file_id: "f1".into(),
        });
        Given::with(())
            .given(done.clone())
            .when(complete(&"cd".repeat(32)))
            .then_expect_events(vec![]);
        Given::with(())
            .given(done)
            .when(chunk(0, CHUNK))
            .then_expect_error(UploadError::Closed);
    }

    #[test]
    fn an_abandoned_upload_expires_after_its_time_and_then_takes_nothing() {
        Given::with(())
            .given(vec![started()])
            .when(C::Expire { now: at(10) })
            .then_expect_error(UploadError::NotExpired);
        Given::with(())
            .given(vec![started()])
            .when(C::Expire { now: at(3_600) })
            .then_expect_events(vec![E::UploadExpired {}]);
        let expired = vec![started(), E::UploadExpired {}];
        Given::with(())
            .given(expired.clone())
            .when(chunk(0, CHUNK))
            .then_expect_error(UploadError::Closed);
        Given::with(())
            .given(expired.clone())
            .when(complete(&"cd".repeat(32)))
            .then_expect_error(UploadError::Closed);
        Given::with(())
            .given(expired)
            .when(C::Expire { now: at(9_999) })
            .then_expect_events(vec![]);
        let mut done = all_in();
        done.push(E::UploadCompleted {
            file_id: "f1".into(),
        });
        Given::with(())
            .given(done)
            .when(C::Expire { now: at(9_999) })
            .then_expect_events(vec![]);
    }
}
