//! What a file, or an upload that becomes one, declares of itself.

use std::ops::Deref;

use chronicle_schemas::limits::Invalid;
use serde::{Deserialize, Serialize};

use crate::{check_content_type, check_name, check_size, valid_user_id};

/// Whose a file or upload is, its name, its size and its content type: declared when it
/// begins and checked then. [`crate::File`], [`crate::Upload`] and [`crate::TusUpload`] each
/// hold one, serialized flat among their own fields, and read as one (`file.name()`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared {
    pub(crate) owner_id: String,
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) content_type: String,
}

impl Declared {
    /// Checks what a new file or upload declares: a user id, a file name, a size and a
    /// content type within the limits.
    ///
    /// # Errors
    /// [`Invalid`] naming the first field that is not.
    pub(crate) fn check(
        owner_id: &str,
        name: &str,
        size: u64,
        content_type: &str,
    ) -> Result<(), Invalid> {
        if !valid_user_id(owner_id) {
            return Err(Invalid::new("owner_id", "a user id"));
        }
        check_name(name)?;
        check_size(size)?;
        check_content_type(content_type)
    }

    pub fn owner_id(&self) -> &str {
        &self.owner_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn content_type(&self) -> &str {
        &self.content_type
    }
}

/// Reads an aggregate's [`Declared`] fields as its own.
macro_rules! declares {
    ($($aggregate:ty),+) => {$(
        impl Deref for $aggregate {
            type Target = Declared;

            fn deref(&self) -> &Declared {
                &self.declared
            }
        }
    )+};
}

declares!(crate::File, crate::Upload, crate::TusUpload);

#[cfg(test)]
mod tests {
    use crate::{File, FileEvent};

    /// Snapshots taken before the fields moved into [`super::Declared`] still load, and new
    /// ones have the same shape.
    #[test]
    fn a_snapshot_keeps_its_flat_shape() {
        let mut file = File::default();
        cqrs_es::Aggregate::apply(
            &mut file,
            FileEvent::FileStored {
                file_id: "f1".into(),
                owner_id: "alice".into(),
                name: "a.txt".into(),
                size: 10,
                content_type: "text/plain".into(),
                sha256: "ab".repeat(32),
                stored_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            },
        );
        let json = serde_json::to_value(&file).unwrap();
        assert_eq!(json["owner_id"], "alice");
        assert_eq!(json["name"], "a.txt");
        assert_eq!(json["size"], 10);
        assert_eq!(json["content_type"], "text/plain");
        assert!(json.get("declared").is_none(), "{json}");
        let old = serde_json::json!({
            "file_id": "f1", "owner_id": "alice", "name": "a.txt", "size": 10,
            "content_type": "text/plain", "sha256": "ab".repeat(32),
            "stored_at": "2023-11-14T22:13:20Z", "deleted": false
        });
        assert_eq!(serde_json::from_value::<File>(old).unwrap(), file);
    }
}
