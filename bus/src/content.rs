//! Content-addressed bytes in the JetStream object store (bucket `files`, replicated like the
//! rest of JetStream; no other server to run).
//!
//! An object's name is the lowercase hex SHA-256 of its bytes, so identical bytes are stored
//! once however many files point at them. Bytes are streamed, never held whole: they are
//! hashed on their way into a scratch file (the hash names the object and is known only at
//! the end), and the scratch file is streamed into the object store unless those bytes are
//! already there.

use std::path::PathBuf;

use async_nats::jetstream::{self, object_store};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::BusError;

/// The object store bucket of file bytes.
pub const FILES_BUCKET: &str = "files";

/// Why bytes were not stored or read.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// More bytes came than the caller allows.
    #[error("more than {limit} bytes")]
    TooLarge { limit: u64 },
    /// Reading the bytes in, or the scratch file, failed.
    #[error("reading or buffering the bytes: {0}")]
    Io(#[from] std::io::Error),
    #[error("the object store: {0}")]
    Store(String),
}

/// What [`ContentStore::put`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Lowercase hex SHA-256 of the bytes: the object's name.
    pub sha256: String,
    pub size: u64,
    /// The same bytes were stored already; nothing was written.
    pub deduplicated: bool,
}

/// The `files` bucket.
#[derive(Clone)]
pub struct ContentStore {
    store: object_store::ObjectStore,
    scratch: PathBuf,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore")
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

fn store_error(e: impl std::fmt::Display) -> ContentError {
    ContentError::Store(e.to_string())
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

impl ContentStore {
    /// Opens (creating if needed, with `replicas` replicas) the bucket; incoming bytes are
    /// buffered in scratch files under `scratch`.
    ///
    /// # Errors
    /// When JetStream refuses.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        scratch: impl Into<PathBuf>,
    ) -> Result<Self, BusError> {
        let store = match js.get_object_store(FILES_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: FILES_BUCKET.to_owned(),
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| BusError::Request {
                    context: "creating the files bucket",
                    detail: e.to_string(),
                })?,
        };
        Ok(Self {
            store,
            scratch: scratch.into(),
        })
    }

    /// Stores the bytes `reader` gives, at most `limit` of them.
    ///
    /// # Errors
    /// [`ContentError::TooLarge`] past `limit` (nothing is stored), reading failures, the
    /// object store's.
    pub async fn put(
        &self,
        reader: &mut (impl AsyncRead + Unpin),
        limit: u64,
    ) -> Result<Stored, ContentError> {
        let scratch = tempfile::NamedTempFile::new_in(&self.scratch)?;
        let mut buffered = tokio::fs::File::from_std(scratch.reopen()?);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > limit {
                return Err(ContentError::TooLarge { limit });
            }
            hasher.update(&chunk[..n]);
            buffered.write_all(&chunk[..n]).await?;
        }
        buffered.flush().await?;
        drop(buffered);
        let sha256 = hex(&hasher.finalize());
        if self.contains(&sha256).await? {
            return Ok(Stored {
                sha256,
                size,
                deduplicated: true,
            });
        }
        let mut from_scratch = tokio::fs::File::open(scratch.path()).await?;
        self.store
            .put(sha256.as_str(), &mut from_scratch)
            .await
            .map_err(store_error)?;
        Ok(Stored {
            sha256,
            size,
            deduplicated: false,
        })
    }

    /// Stores a part of something larger under `name` (an upload's chunk, named
    /// `chunk.<upload>.<index>`), replacing what was there: its size. Parts are not
    /// content-addressed; [`ContentStore::put`] hashes the whole once it is complete.
    ///
    /// # Errors
    /// [`ContentError::TooLarge`] past `limit` (nothing stays under `name`), reading
    /// failures, the object store's.
    pub async fn put_part(
        &self,
        name: &str,
        reader: &mut (impl AsyncRead + Unpin),
        limit: u64,
    ) -> Result<u64, ContentError> {
        let mut bounded = reader.take(limit + 1);
        let info = self
            .store
            .put(name, &mut bounded)
            .await
            .map_err(store_error)?;
        let size = info.size as u64;
        if size > limit {
            self.delete(name).await?;
            return Err(ContentError::TooLarge { limit });
        }
        Ok(size)
    }

    /// Whether the bytes named `sha256` are stored.
    ///
    /// # Errors
    /// The object store's, but "not found".
    pub async fn contains(&self, sha256: &str) -> Result<bool, ContentError> {
        match self.store.info(sha256).await {
            Ok(info) => Ok(!info.deleted),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    /// The bytes named `sha256`, as a reader, if they are stored.
    ///
    /// # Errors
    /// The object store's, but "not found".
    pub async fn get(&self, sha256: &str) -> Result<Option<object_store::Object>, ContentError> {
        match self.store.get(sha256).await {
            Ok(object) => Ok(Some(object)),
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Removes the bytes named `sha256` (nothing when they are not stored).
    ///
    /// # Errors
    /// The object store's, but "not found".
    pub async fn delete(&self, sha256: &str) -> Result<(), ContentError> {
        match self.store.delete(sha256).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hex;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(hex(&[]), "");
    }
}
