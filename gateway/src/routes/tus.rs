//! `/api/v1/files/tus` (the API contract, Files): the tus 1.0 resumable upload protocol, so existing
//! tus clients work unchanged. Core (`HEAD`, `PATCH`, `OPTIONS`) and the extensions
//! `creation`, `creation-with-upload`, `expiration`, `checksum` (`sha1`, `sha256`) and
//! `termination`.
//!
//! Each `PATCH` is streamed into an object-store part of its own and recorded as a segment
//! of the upload at the offset it was sent for; the bytes of a request cut half way are
//! kept (the client resumes from the offset `HEAD` gives), unless it carried a checksum,
//! which a cut request cannot match. When the last byte is in, the segments are named by
//! their hash as the new file's bytes (the file id is the upload id, in the final
//! response's `Chronicle-File-Id`). The hash is computed on the way in while one process
//! receives the upload in order, and by reading the segments back otherwise.

use axum::{
    body::Body,
    extract::{DefaultBodyLimit, Request, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use chronicle_bus::{Blob, Part};
use chronicle_commands::CommandContext;
use chronicle_files::{
    check_content_type, check_name, FileCommand, TusCommand, TusError, TusUpload, MAX_FILE_SIZE,
};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sha1::Digest as _;

use super::{
    files::content_error,
    incoming::{
        checksum_mismatch, forget_hash, keep_hash, take_hash, Checksum, Incoming,
        CHECKSUM_ALGORITHMS,
    },
    uploads::{once_per_upload, store_file},
    Routes,
};
use crate::{
    error::{ApiError, FieldError},
    extract::{ApiPath, Caller},
    state::AppState,
};

const TUS_VERSION: &str = "1.0.0";
const EXTENSIONS: &str = "creation,creation-with-upload,expiration,checksum,termination";
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// The response header naming the file a finished upload became.
const FILE_ID: &str = "chronicle-file-id";

/// This module's routes; every answer carries `Tus-Resumable`.
pub(super) fn routes() -> Routes {
    documented![create, options, status, append, terminate, options_upload]
        // A request carries at most what is left of a declared length, checked as it streams.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(tus_headers))
}

/// `Tus-Resumable` on every answer; `Tus-Version` on a 412 (a version we do not speak).
async fn tus_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    if response.status() == StatusCode::PRECONDITION_FAILED {
        response
            .headers_mut()
            .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    }
    response
}

/// `OPTIONS`: what this server speaks.
/// `OPTIONS` on an upload: the same capabilities as on the creation route.
#[utoipa::path(options, path = "/api/v1/files/tus/{id}", tag = "files", operation_id = "tus_options_upload", summary = "tus 1.0: the server's capabilities", params(("id" = String, Path)), responses((status = 204, description = "204"), crate::schema::Problems))]
pub(crate) async fn options_upload() -> Response {
    options().await
}

#[utoipa::path(options, path = "/api/v1/files/tus", tag = "files", operation_id = "tus_options", summary = "tus 1.0: the server's capabilities", responses((status = 204, description = "204 with Tus-Version, Tus-Extension, Tus-Max-Size"), crate::schema::Problems))]
pub(crate) async fn options() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            ("tus-version", TUS_VERSION.to_owned()),
            ("tus-extension", EXTENSIONS.to_owned()),
            ("tus-max-size", MAX_FILE_SIZE.to_string()),
            ("tus-checksum-algorithm", CHECKSUM_ALGORITHMS.to_owned()),
        ],
    )
        .into_response()
}

/// 412 unless the request speaks tus 1.0.0.
fn resumable(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.get("tus-resumable").and_then(|v| v.to_str().ok()) == Some(TUS_VERSION) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "tus_version_unsupported",
            format!("send Tus-Resumable: {TUS_VERSION}"),
        ))
    }
}

fn bad_header(name: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("bad_header", format!("{name}: {detail}"))
}

/// A header holding a whole number of bytes.
fn length_header(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad_header(name, "a whole number of bytes"))
        })
        .transpose()
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs (a key alone is allowed).
fn metadata(headers: &HeaderMap) -> Result<Vec<(String, String)>, ApiError> {
    let Some(raw) = headers.get("upload-metadata") else {
        return Ok(Vec::new());
    };
    let raw = raw
        .to_str()
        .map_err(|_| bad_header("Upload-Metadata", "ASCII"))?;
    let mut pairs = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| bad_header("Upload-Metadata", format!("{key}: base64 of UTF-8")))?;
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

fn http_date(at: DateTime<Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn header_value(value: impl AsRef<str>) -> HeaderValue {
    HeaderValue::from_str(value.as_ref()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `POST /api/v1/files/tus`: 201 with the upload's `Location`; with a body
/// (`creation-with-upload`), its bytes are the first `PATCH`.
#[utoipa::path(post, path = "/api/v1/files/tus", tag = "files", operation_id = "tus_create", summary = "tus 1.0: create an upload (Upload-Length, Upload-Metadata)", responses((status = 201, description = "201 with Location"), crate::schema::Problems))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    resumable(&headers)?;
    if headers.contains_key("upload-defer-length") {
        return Err(bad_header(
            "Upload-Defer-Length",
            "not supported: declare Upload-Length",
        ));
    }
    let size = length_header(&headers, "upload-length")?
        .ok_or_else(|| bad_header("Upload-Length", "required"))?;
    if size > MAX_FILE_SIZE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a file is at most {MAX_FILE_SIZE} bytes"),
        ));
    }
    let metadata = metadata(&headers)?;
    let find = |keys: &[&str]| {
        metadata
            .iter()
            .find(|(k, _)| keys.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
    };
    let name = find(&["filename", "name"]).unwrap_or_else(|| "upload".to_owned());
    let content_type = find(&["filetype", "type", "content_type"])
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    ApiError::check(FieldError::collect([
        check_name(&name),
        check_content_type(&content_type),
    ]))?;
    let id = uuid::Uuid::now_v7().to_string();
    let expires_at = super::uploads::expiry(&state);
    let ctx = super::respond::caller_context(&caller);
    state
        .commands
        .execute::<TusUpload>(
            &id,
            TusCommand::Create {
                upload_id: id.clone(),
                owner_id: caller.user_id.clone(),
                name,
                size,
                content_type,
                expires_at,
            },
            &(),
            &ctx,
        )
        .await?;
    let mut response = StatusCode::CREATED.into_response();
    let out = response.headers_mut();
    out.insert(
        header::LOCATION,
        header_value(format!("/api/v1/files/tus/{id}")),
    );
    out.insert("upload-expires", header_value(http_date(expires_at)));
    let carries_bytes = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == OFFSET_OCTET_STREAM.as_bytes());
    if carries_bytes {
        let upload = state.commands.fresh_state::<TusUpload>(&id).await?.state;
        let (offset, file) = receive(&state, &caller, &id, upload, 0, &headers, body).await?;
        let out = response.headers_mut();
        out.insert("upload-offset", HeaderValue::from(offset));
        if let Some(file) = file {
            out.insert(HeaderName::from_static(FILE_ID), header_value(file));
        }
    }
    Ok(response)
}

/// The caller's live tus upload `id`: 404 for anyone else's or a terminated one, 410 once
/// expired (or past its expiry).
async fn owned(state: &AppState, id: &str, user_id: &str) -> Result<TusUpload, ApiError> {
    let id = super::respond::uuid_id(id, "upload")?;
    let upload = state.commands.fresh_state::<TusUpload>(id).await?.state;
    if !upload.exists() || upload.owner_id() != user_id || upload.is_terminated() {
        return Err(ApiError::not_found(format!("no upload with id {id}")));
    }
    let past = upload.expires_at().is_some_and(|at| at <= Utc::now());
    if upload.finished().is_none() && (upload.is_expired() || past) {
        return Err(ApiError::new(
            StatusCode::GONE,
            "upload_expired",
            "the upload expired",
        ));
    }
    Ok(upload)
}

/// The headers describing `upload`.
fn describe(response: &mut Response, id: &str, upload: &TusUpload) {
    let out = response.headers_mut();
    out.insert("upload-offset", HeaderValue::from(upload.offset()));
    out.insert("upload-length", HeaderValue::from(upload.size()));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(at) = upload.expires_at() {
        out.insert("upload-expires", header_value(http_date(at)));
    }
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    out.insert(
        "upload-metadata",
        header_value(format!(
            "filename {},filetype {}",
            b64(upload.name()),
            b64(upload.content_type())
        )),
    );
    if upload.finished().is_some() {
        out.insert(HeaderName::from_static(FILE_ID), header_value(id));
    }
}

/// `HEAD /api/v1/files/tus/{id}`: where the upload stands (`Upload-Offset`). An upload whose
/// bytes are all in but that did not become a file (its process died in between) becomes
/// one now.
#[utoipa::path(head, path = "/api/v1/files/tus/{id}", tag = "files", operation_id = "tus_status", summary = "tus 1.0: the offset held", params(("id" = String, Path)), responses((status = 200, description = "200 with Upload-Offset"), crate::schema::Problems))]
pub async fn status(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    resumable(&headers)?;
    let mut upload = owned(&state, &id, &caller.user_id).await?;
    if upload.finished().is_none() && upload.offset() == upload.size() {
        finish(&state, &caller, &id, None).await?;
        upload = state.commands.fresh_state::<TusUpload>(&id).await?.state;
    }
    let mut response = StatusCode::OK.into_response();
    describe(&mut response, &id, &upload);
    Ok(response)
}

/// `PATCH /api/v1/files/tus/{id}`: bytes at `Upload-Offset`; 204 with the new offset.
#[utoipa::path(patch, path = "/api/v1/files/tus/{id}", tag = "files", operation_id = "tus_append", summary = "tus 1.0: bytes at the offset held", params(("id" = String, Path)), request_body(content = crate::schema::Binary, content_type = "application/offset+octet-stream", description = "bytes from Upload-Offset"), responses((status = 204, description = "204 with Upload-Offset"), crate::schema::Problems))]
pub async fn append(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    resumable(&headers)?;
    if headers
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes() != OFFSET_OCTET_STREAM.as_bytes())
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("a PATCH carries {OFFSET_OCTET_STREAM}"),
        ));
    }
    let offset = length_header(&headers, "upload-offset")?
        .ok_or_else(|| bad_header("Upload-Offset", "required"))?;
    let upload = owned(&state, &id, &caller.user_id).await?;
    let (offset, file) = receive(&state, &caller, &id, upload, offset, &headers, body).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let upload = state.commands.fresh_state::<TusUpload>(&id).await?.state;
    describe(&mut response, &id, &upload);
    response
        .headers_mut()
        .insert("upload-offset", HeaderValue::from(offset));
    if let Some(file) = file {
        response
            .headers_mut()
            .insert(HeaderName::from_static(FILE_ID), header_value(file));
    }
    Ok(response)
}

/// `DELETE /api/v1/files/tus/{id}`: the upload ends and its bytes go.
#[utoipa::path(delete, path = "/api/v1/files/tus/{id}", tag = "files", operation_id = "tus_terminate", summary = "tus 1.0: end the upload", params(("id" = String, Path)), responses((status = 204, description = "204"), crate::schema::Problems))]
pub async fn terminate(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    resumable(&headers)?;
    let upload = owned(&state, &id, &caller.user_id).await?;
    state
        .commands
        .execute::<TusUpload>(
            &id,
            TusCommand::Terminate {
                by: caller.user_id.clone(),
            },
            &(),
            &super::respond::caller_context(&caller),
        )
        .await?;
    state.content().await?.drop_parts(&parts(&upload)).await;
    forget_hash(&state, &id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The object-store parts of `upload`'s bytes, in order.
fn parts(upload: &TusUpload) -> Vec<Part> {
    upload
        .segments()
        .iter()
        .map(|s| Part {
            name: s.part.clone(),
            size: s.length,
        })
        .collect()
}

/// Stores a request's bytes as the upload's next segment: the new offset, and the file id
/// once the upload is whole.
async fn receive(
    state: &AppState,
    caller: &Caller,
    id: &str,
    upload: TusUpload,
    offset: u64,
    headers: &HeaderMap,
    body: Body,
) -> Result<(u64, Option<String>), ApiError> {
    if offset == upload.size() && offset == upload.offset() {
        // Whole already: a last request sent again, or one whose process died before the
        // bytes became a file (they become it now).
        if upload.finished().is_none() {
            finish(state, caller, id, None).await?;
        }
        return Ok((offset, Some(id.to_owned())));
    }
    if offset != upload.offset() {
        return Err(
            chronicle_commands::CommandError::Rejected(TusError::OffsetMismatch {
                expected: upload.offset(),
            })
            .into(),
        );
    }
    let checksum = Checksum::parse(headers)?;
    let content = state.content().await?;
    let part = format!("tus.{id}.{}", uuid::Uuid::now_v7().simple());
    let mut incoming = Incoming {
        inner: tokio_util::io::StreamReader::new(
            body.into_data_stream().map_err(std::io::Error::other),
        ),
        checksum,
        whole: take_hash(state, id, offset),
        keep_cut: true,
        cut: false,
    };
    let left = upload.size() - offset;
    let length = content
        .put_part(&part, &mut incoming, left)
        .await
        .map_err(content_error)?;
    let Incoming {
        checksum, whole, ..
    } = incoming;
    if let Some(checksum) = checksum {
        if !checksum.matches() {
            let _ = content.delete_object(&part).await;
            return Err(checksum_mismatch());
        }
    }
    if length == 0 {
        let _ = content.delete_object(&part).await;
        if let Some(whole) = whole {
            keep_hash(state, id, offset, whole);
        }
        return Ok((offset, None));
    }
    let stored = state
        .commands
        .execute::<TusUpload>(
            id,
            TusCommand::Store {
                offset,
                length,
                part: part.clone(),
                by: caller.user_id.clone(),
            },
            &(),
            &super::respond::caller_context(caller),
        )
        .await;
    if let Err(e) = stored {
        let _ = content.delete_object(&part).await;
        return Err(e.into());
    }
    let offset = offset + length;
    if offset < upload.size() {
        if let Some(whole) = whole {
            keep_hash(state, id, offset, whole);
        }
        return Ok((offset, None));
    }
    let sha256 = whole.map(|w| chronicle_bus::hex(&w.finalize()));
    finish(state, caller, id, sha256).await?;
    Ok((offset, Some(id.to_owned())))
}

/// Makes a whole upload a file (once per process at a time; on a task of its own, so a
/// cut request does not stop it), hashing its segments if the hash is not known.
async fn finish(
    state: &AppState,
    caller: &Caller,
    id: &str,
    sha256: Option<String>,
) -> Result<(), ApiError> {
    let work = {
        let (state, ctx, id, user_id) = (
            state.clone(),
            super::respond::caller_context(caller),
            id.to_owned(),
            caller.user_id.clone(),
        );
        async move { become_file(&state, ctx, &id, &user_id, sha256).await }
    };
    once_per_upload(state, id, work).await
}

async fn become_file(
    state: &AppState,
    ctx: CommandContext,
    id: &str,
    user_id: &str,
    sha256: Option<String>,
) -> Result<(), ApiError> {
    forget_hash(state, id);
    let upload = state.commands.fresh_state::<TusUpload>(id).await?.state;
    let parts = parts(&upload);
    let sha256 = match (upload.finished(), sha256) {
        (Some((_, known)), _) => known.to_owned(),
        (None, Some(computed)) => computed,
        (None, None) => {
            let blob = Blob {
                size: upload.offset(),
                parts: parts.clone(),
            };
            state
                .content()
                .await?
                .hash(&blob)
                .await
                .map_err(content_error)?
        }
    };
    let file = FileCommand::Store {
        file_id: id.to_owned(),
        owner_id: upload.owner_id().to_owned(),
        name: upload.name().to_owned(),
        size: upload.size(),
        content_type: upload.content_type().to_owned(),
        sha256: sha256.clone(),
        at: Utc::now(),
    };
    store_file(state, &ctx, file, &parts).await?;
    state
        .commands
        .execute::<TusUpload>(
            id,
            TusCommand::Finish {
                file_id: id.to_owned(),
                sha256,
                by: user_id.to_owned(),
            },
            &(),
            &ctx,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::incoming::tests::headers;

    #[test]
    fn metadata_is_base64_pairs_and_anything_else_is_refused() {
        let got = metadata(&headers(&[(
            "upload-metadata",
            "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential, filetype YXBwbGljYXRpb24vcGRm",
        )]))
        .unwrap();
        assert_eq!(
            got,
            vec![
                ("filename".into(), "world_domination_plan.pdf".into()),
                ("is_confidential".into(), String::new()),
                ("filetype".into(), "application/pdf".into()),
            ]
        );
        assert!(metadata(&headers(&[("upload-metadata", "filename !!!")])).is_err());
        // Valid base64 of bytes that are not UTF-8.
        assert!(metadata(&headers(&[("upload-metadata", "filename //79")])).is_err());
    }

    #[test]
    fn lengths_are_plain_whole_numbers() {
        for bad in ["-1", "1e3", " 5", "", "18446744073709551616", "0x10"] {
            assert!(
                length_header(&headers(&[("upload-length", bad)]), "upload-length").is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            length_header(&headers(&[("upload-length", "42")]), "upload-length").unwrap(),
            Some(42)
        );
        assert_eq!(
            length_header(&HeaderMap::new(), "upload-length").unwrap(),
            None
        );
    }
}
