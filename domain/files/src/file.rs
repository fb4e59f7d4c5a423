use chronicle_schemas::{files::FileEvent, limits::Invalid, AggregateKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{check_name, check_sha256, Declared};

/// What can be asked of a file. `by` is the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileCommand {
    /// The bytes named `sha256` are in the object store; they become this file.
    Store {
        file_id: String,
        owner_id: String,
        name: String,
        size: u64,
        content_type: String,
        sha256: String,
        at: DateTime<Utc>,
    },
    Rename {
        name: String,
        by: String,
    },
    Delete {
        by: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// No such file, it was deleted, or it is not the caller's (only its owner sees it).
    #[error("no such file")]
    NotFound,
    #[error("the file already exists")]
    Exists,
    #[error("invalid {0}")]
    Invalid(#[from] Invalid),
}

chronicle_schemas::domain_rules!(FileError {
    Self::NotFound => NotFound,
    Self::Exists => Conflict("file_exists"),
    Self::Invalid(invalid) => Invalid(invalid),
});

/// A stored file: its owner, name, size, content type and the hash that names its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    file_id: String,
    #[serde(flatten)]
    pub(crate) declared: Declared,
    sha256: String,
    stored_at: Option<DateTime<Utc>>,
    deleted: bool,
}

impl File {
    /// When the file was stored.
    pub fn stored_at(&self) -> Option<DateTime<Utc>> {
        self.stored_at
    }

    /// Whether the file exists and is not deleted.
    pub fn is_live(&self) -> bool {
        !self.file_id.is_empty() && !self.deleted
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The live file, if `by` owns it.
    fn owned_by(&self, by: &str) -> Result<(), FileError> {
        if self.is_live() && self.owner_id == by {
            Ok(())
        } else {
            Err(FileError::NotFound)
        }
    }

    fn decide(&self, command: FileCommand) -> Result<Vec<FileEvent>, FileError> {
        use FileCommand as C;
        use FileEvent as E;
        match command {
            C::Store {
                file_id,
                owner_id,
                name,
                size,
                content_type,
                sha256,
                at,
            } => {
                if !self.file_id.is_empty() {
                    return Err(FileError::Exists);
                }
                Declared::check(&owner_id, &name, size, &content_type)?;
                check_sha256("sha256", &sha256)?;
                Ok(vec![E::FileStored {
                    file_id,
                    owner_id,
                    name,
                    size,
                    content_type,
                    sha256,
                    stored_at: at,
                }])
            }
            C::Rename { name, by } => {
                self.owned_by(&by)?;
                check_name(&name)?;
                if name == self.name {
                    return Ok(vec![]);
                }
                Ok(vec![E::FileRenamed { name }])
            }
            C::Delete { by, at } => {
                self.owned_by(&by)?;
                Ok(vec![E::FileDeleted { deleted_at: at }])
            }
        }
    }
}

impl AggregateKind for File {
    const CONTEXT: &'static str = "files";
}

chronicle_schemas::decided_aggregate!(File: "file", FileCommand => FileEvent, FileError);

impl File {
    fn apply_event(&mut self, event: FileEvent) {
        match event {
            FileEvent::FileStored {
                file_id,
                owner_id,
                name,
                size,
                content_type,
                sha256,
                stored_at,
            } => {
                *self = Self {
                    file_id,
                    declared: Declared {
                        owner_id,
                        name,
                        size,
                        content_type,
                    },
                    sha256,
                    stored_at: Some(stored_at),
                    deleted: false,
                };
            }
            FileEvent::FileRenamed { name } => self.declared.name = name,
            FileEvent::FileDeleted { .. } => self.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use FileCommand as C;
    use FileEvent as E;

    type Given = TestFramework<File>;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("a valid time")
    }

    fn hash() -> String {
        "ab".repeat(32)
    }

    fn store(name: &str) -> C {
        C::Store {
            file_id: "f1".into(),
            owner_id: "alice".into(),
            name: name.into(),
            size: 10,
            content_type: "text/plain".into(),
            sha256: hash(),
            at: at(),
        }
    }

    fn stored() -> E {
        E::FileStored {
            file_id: "f1".into(),
            owner_id: "alice".into(),
            name: "a.txt".into(),
            size: 10,
            content_type: "text/plain".into(),
            sha256: hash(),
            stored_at: at(),
        }
    }

    #[test]
    fn a_file_is_stored_once_with_valid_metadata() {
        Given::with(())
            .given_no_previous_events()
            .when(store("a.txt"))
            .then_expect_events(vec![stored()]);
        Given::with(())
            .given(vec![stored()])
            .when(store("a.txt"))
            .then_expect_error(FileError::Exists);
        for name in ["../x", "a\u{0}", ""] {
            let refused = Given::with(())
                .given_no_previous_events()
                .when(store(name))
                .inspect_result();
            assert!(
                matches!(refused, Err(FileError::Invalid(ref i)) if i.field == "name"),
                "{name:?}: {refused:?}"
            );
        }
        let mut bad_hash = store("a.txt");
        if let C::Store { sha256, .. } = &mut bad_hash {
            *sha256 = "../../etc".into();
        }
        assert!(matches!(
            Given::with(()).given_no_previous_events().when(bad_hash).inspect_result(),
            Err(FileError::Invalid(ref i)) if i.field == "sha256"
        ));
    }

    #[test]
    fn only_the_owner_renames_or_deletes_and_a_deleted_file_is_gone() {
        Given::with(())
            .given(vec![stored()])
            .when(C::Rename {
                name: "b.txt".into(),
                by: "alice".into(),
            })
            .then_expect_events(vec![E::FileRenamed {
                name: "b.txt".into(),
            }]);
        Given::with(())
            .given(vec![stored()])
            .when(C::Rename {
                name: "a.txt".into(),
                by: "alice".into(),
            })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![stored()])
            .when(C::Rename {
                name: "b.txt".into(),
                by: "mallory".into(),
            })
            .then_expect_error(FileError::NotFound);
        Given::with(())
            .given(vec![stored()])
            .when(C::Delete {
                by: "mallory".into(),
                at: at(),
            })
            .then_expect_error(FileError::NotFound);
        Given::with(())
            .given(vec![stored()])
            .when(C::Delete {
                by: "alice".into(),
                at: at(),
            })
            .then_expect_events(vec![E::FileDeleted { deleted_at: at() }]);
        Given::with(())
            .given(vec![stored(), E::FileDeleted { deleted_at: at() }])
            .when(C::Delete {
                by: "alice".into(),
                at: at(),
            })
            .then_expect_error(FileError::NotFound);
        Given::with(())
            .given_no_previous_events()
            .when(C::Delete {
                by: "alice".into(),
                at: at(),
            })
            .then_expect_error(FileError::NotFound);
    }
}
