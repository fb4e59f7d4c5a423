//! Content-addressed bytes in the JetStream object store (bucket `files`, replicated like the
//! rest of JetStream; no other server to run).
//!
//! Bytes are written once, as *parts* (objects of their own: `part.<uuid>` for a whole
//! upload, `chunk.<upload>.<n>` for an upload sent in pieces), and hashed on their way in.
//! The bytes' name, the lowercase hex SHA-256, is known only at the end: it then becomes a
//! small *manifest* object listing the parts in order (description [`MANIFEST`]). Nothing
//! is copied to find its name, so an upload costs one write, not two; identical bytes keep
//! one manifest, and the parts of a second copy are dropped. An object under a hash
//! name without the manifest description is the bytes themselves (how they were kept
//! before manifests).
//!
//! Reads go part by part, one object-store chunk at a time (a direct get each), so neither
//! a download nor hashing holds more than one chunk, and a `Range` skips whole parts.

use std::collections::HashMap;

use async_nats::jetstream::{self, object_store, stream::Stream as JsStream};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::BusError;

mod read;

/// The object store bucket of file bytes.
pub const FILES_BUCKET: &str = "files";
/// The description that marks a manifest.
pub const MANIFEST: &str = "chronicle/parts-v1";
/// The size of the object-store messages bytes are written in. Each is written to disk
/// before it is acknowledged (`sync_interval: always`), so fewer, larger messages are much
/// faster than the client's default of 128 KiB; it stays well under `max_payload`.
pub const WRITE_CHUNK: usize = 1024 * 1024;
/// How many chunks a read asks for ahead of the one it gives (each up to [`WRITE_CHUNK`]).
const READ_AHEAD: usize = 4;
/// The largest manifest read (100,000 parts of the longest names fit).
const MAX_MANIFEST: u64 = 16 * 1024 * 1024;

/// Why bytes were not stored or read.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// More bytes came than the caller allows.
    #[error("more than {limit} bytes")]
    TooLarge { limit: u64 },
    /// Reading the bytes in failed.
    #[error("reading the bytes: {0}")]
    Io(#[from] std::io::Error),
    /// The object store failed, or holds something it should not (its source says which).
    #[error("the object store")]
    Store(#[source] crate::NatsError),
}

/// What [`ContentStore::put`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Lowercase hex SHA-256 of the bytes: their name.
    pub sha256: String,
    pub size: u64,
    /// The same bytes were stored already; nothing stays of this copy.
    pub deduplicated: bool,
}

/// Bytes [`ContentStore::write`] wrote, not yet named by their hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub sha256: String,
    pub size: u64,
    pub parts: Vec<Part>,
}

/// One part of some bytes: an object, and its length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub name: String,
    pub size: u64,
}

/// An object as [`ContentStore::objects`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub name: String,
    pub manifest: bool,
    /// Seconds since the epoch.
    pub written_at: i64,
}

/// What [`ContentStore::seal`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    /// The parts are the bytes of that hash now.
    New,
    /// These very parts already were.
    Already,
    /// Other parts hold those bytes: the given parts are not needed (the caller drops them).
    Elsewhere,
}

/// The parts of stored bytes, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub size: u64,
    pub parts: Vec<Part>,
}

/// The `files` bucket.
#[derive(Clone)]
pub struct ContentStore {
    store: object_store::ObjectStore,
    stream: JsStream,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore").finish_non_exhaustive()
    }
}

fn store_error(e: impl Into<crate::NatsError>) -> ContentError {
    ContentError::Store(e.into())
}

/// The object an upload's part `index` is kept in (a chunk, or a tus segment).
pub fn upload_part(upload_id: &str, index: u64) -> String {
    format!("chunk.{upload_id}.{index}")
}

/// The object a thumbnail of the bytes named `sha256` is kept in, `box_name` naming its box
/// (`chronicle_files::ThumbnailBox::suffix`).
pub fn thumbnail_object(sha256: &str, box_name: &str) -> String {
    format!("thumb.{sha256}.{box_name}")
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The hex SHA-256 in an object's digest (`SHA-256=<base64url>`).
fn digest_hex(info: &object_store::ObjectInfo) -> Result<String, ContentError> {
    let digest = info
        .digest
        .as_deref()
        .and_then(|d| d.strip_prefix("SHA-256="))
        .ok_or_else(|| store_error(format!("object {} has no digest", info.name)))?;
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(digest)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(digest))
        .map_err(store_error)?;
    Ok(hex(&raw))
}

/// A reader that gives whole [`WRITE_CHUNK`]s (but the last): the object store writes
/// one message per read, and a network body comes in pieces of a few KiB.
struct Filled<'a, R> {
    inner: &'a mut R,
    buffer: BytesMut,
    done: bool,
}

impl<R: AsyncRead + Unpin> AsyncRead for Filled<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        while !this.done && this.buffer.len() < WRITE_CHUNK {
            let before = this.buffer.len();
            this.buffer.reserve(WRITE_CHUNK - before);
            match tokio_util::io::poll_read_buf(
                std::pin::Pin::new(&mut *this.inner),
                cx,
                &mut this.buffer,
            ) {
                Poll::Ready(Ok(0)) if this.buffer.len() == before => this.done = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = this.buffer.len().min(out.remaining());
        out.put_slice(&this.buffer.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl ContentStore {
    /// Opens (creating if needed, with `replicas` replicas) the bucket.
    ///
    /// # Errors
    /// When JetStream refuses.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, BusError> {
        let store = match js.get_object_store(FILES_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: FILES_BUCKET.to_owned(),
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(BusError::request("creating the files bucket"))?,
        };
        let stream = js
            .get_stream(format!("OBJ_{FILES_BUCKET}"))
            .await
            .map_err(BusError::request("opening the files bucket's stream"))?;
        Ok(Self { store, stream })
    }

    /// Writes the bytes `reader` gives, at most `limit` of them, as one part: what they
    /// are, not yet named by their hash ([`ContentStore::keep`] names them, after the
    /// caller claimed them).
    ///
    /// # Errors
    /// [`ContentError::TooLarge`] past `limit` (nothing is stored), reading failures, the
    /// object store's.
    pub async fn write(
        &self,
        reader: &mut (impl AsyncRead + Unpin),
        limit: u64,
    ) -> Result<Written, ContentError> {
        let name = format!("part.{}", uuid::Uuid::now_v7());
        let (size, sha256) = self.write_part(&name, reader, limit).await?;
        Ok(Written {
            sha256,
            size,
            parts: vec![Part { name, size }],
        })
    }

    /// Names written bytes by their hash, or drops them when those bytes are stored already.
    ///
    /// # Errors
    /// The object store's (the written part is dropped).
    pub async fn keep(&self, written: Written) -> Result<Stored, ContentError> {
        let deduplicated = match self.seal(&written.sha256, &written.parts).await {
            Ok(sealed) => sealed == Sealed::Elsewhere,
            Err(e) => {
                self.drop_parts(&written.parts).await;
                return Err(e);
            }
        };
        if deduplicated {
            self.drop_parts(&written.parts).await;
            metrics::counter!("chronicle_files_deduplicated_total").increment(1);
            metrics::counter!("chronicle_files_deduplicated_bytes_total").increment(written.size);
        }
        Ok(Stored {
            sha256: written.sha256,
            size: written.size,
            deduplicated,
        })
    }

    /// Stores a part of something larger under `name` (an upload's chunk), replacing what
    /// was there: its size. A part is not named by its hash; [`ContentStore::seal`] names
    /// the whole once it is complete.
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
        Ok(self.write_part(name, reader, limit).await?.0)
    }

    /// Writes `name` from `reader` in whole chunks: its size and hex SHA-256.
    async fn write_part(
        &self,
        name: &str,
        reader: &mut (impl AsyncRead + Unpin),
        limit: u64,
    ) -> Result<(u64, String), ContentError> {
        let mut bounded = reader.take(limit.saturating_add(1));
        let mut filled = Filled {
            inner: &mut bounded,
            buffer: BytesMut::with_capacity(WRITE_CHUNK),
            done: false,
        };
        let meta = object_store::ObjectMetadata {
            name: name.to_owned(),
            chunk_size: Some(WRITE_CHUNK),
            ..Default::default()
        };
        let written = self.store.put(meta, &mut filled).await;
        let info = match written {
            Ok(info) => info,
            Err(e) => {
                // A body cut half way leaves chunks without a name: remove what was written.
                let _ = self.delete_object(name).await;
                return Err(if e.kind() == object_store::PutErrorKind::ReadChunks {
                    ContentError::Io(std::io::Error::other(e.to_string()))
                } else {
                    store_error(e)
                });
            }
        };
        let size = info.size as u64;
        if size > limit {
            self.delete_object(name).await?;
            return Err(ContentError::TooLarge { limit });
        }
        Ok((size, digest_hex(&info)?))
    }

    /// Names `parts` (which hash, in order, to `sha256`) by that hash, unless bytes are
    /// stored under it already.
    ///
    /// Two copies of the same bytes sealed at once both write a manifest; the last one
    /// stays, and the other's parts are unreferenced (wasted space, never wrong bytes).
    ///
    /// # Errors
    /// The object store's.
    pub async fn seal(&self, sha256: &str, parts: &[Part]) -> Result<Sealed, ContentError> {
        if let Some(blob) = self.blob(sha256).await? {
            return Ok(if blob.parts == parts {
                Sealed::Already
            } else {
                Sealed::Elsewhere
            });
        }
        let blob = Blob {
            size: parts.iter().map(|p| p.size).sum(),
            parts: parts.to_vec(),
        };
        let manifest = serde_json::to_vec(&blob).map_err(store_error)?;
        let meta = object_store::ObjectMetadata {
            name: sha256.to_owned(),
            description: Some(MANIFEST.to_owned()),
            ..Default::default()
        };
        self.store
            .put(meta, &mut manifest.as_slice())
            .await
            .map_err(store_error)?;
        Ok(Sealed::New)
    }

    /// Removes parts no manifest needs (best effort: a part left behind is wasted space).
    pub async fn drop_parts(&self, parts: &[Part]) {
        for part in parts {
            if let Err(e) = self.delete_object(&part.name).await {
                tracing::warn!(part = %part.name, error = %crate::ErrorChain(&e), "a part was not removed");
            }
        }
    }

    /// Whether bytes are stored under `sha256`.
    ///
    /// # Errors
    /// The object store's, but "not found".
    pub async fn contains(&self, sha256: &str) -> Result<bool, ContentError> {
        Ok(self.info(sha256).await?.is_some())
    }

    async fn info(&self, name: &str) -> Result<Option<object_store::ObjectInfo>, ContentError> {
        match self.store.info(name).await {
            Ok(info) if !info.deleted => Ok(Some(info)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Removes the bytes named `sha256`, manifest first (a half-done removal leaves
    /// unreferenced parts, never a name without its bytes). Nothing when not stored.
    ///
    /// # Errors
    /// The object store's, but "not found".
    pub async fn delete(&self, sha256: &str) -> Result<(), ContentError> {
        let Some(blob) = self.blob(sha256).await? else {
            return Ok(());
        };
        self.delete_object(sha256).await?;
        for part in blob.parts.iter().filter(|p| p.name != sha256) {
            self.delete_object(&part.name).await?;
        }
        Ok(())
    }

    /// Every object in the bucket: its name, whether it is a manifest, and when it was
    /// written (seconds since the epoch). Reads the whole bucket's metadata: for sweeps.
    ///
    /// # Errors
    /// The object store's.
    pub async fn objects(&self) -> Result<Vec<StoredObject>, ContentError> {
        let mut list = self.store.list().await.map_err(store_error)?;
        let mut objects = Vec::new();
        while let Some(info) = list.try_next().await.map_err(store_error)? {
            if info.deleted {
                continue;
            }
            objects.push(StoredObject {
                manifest: info.description.as_deref() == Some(MANIFEST),
                written_at: info.modified.map_or(0, |at| at.unix_timestamp()),
                name: info.name,
            });
        }
        Ok(objects)
    }

    /// Removes one object (a part, a thumbnail); nothing when it is not there.
    ///
    /// # Errors
    /// The object store's, but "not found".
    pub async fn delete_object(&self, name: &str) -> Result<(), ContentError> {
        match self.store.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Stores a small derived object (a thumbnail) under `name`, whole.
    ///
    /// # Errors
    /// The object store's.
    pub async fn put_small(
        &self,
        name: &str,
        bytes: &[u8],
        metadata: HashMap<String, String>,
    ) -> Result<(), ContentError> {
        let meta = object_store::ObjectMetadata {
            name: name.to_owned(),
            chunk_size: Some(WRITE_CHUNK),
            metadata,
            ..Default::default()
        };
        self.store
            .put(meta, &mut &bytes[..])
            .await
            .map(|_| ())
            .map_err(store_error)
    }

    /// A small object whole, with its metadata, if it is there.
    ///
    /// # Errors
    /// [`ContentError::TooLarge`] when it is longer than `limit`; the object store's, but
    /// "not found".
    pub async fn get_small(
        &self,
        name: &str,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, HashMap<String, String>)>, ContentError> {
        let Some(info) = self.info(name).await? else {
            return Ok(None);
        };
        if info.size as u64 > limit {
            return Err(ContentError::TooLarge { limit });
        }
        let blob = Blob {
            size: info.size as u64,
            parts: vec![Part {
                name: name.to_owned(),
                size: info.size as u64,
            }],
        };
        let mut bytes = Vec::new();
        let mut read = std::pin::pin!(self.read(&blob, 0, blob.size));
        while let Some(chunk) = read.try_next().await? {
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some((bytes, info.metadata)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(hex(&[]), "");
    }

    #[tokio::test]
    async fn a_filled_reader_gives_whole_chunks_from_a_trickle() {
        // A reader giving 1000 bytes at a time comes out in WRITE_CHUNK pieces.
        let total = WRITE_CHUNK * 2 + 5;
        let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
        let mut trickle = tokio_util::io::StreamReader::new(futures::stream::iter(
            data.chunks(1000)
                .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        ));
        let mut filled = Filled {
            inner: &mut trickle,
            buffer: BytesMut::with_capacity(WRITE_CHUNK),
            done: false,
        };
        let mut reads = Vec::new();
        let mut all = Vec::new();
        loop {
            let mut buf = vec![0u8; WRITE_CHUNK];
            let n = filled.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            reads.push(n);
            all.extend_from_slice(&buf[..n]);
        }
        assert_eq!(reads, vec![WRITE_CHUNK, WRITE_CHUNK, 5]);
        assert!(all == data);
    }
}
