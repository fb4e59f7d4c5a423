//! `/api/v1/files` (the API contract, Files): upload (multipart), metadata, the bytes (streamed,
//! `Range`, `ETag`, `If-None-Match`), the caller's files, deletion. Only the owner sees a
//! file: anyone else gets 404, as for a file that does not exist.
//!
//! Bytes are streamed through: hashed into the object store on the way in
//! (`chronicle_bus::ContentStore`), read from it on the way out, never held whole.
//!
//! Share links serve a file without authentication until they expire or are revoked; a
//! link's token is given out once and never stored (the `share` aggregate's id is its hash).
//!
//! A file attached to a chat message may be read (not changed) by that room's members.
//!
//! Chunked, resumable uploads are in `uploads.rs`.
//!
//! Not built yet (issue 12): tus, thumbnails,
//! and removing bytes once no live file refers to them (the `file_metadata` read model
//! counts the references; nothing acts on a count of zero yet).

use axum::{
    body::Body,
    extract::{multipart::MultipartRejection, DefaultBodyLimit, Multipart},
    http::{header, HeaderMap, HeaderValue},
};
use chronicle_bus::ContentError;
use chronicle_files::{
    check_content_type, check_name, File, FileCommand, Share, ShareCommand, Unserved, MAX_FILE_SIZE,
};
use chronicle_projections::file_metadata;
use chrono::Utc;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;

use super::prelude::*;

/// This module's routes (the API contract).
pub(super) fn routes() -> Routes {
    documented![list, metadata, remove, content, share, revoke, shared]
        // The multipart envelope around a file of the largest size.
        .routes(with_layer(
            utoipa_axum::routes!(upload),
            DefaultBodyLimit::max((MAX_FILE_SIZE + 64 * 1024) as usize),
        ))
}

/// Files, shares, chunked and tus uploads, thumbnails.
fn files_routes() -> Routes {
    routes()
        .merge(super::uploads::routes())
        .merge(super::tus::routes())
        .merge(super::thumbnails::routes())
}

/// The files context as the gateway hosts it.
pub const CONTEXT: Context = Context {
    beside: |_, _| None,
    routes: files_routes,
    problems: &[
        "checksum_mismatch",
        "file_exists",
        "image_too_large",
        "not_an_image",
        "offset_mismatch",
        "range_not_satisfiable",
        "share_exists",
        "too_many_segments",
        "tus_version_unsupported",
        "upload_closed",
        "upload_exists",
        "upload_expired",
        "upload_incomplete",
        "upload_not_expired",
    ],
    settings: |s| {
        s.declare::<super::files_state::FilesConfig>();
    },
    state: |_, s| {
        s.insert_default(super::files_state::FilesState::default);
    },
};

/// A share token's id: the lowercase hex SHA-256 of the token.
fn share_id(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewShare {
    expires_in_seconds: i64,
}

/// `POST /api/v1/files/{id}/shares`: a link to the caller's file; its token is in this
/// answer and nowhere else.
#[utoipa::path(post, path = "/api/v1/files/{id}/shares", tag = "files", summary = "A share link that expires", params(("id" = String, Path)), request_body = NewShare, responses((status = 201, description = "201: {\"token\",\"url\",\"expires_at\"}"), crate::schema::Problems))]
pub async fn share(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
    body: JsonBody<NewShare>,
) -> Result<Response, ApiError> {
    owned_file(&state, &id, &caller.user_id).await?;
    // 256 random bits.
    let mut random = [0u8; 32];
    random[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    random[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, random);
    let command = ShareCommand::Create {
        file_id: id.clone(),
        owner_id: caller.user_id.clone(),
        now: Utc::now(),
        expires_in_seconds: body.value.expires_in_seconds,
    };
    let share_id = share_id(&token);
    state
        .commands
        .execute::<Share>(
            &share_id,
            command,
            &(),
            &super::respond::caller_context(&caller),
        )
        .await?;
    let expires_at = state
        .commands
        .state::<Share>(&share_id)
        .await?
        .state
        .expires_at();
    let body = json!({"token": token, "url": format!("/api/v1/shared/{token}"),
        "expires_at": expires_at});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /api/v1/files/{id}/shares/{token}`: 204; the link serves nothing more.
#[utoipa::path(delete, path = "/api/v1/files/{id}/shares/{token}", tag = "files", summary = "Revoke a share link", params(("id" = String, Path), ("token" = String, Path)), responses((status = 204, description = "204"), crate::schema::Problems))]
pub async fn revoke(
    State(state): State<AppState>,
    ApiPath((id, token)): ApiPath<(String, String)>,
    caller: Caller,
) -> Result<Response, ApiError> {
    owned_file(&state, &id, &caller.user_id).await?;
    let share_id = share_id(&token);
    let link = state.commands.state::<Share>(&share_id).await?.state;
    if link.file_id() != id {
        return Err(ApiError::not_found("no such share of this file"));
    }
    let command = ShareCommand::Revoke {
        by: caller.user_id.clone(),
        now: Utc::now(),
    };
    state
        .commands
        .execute::<Share>(
            &share_id,
            command,
            &(),
            &super::respond::caller_context(&caller),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/shared/{token}`: the file's bytes, without authentication, while the link
/// lives; 410 `share_expired` after its expiry, 410 `share_revoked` once revoked.
#[utoipa::path(get, path = "/api/v1/shared/{token}", tag = "files", summary = "A shared file's bytes, without an account", params(("token" = String, Path)), responses((status = 200, description = "200: the bytes"), crate::schema::Problems))]
pub async fn shared(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let gone = |code, detail| ApiError::new(StatusCode::GONE, code, detail);
    // A token is 43 URL-safe characters; anything else is no link.
    if token.len() > 128 {
        return Err(ApiError::not_found("no such share"));
    }
    let link = state
        .commands
        .state::<Share>(&share_id(&token))
        .await?
        .state;
    let file_id = match link.serves(Utc::now()) {
        Ok(file_id) => file_id.to_owned(),
        Err(Unserved::NotFound) => return Err(ApiError::not_found("no such share")),
        Err(Unserved::Expired) => return Err(gone("share_expired", "the link has expired")),
        Err(Unserved::Revoked) => return Err(gone("share_revoked", "the link was revoked")),
    };
    let file = state.commands.state::<File>(&file_id).await?.state;
    if !file.is_live() {
        return Err(gone("file_deleted", "the shared file was deleted"));
    }
    serve(&state, &file, &headers).await
}

/// Claims the bytes named `sha256` before a file points at them (the files janitor leaves
/// claimed bytes alone; see `file_metadata::claim_bytes`).
pub(super) async fn claim_bytes(state: &AppState, sha256: &str) -> Result<(), ApiError> {
    chronicle_projections::file_metadata::claim_bytes(state.db.of(contexts::FILES), sha256)
        .await
        .map_err(ApiError::internal)
}

/// The claim namespace recording the files `owner_id` stored with the bytes `sha256`
/// (value: the file's id).
fn owned_bytes_claims(owner_id: &str, sha256: &str) -> String {
    format!("files.owned_bytes:{owner_id}:{sha256}")
}

/// Stores `command` (a [`FileCommand::Store`]) as file `file_id`, recording with the same
/// commit that its owner holds its bytes, so [`owns_bytes`] sees them the moment the file is
/// acknowledged. Every route that makes a file stores it here.
///
/// # Errors
/// The file's refusal, or the store's failure.
pub(super) async fn store(
    state: &AppState,
    ctx: &chronicle_commands::CommandContext,
    file_id: &str,
    command: FileCommand,
) -> Result<(), chronicle_commands::CommandError<chronicle_files::FileError>> {
    let mut ctx = ctx.clone();
    if let FileCommand::Store {
        owner_id, sha256, ..
    } = &command
    {
        ctx.claims = vec![chronicle_commands::UniqueClaim::new(
            owned_bytes_claims(owner_id, sha256),
            file_id,
        )];
    }
    state
        .commands
        .execute::<File>(file_id, command, &(), &ctx)
        .await
        .map(|_| ())
}

/// Whether `owner_id` has a live file whose bytes are `sha256` (a client may then skip
/// uploading them). The candidates are the files the read model lists and those [`store`]
/// recorded (a file stored a moment ago, which the read model may not show yet); each is
/// asked whether it is live, since the read model may also be behind a deletion.
///
/// # Errors
/// The store's or the database's failure.
pub(super) async fn owns_bytes(
    state: &AppState,
    owner_id: &str,
    sha256: &str,
) -> Result<bool, ApiError> {
    let mut candidates =
        file_metadata::files_with_bytes(state.db.of(contexts::FILES), owner_id, sha256, 100)
            .await
            .map_err(ApiError::internal)?;
    let recorded = state
        .commands
        .store_for::<File>()
        .claims_in(&owned_bytes_claims(owner_id, sha256), 100)
        .await?;
    candidates.extend(recorded.into_iter().map(|(file_id, _)| file_id));
    candidates.sort_unstable();
    candidates.dedup();
    for file_id in candidates {
        let file = state.commands.state::<File>(&file_id).await?.state;
        if file.is_live() && file.owner_id() == owner_id {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(super) fn content_error(e: ContentError) -> ApiError {
    match e {
        ContentError::TooLarge { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a file is at most {limit} bytes"),
        ),
        // The client's body failed (cut off, or silent for too long).
        ContentError::Io(e) => {
            ApiError::bad_request("bad_request", format!("reading the upload: {e}"))
        }
        ContentError::Store(_) => ApiError::internal(e),
    }
}

/// `POST /api/v1/files`: the multipart field `file`, streamed into the object store.
#[utoipa::path(post, path = "/api/v1/files", tag = "files", summary = "Upload a file (multipart field `file`)", request_body(content = crate::schema::FileForm, content_type = "multipart/form-data", description = "field `file`: the bytes"), responses((status = 201, description = "201: {\"id\",\"sha256\",\"size\",\"deduplicated\"}"), crate::schema::Problems))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart?;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request("bad_request", e.body_text()))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().unwrap_or_default().to_owned();
        let content_type = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_owned();
        ApiError::check(FieldError::collect([
            check_name(&name),
            check_content_type(&content_type),
        ]))?;
        let content = state.content().await?;
        let mut bytes = tokio_util::io::StreamReader::new(field.map_err(std::io::Error::other));
        let written = content
            .write(&mut bytes, MAX_FILE_SIZE)
            .await
            .map_err(content_error)?;
        claim_bytes(&state, &written.sha256).await?;
        let stored = content.keep(written).await.map_err(content_error)?;
        let file_id = uuid::Uuid::now_v7().to_string();
        let command = FileCommand::Store {
            file_id: file_id.clone(),
            owner_id: caller.user_id.clone(),
            name,
            size: stored.size,
            content_type,
            sha256: stored.sha256.clone(),
            at: Utc::now(),
        };
        // Refused (an empty file), the bytes are claimed by nothing: the files janitor
        // removes them after its grace period.
        store(
            &state,
            &super::respond::caller_context(&caller),
            &file_id,
            command,
        )
        .await?;
        let body = json!({"id": file_id, "sha256": stored.sha256, "size": stored.size,
            "deduplicated": stored.deduplicated});
        return Ok((StatusCode::CREATED, Json(body)).into_response());
    }
    Err(ApiError::validation(vec![FieldError::new(
        "file",
        "a multipart field named file, with a file name",
    )]))
}

/// The live file `id` if `user_id` owns it; 404 otherwise (a file is the owner's alone).
async fn owned_file(state: &AppState, id: &str, user_id: &str) -> Result<File, ApiError> {
    let id = respond::uuid_id(id, "file")?;
    let file = state.commands.state::<File>(id).await?.state;
    if file.is_live() && file.owner_id() == user_id {
        Ok(file)
    } else {
        Err(ApiError::not_found(format!("no file with id {id}")))
    }
}

/// The live file `id` if `user_id` may read it: they own it, or it is attached to a
/// message of a room they are a member of. 404 otherwise.
pub(super) async fn readable_file(
    state: &AppState,
    id: &str,
    user_id: &str,
) -> Result<File, ApiError> {
    let id = respond::uuid_id(id, "file")?;
    let file = state.commands.state::<File>(id).await?.state;
    let readable = file.is_live()
        && (file.owner_id() == user_id || super::chat::attached_for(state, id, user_id).await?);
    if readable {
        Ok(file)
    } else {
        Err(ApiError::not_found(format!("no file with id {id}")))
    }
}

/// `GET /api/v1/files/{id}`: for its owner, and the members of rooms it is attached in.
#[utoipa::path(get, path = "/api/v1/files/{id}", tag = "files", summary = "A file's metadata", params(("id" = String, Path)), responses((status = 200, description = "200: {\"id\",\"name\",\"size\",\"content_type\",\"sha256\",...}"), crate::schema::Problems))]
pub async fn metadata(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let file = readable_file(&state, &id, &caller.user_id).await?;
    // Links are the owner's business.
    let shares = if file.owner_id() == caller.user_id {
        file_metadata::shares_of(state.db.of(contexts::FILES), &id)
            .await
            .map_err(ApiError::internal)?
    } else {
        Vec::new()
    };
    Ok(Json(json!({
        "id": id, "owner_id": file.owner_id(), "name": file.name(), "size": file.size(),
        "content_type": file.content_type(), "sha256": file.sha256(),
        "created_at": file.stored_at(), "shares": shares,
    }))
    .into_response())
}

/// `DELETE /api/v1/files/{id}`: 204.
#[utoipa::path(delete, path = "/api/v1/files/{id}", tag = "files", summary = "Delete a file", params(("id" = String, Path)), responses((status = 204, description = "204"), crate::schema::Problems))]
pub async fn remove(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let id = respond::uuid_id(&id, "file")?;
    let command = FileCommand::Delete {
        by: caller.user_id.clone(),
        at: Utc::now(),
    };
    state
        .commands
        .execute::<File>(id, command, &(), &super::respond::caller_context(&caller))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/files`: the caller's live files, newest first, in cursor pages.
#[utoipa::path(get, path = "/api/v1/files", tag = "files", summary = "The caller's files, in cursor pages", responses((status = 200, description = "200: {\"items\",\"next_cursor\"}", body = crate::schema::Page), crate::schema::Problems))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    let db = state.db.of(contexts::FILES);
    let page = PageRequest::from_params(&params)?
        .by_time_and_id(
            |after, fetch| file_metadata::files_of(db, &caller.user_id, after, fetch),
            |f| (f.created_at, &f.id),
        )
        .await?;
    Ok(Json(page).into_response())
}

/// `GET /api/v1/files/{id}/content`.
#[utoipa::path(get, path = "/api/v1/files/{id}/content", tag = "files", summary = "The bytes (Range, ETag)", params(("id" = String, Path)), responses((status = 200, description = "200 or 206: the bytes"), crate::schema::Problems))]
pub async fn content(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let file = readable_file(&state, &id, &caller.user_id).await?;
    serve(&state, &file, &headers).await
}

/// What a `Range` header asks of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    All,
    /// Bytes `start..=end`.
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// One `bytes=` range (`a-b`, `a-`, `-n`). Several ranges, or a header this does not read,
/// get the whole file, as RFC 9110 allows.
fn wanted(range: Option<&HeaderValue>, size: u64) -> Wanted {
    let Some(spec) = range
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.trim().strip_prefix("bytes="))
    else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::All;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        // The last n bytes.
        (true, false) => match number(last) {
            Some(0) => return Wanted::Unsatisfiable,
            Some(n) => (size.saturating_sub(n), size.saturating_sub(1)),
            None => return Wanted::All,
        },
        (false, true) => match number(first) {
            Some(start) => (start, size.saturating_sub(1)),
            None => return Wanted::All,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => (start, end.min(size.saturating_sub(1))),
            _ => return Wanted::All,
        },
        (true, true) => return Wanted::All,
    };
    if size == 0 || start >= size {
        Wanted::Unsatisfiable
    } else {
        Wanted::Part { start, end }
    }
}

/// `attachment` with the name made safe for the header: an ASCII `filename` (anything
/// else, quotes and backslashes become `_`) and the exact name in `filename*`.
fn disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// The bytes of `file`, whole or the asked range, streamed from the object store.
pub(crate) async fn serve(
    state: &AppState,
    file: &File,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", file.sha256());
    let etag_value = HeaderValue::from_str(&etag).map_err(ApiError::internal)?;
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let size = file.size();
    let (status, start, length) = match wanted(headers.get(header::RANGE), size) {
        Wanted::All => (StatusCode::OK, 0, size),
        Wanted::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Wanted::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {size} bytes"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    let content = state.content().await?;
    let blob = content
        .blob(file.sha256())
        .await
        .map_err(content_error)?
        .ok_or_else(|| {
            ApiError::internal(std::io::Error::other(format!(
                "the bytes of a live file are missing: {}",
                file.sha256()
            )))
        })?;
    // Whole parts before the range are not read at all.
    let body = Body::from_stream(content.read(&blob, start, length));
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag_value)
        .header(header::CONTENT_DISPOSITION, disposition(file.name()));
    if let Ok(content_type) = HeaderValue::from_str(file.content_type()) {
        response = response.header(header::CONTENT_TYPE, content_type);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + length - 1),
        );
    }
    response.body(body).map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(spec: &str, size: u64) -> Wanted {
        wanted(Some(&HeaderValue::from_str(spec).unwrap()), size)
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(wanted(None, 10), Wanted::All);
        assert_eq!(range("bytes=0-3", 10), Wanted::Part { start: 0, end: 3 });
        assert_eq!(range("bytes=4-", 10), Wanted::Part { start: 4, end: 9 });
        assert_eq!(range("bytes=-3", 10), Wanted::Part { start: 7, end: 9 });
        assert_eq!(range("bytes=-30", 10), Wanted::Part { start: 0, end: 9 });
        assert_eq!(range("bytes=5-100", 10), Wanted::Part { start: 5, end: 9 });
        assert_eq!(range("bytes=10-", 10), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=-0", 10), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=3-1", 10), Wanted::All);
        assert_eq!(range("bytes=0-1,4-5", 10), Wanted::All);
        assert_eq!(range("items=0-1", 10), Wanted::All);
        assert_eq!(range("bytes=x-1", 10), Wanted::All);
        assert_eq!(
            range("bytes=18446744073709551615-", 10),
            Wanted::Unsatisfiable
        );
    }

    #[test]
    fn a_file_name_cannot_break_out_of_its_header() {
        let value = disposition("a\"b\\c d.txt");
        let text = value.to_str().unwrap();
        assert!(
            text.starts_with("attachment; filename=\"a_b_c d.txt\";"),
            "{text}"
        );
        assert!(
            text.ends_with("filename*=UTF-8''a%22b%5Cc%20d.txt"),
            "{text}"
        );
        let value = disposition("日本.txt");
        assert!(value.to_str().unwrap().contains("filename=\"__.txt\""));
        assert!(value.to_str().unwrap().contains("%E6%97%A5"));
    }
}
