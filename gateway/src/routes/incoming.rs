//! A request body on its way into the object store: hashed for a checksum it declares and
//! for the running SHA-256 of the upload it continues (kept per upload between requests,
//! while one process receives an upload's bytes in order, so completing it need not read
//! them back).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use sha1::Digest as _;
use tokio::io::{AsyncRead, ReadBuf};

use crate::{error::ApiError, state::AppState};

/// The checksum algorithms a request may declare.
pub(super) const CHECKSUM_ALGORITHMS: &str = "sha1,sha256";

fn bad_header(name: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("bad_header", format!("{name}: {detail}"))
}

/// The answer to bytes that do not match their declared checksum (tus: 460).
pub(super) fn checksum_mismatch() -> ApiError {
    ApiError::new(
        StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
        "checksum_mismatch",
        "the bytes do not match Upload-Checksum; nothing of them was kept",
    )
}

/// A checksum a request declared (`Upload-Checksum: <algorithm> <base64>`).
pub(super) enum Checksum {
    Sha1(sha1::Sha1, Vec<u8>),
    Sha256(sha2::Sha256, Vec<u8>),
}

impl Checksum {
    pub(super) fn parse(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let Some(raw) = headers.get("upload-checksum") else {
            return Ok(None);
        };
        let raw = raw
            .to_str()
            .map_err(|_| bad_header("Upload-Checksum", "ASCII"))?;
        let (algorithm, digest) = raw
            .split_once(' ')
            .ok_or_else(|| bad_header("Upload-Checksum", "<algorithm> <base64 digest>"))?;
        let digest = base64::engine::general_purpose::STANDARD
            .decode(digest.trim())
            .map_err(|_| bad_header("Upload-Checksum", "a base64 digest"))?;
        match algorithm {
            "sha1" => Ok(Some(Self::Sha1(sha1::Sha1::new(), digest))),
            "sha256" => Ok(Some(Self::Sha256(sha2::Sha256::new(), digest))),
            other => Err(bad_header(
                "Upload-Checksum",
                format!("{other:?} is not supported (use {CHECKSUM_ALGORITHMS})"),
            )),
        }
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha1(hasher, _) => hasher.update(bytes),
            Self::Sha256(hasher, _) => hasher.update(bytes),
        }
    }

    pub(super) fn matches(self) -> bool {
        match self {
            Self::Sha1(hasher, declared) => hasher.finalize().as_slice() == declared,
            Self::Sha256(hasher, declared) => hasher.finalize().as_slice() == declared,
        }
    }
}

/// The request body on its way into the object store: hashed for its checksum and for the
/// whole upload's SHA-256; without a checksum, a body cut half way ends there (what came is
/// kept) instead of failing.
pub(super) struct Incoming<R> {
    pub(super) inner: R,
    pub(super) checksum: Option<Checksum>,
    pub(super) whole: Option<sha2::Sha256>,
    /// Whether a body cut half way ends there (what came is kept) instead of failing; never
    /// with a checksum, which a cut body cannot match.
    pub(super) keep_cut: bool,
    pub(super) cut: bool,
}

impl<R: AsyncRead + Unpin> AsyncRead for Incoming<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if let Some(checksum) = this.checksum.as_mut() {
                    checksum.update(new);
                }
                if let Some(whole) = this.whole.as_mut() {
                    whole.update(new);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) if this.keep_cut && this.checksum.is_none() => {
                tracing::info!(error = %e, "an upload request was cut; keeping what came");
                this.cut = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Takes the running SHA-256 of upload `id` if it stands at `offset` in this process (a
/// new one at offset 0).
pub(super) fn take_hash(state: &AppState, id: &str, offset: u64) -> Option<sha2::Sha256> {
    let mut hashes = state
        .files()
        .running_hashes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match hashes.remove(id) {
        Some((at, hasher)) if at == offset => Some(hasher),
        _ if offset == 0 => Some(sha2::Sha256::new()),
        _ => None,
    }
}

pub(super) fn keep_hash(state: &AppState, id: &str, offset: u64, hasher: sha2::Sha256) {
    let mut hashes = state
        .files()
        .running_hashes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Bounded: when full (abandoned uploads are never finished), it starts again empty;
    // an upload whose hash was dropped is hashed by reading it back when it finishes.
    if hashes.len() >= 10_000 {
        hashes.clear();
    }
    hashes.insert(id.to_owned(), (offset, hasher));
}

pub(super) fn forget_hash(state: &AppState, id: &str) {
    state
        .files()
        .running_hashes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(id);
}

#[cfg(test)]
pub(super) mod tests {
    use axum::http::HeaderValue;

    use super::*;

    /// Headers from name and value pairs.
    pub(in crate::routes) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn checksums_name_a_known_algorithm_and_a_base64_digest() {
        let parse = |v: &str| Checksum::parse(&headers(&[("upload-checksum", v)]));
        assert!(parse("md5 AAAA").is_err());
        assert!(parse("sha1").is_err());
        assert!(parse("sha1 ***").is_err());
        // SHA-1 of "hello".
        let mut sha1 = parse("sha1 qvTGHdzF6KLavt4PO0gs2a6pQ00=").unwrap().unwrap();
        sha1.update(b"hello");
        assert!(sha1.matches());
        let mut wrong = parse("sha1 qvTGHdzF6KLavt4PO0gs2a6pQ00=").unwrap().unwrap();
        wrong.update(b"hellO");
        assert!(!wrong.matches());
    }
}
