use chronicle_schemas::{files::TusUploadEvent, limits::Invalid, AggregateKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{check_sha256, Declared};

/// Most `PATCH` requests one tus upload may take (each is a part, and the state lists
/// them): plenty for any client's chunking, bounded for a hostile one.
pub const MAX_TUS_SEGMENTS: usize = 10_000;

/// What can be asked of a tus upload. `by` is the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TusCommand {
    Create {
        upload_id: String,
        owner_id: String,
        name: String,
        size: u64,
        content_type: String,
        expires_at: DateTime<Utc>,
    },
    /// `length` bytes at `offset` are stored as object `part`.
    Store {
        offset: u64,
        length: u64,
        part: String,
        by: String,
    },
    /// Every byte is in and they hash to `sha256`: they become file `file_id`. Asked again
    /// after it finished, it changes nothing.
    Finish {
        file_id: String,
        sha256: String,
        by: String,
    },
    /// The client ends the upload.
    Terminate { by: String },
    /// The upload is abandoned if it is past its expiry and not finished.
    Expire { now: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TusError {
    /// No such upload, or not the caller's.
    #[error("no such upload")]
    NotFound,
    #[error("the upload already exists")]
    Exists,
    #[error("invalid {0}")]
    Invalid(#[from] Invalid),
    /// Bytes sent for another offset than the one the server holds.
    #[error("the upload is at offset {expected}")]
    OffsetMismatch { expected: u64 },
    #[error("the upload is {size} bytes long")]
    TooLong { size: u64 },
    #[error("at most {MAX_TUS_SEGMENTS} requests may carry an upload's bytes")]
    TooManySegments,
    #[error("{missing} bytes are still missing")]
    Incomplete { missing: u64 },
    #[error("the upload is finished, terminated or expired")]
    Closed,
    #[error("the upload has not expired")]
    NotExpired,
}

chronicle_schemas::domain_rules!(TusError {
    Self::NotFound => NotFound,
    Self::Exists => Conflict("upload_exists"),
    Self::Invalid(invalid) => Invalid(invalid),
    Self::OffsetMismatch { .. } => Conflict("offset_mismatch"),
    Self::TooLong { .. } => Invalid("Upload-Length", "payload_too_large"),
    Self::TooManySegments => Conflict("too_many_segments"),
    Self::Incomplete { .. } => Conflict("upload_incomplete"),
    Self::Closed => Conflict("upload_closed"),
    Self::NotExpired => Conflict("upload_not_expired"),
});

/// One stored stretch of bytes: the object holding it, and its length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub part: String,
    pub length: u64,
}

/// A tus upload: its declared length, the bytes in so far, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TusUpload {
    upload_id: String,
    #[serde(flatten)]
    pub(crate) declared: Declared,
    expires_at: Option<DateTime<Utc>>,
    offset: u64,
    segments: Vec<Segment>,
    finished: Option<(String, String)>,
    terminated: bool,
    expired: bool,
}

impl TusUpload {
    pub fn exists(&self) -> bool {
        !self.upload_id.is_empty()
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// How many bytes are in.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The stored stretches, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The file it became and its hash, once finished.
    pub fn finished(&self) -> Option<(&str, &str)> {
        self.finished
            .as_ref()
            .map(|(f, h)| (f.as_str(), h.as_str()))
    }

    pub fn is_terminated(&self) -> bool {
        self.terminated
    }

    pub fn is_expired(&self) -> bool {
        self.expired
    }

    fn owned_by(&self, by: &str) -> Result<(), TusError> {
        if self.exists() && self.owner_id == by && !self.terminated {
            Ok(())
        } else {
            Err(TusError::NotFound)
        }
    }

    fn open(&self) -> Result<(), TusError> {
        if self.finished.is_some() || self.expired {
            Err(TusError::Closed)
        } else {
            Ok(())
        }
    }

    fn decide(&self, command: TusCommand) -> Result<Vec<TusUploadEvent>, TusError> {
        use TusCommand as C;
        use TusUploadEvent as E;
        match command {
            C::Create {
                upload_id,
                owner_id,
                name,
                size,
                content_type,
                expires_at,
            } => {
                if self.exists() {
                    return Err(TusError::Exists);
                }
                Declared::check(&owner_id, &name, size, &content_type)?;
                Ok(vec![E::TusUploadCreated {
                    upload_id,
                    owner_id,
                    name,
                    size,
                    content_type,
                    expires_at,
                }])
            }
            C::Store {
                offset,
                length,
                part,
                by,
            } => {
                self.owned_by(&by)?;
                self.open()?;
                if offset != self.offset {
                    return Err(TusError::OffsetMismatch {
                        expected: self.offset,
                    });
                }
                if length == 0 {
                    return Ok(vec![]);
                }
                if length > self.size - self.offset {
                    return Err(TusError::TooLong { size: self.size });
                }
                if self.segments.len() >= MAX_TUS_SEGMENTS {
                    return Err(TusError::TooManySegments);
                }
                if part.is_empty() || part.len() > 128 {
                    return Err(Invalid::new("part", "an object name").into());
                }
                Ok(vec![E::TusSegmentStored {
                    offset,
                    length,
                    part,
                }])
            }
            C::Finish {
                file_id,
                sha256,
                by,
            } => {
                self.owned_by(&by)?;
                if self.finished.is_some() {
                    return Ok(vec![]);
                }
                self.open()?;
                if self.offset < self.size {
                    return Err(TusError::Incomplete {
                        missing: self.size - self.offset,
                    });
                }
                check_sha256("sha256", &sha256)?;
                Ok(vec![E::TusUploadFinished { file_id, sha256 }])
            }
            C::Terminate { by } => {
                self.owned_by(&by)?;
                if self.finished.is_some() {
                    return Err(TusError::Closed);
                }
                Ok(vec![E::TusUploadTerminated {}])
            }
            C::Expire { now } => {
                if !self.exists() {
                    return Err(TusError::NotFound);
                }
                if self.finished.is_some() || self.expired || self.terminated {
                    return Ok(vec![]);
                }
                if self.expires_at.is_some_and(|at| now < at) {
                    return Err(TusError::NotExpired);
                }
                Ok(vec![E::TusUploadExpired {}])
            }
        }
    }
}

impl AggregateKind for TusUpload {
    const CONTEXT: &'static str = "files";
}

chronicle_schemas::decided_aggregate!(TusUpload: "tus_upload", TusCommand => TusUploadEvent, TusError);

impl TusUpload {
    fn apply_event(&mut self, event: TusUploadEvent) {
        match event {
            TusUploadEvent::TusUploadCreated {
                upload_id,
                owner_id,
                name,
                size,
                content_type,
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
                    expires_at: Some(expires_at),
                    ..Self::default()
                };
            }
            TusUploadEvent::TusSegmentStored { length, part, .. } => {
                self.offset += length;
                self.segments.push(Segment { part, length });
            }
            TusUploadEvent::TusUploadFinished { file_id, sha256 } => {
                self.finished = Some((file_id, sha256));
            }
            TusUploadEvent::TusUploadTerminated {} => self.terminated = true,
            TusUploadEvent::TusUploadExpired {} => self.expired = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use TusCommand as C;
    use TusUploadEvent as E;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn created(size: u64) -> E {
        E::TusUploadCreated {
            upload_id: "t1".into(),
            owner_id: "alice".into(),
            name: "a.bin".into(),
            size,
            content_type: "application/octet-stream".into(),
            expires_at: at(100),
        }
    }

    fn stored(offset: u64, length: u64) -> E {
        E::TusSegmentStored {
            offset,
            length,
            part: format!("tus.t1.{offset}"),
        }
    }

    fn store(offset: u64, length: u64, by: &str) -> C {
        C::Store {
            offset,
            length,
            part: format!("tus.t1.{offset}"),
            by: by.into(),
        }
    }

    #[test]
    fn bytes_are_taken_only_at_the_offset_held_and_never_past_the_length() {
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10), stored(0, 4)])
            .when(store(4, 6, "alice"))
            .then_expect_events(vec![stored(4, 6)]);
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10), stored(0, 4)])
            .when(store(0, 4, "alice"))
            .then_expect_error(TusError::OffsetMismatch { expected: 4 });
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10), stored(0, 4)])
            .when(store(4, 7, "alice"))
            .then_expect_error(TusError::TooLong { size: 10 });
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10)])
            .when(store(0, 4, "mallory"))
            .then_expect_error(TusError::NotFound);
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10)])
            .when(store(0, 0, "alice"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn it_finishes_once_whole_and_then_takes_nothing() {
        let sha = "a".repeat(64);
        let finish = |by: &str| C::Finish {
            file_id: "t1".into(),
            sha256: "a".repeat(64),
            by: by.into(),
        };
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10), stored(0, 4)])
            .when(finish("alice"))
            .then_expect_error(TusError::Incomplete { missing: 6 });
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10), stored(0, 4), stored(4, 6)])
            .when(finish("alice"))
            .then_expect_events(vec![E::TusUploadFinished {
                file_id: "t1".into(),
                sha256: sha.clone(),
            }]);
        let finished = E::TusUploadFinished {
            file_id: "t1".into(),
            sha256: sha,
        };
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10), stored(0, 10), finished.clone()])
            .when(finish("alice"))
            .then_expect_events(vec![]);
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10), stored(0, 10), finished.clone()])
            .when(store(10, 1, "alice"))
            .then_expect_error(TusError::Closed);
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10), stored(0, 10), finished])
            .when(C::Terminate { by: "alice".into() })
            .then_expect_error(TusError::Closed);
    }

    #[test]
    fn a_terminated_upload_is_gone_and_an_expired_one_closed() {
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10), E::TusUploadTerminated {}])
            .when(store(0, 1, "alice"))
            .then_expect_error(TusError::NotFound);
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10)])
            .when(C::Expire { now: at(50) })
            .then_expect_error(TusError::NotExpired);
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10)])
            .when(C::Expire { now: at(100) })
            .then_expect_events(vec![E::TusUploadExpired {}]);
        TestFramework::<TusUpload>::with(())
            .given(vec![created(10), E::TusUploadExpired {}])
            .when(store(0, 1, "alice"))
            .then_expect_error(TusError::Closed);
    }

    #[test]
    fn the_number_of_requests_carrying_bytes_is_bounded() {
        let mut given = vec![created(MAX_TUS_SEGMENTS as u64 + 5)];
        given.extend((0..MAX_TUS_SEGMENTS as u64).map(|i| stored(i, 1)));
        TestFramework::<TusUpload>::with(())
            .given(given)
            .when(store(MAX_TUS_SEGMENTS as u64, 1, "alice"))
            .then_expect_error(TusError::TooManySegments);
    }

    #[test]
    fn a_hostile_declaration_is_refused() {
        for (name, size, content_type) in [
            ("../x", 10, "text/plain"),
            ("a.bin", 0, "text/plain"),
            ("a.bin", crate::MAX_FILE_SIZE + 1, "text/plain"),
            ("a.bin", 10, "text/\u{0}plain"),
        ] {
            let error = TusUpload::default()
                .decide(C::Create {
                    upload_id: "t1".into(),
                    owner_id: "alice".into(),
                    name: name.into(),
                    size,
                    content_type: content_type.into(),
                    expires_at: at(100),
                })
                .unwrap_err();
            assert!(matches!(error, TusError::Invalid(_)), "{name:?} {size}");
        }
    }
}
