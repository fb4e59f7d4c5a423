//! `/api/v1/files/uploads` (the API contract, Files): resumable uploads in chunks. The client declares
//! the name, size, hash and content type; sends chunks in any order (a chunk sent again
//! replaces itself); asks which are missing to resume; completes. Completion reads the
//! chunks in order into the content-addressed store, and the file exists only if the bytes
//! hash as declared (422 `checksum_mismatch` otherwise, and nothing is kept of them).
//!
//! A declared hash completes the upload at once when the caller already has a live file
//! with those bytes. Bytes someone else uploaded are not handed over on the strength of
//! their hash alone (knowing a hash is not having the file); such an upload goes through,
//! and its bytes are still stored once.

use axum::{
    body::Body,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use chronicle_bus::{Blob, Part, Sealed};
use chronicle_commands::CommandContext;
use chronicle_files::{
    check_content_type, check_name, check_sha256, check_size, FileCommand, FileError, Upload,
    UploadCommand, UploadError, MAX_CHUNK_SIZE,
};
use chrono::Utc;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{
    files::{claim_bytes, content_error},
    incoming::{keep_hash, take_hash, Incoming},
    with_layer, Routes,
};
use crate::{
    error::{ApiError, FieldError},
    extract::{ApiPath, Caller, JsonBody},
    state::AppState,
};

/// The chunk size this gateway asks for.
const CHUNK_SIZE: u64 = 8 * 1024 * 1024;

/// This module's routes (the API contract).
pub(super) fn routes() -> Routes {
    documented![start, progress, complete].routes(with_layer(
        utoipa_axum::routes!(chunk),
        DefaultBodyLimit::max(MAX_CHUNK_SIZE as usize),
    ))
}

/// The object a chunk is kept in (one of the parts of the bytes once they are complete).
fn chunk_name(upload_id: &str, index: u64) -> String {
    chronicle_bus::upload_part(upload_id, index)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    name: String,
    size: u64,
    sha256: String,
    content_type: String,
}

/// `POST /api/v1/files/uploads`: 201 `{"upload_id","chunk_size"}`, or 201
/// `{"id","deduplicated":true}` when the caller already has these bytes.
#[utoipa::path(post, path = "/api/v1/files/uploads", tag = "files", operation_id = "upload_start", summary = "Start a chunked upload", request_body = Declared, responses((status = 201, description = "201: {\"upload_id\",\"chunk_size\"} or {\"id\",\"deduplicated\":true}"), crate::schema::Problems))]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<Declared>,
) -> Result<Response, ApiError> {
    let declared = body.value;
    ApiError::check(FieldError::collect([
        check_name(&declared.name),
        check_size(declared.size),
        check_sha256("sha256", &declared.sha256),
        check_content_type(&declared.content_type),
    ]))?;
    let ctx = super::respond::caller_context(&caller);
    let theirs = super::files::owns_bytes(&state, &caller.user_id, &declared.sha256).await?;
    if theirs {
        claim_bytes(&state, &declared.sha256).await?;
    }
    if theirs
        && state
            .content()
            .await?
            .contains(&declared.sha256)
            .await
            .map_err(content_error)?
    {
        let file_id = uuid::Uuid::now_v7().to_string();
        let deduplicated_bytes = declared.size;
        let command = FileCommand::Store {
            file_id: file_id.clone(),
            owner_id: caller.user_id.clone(),
            name: declared.name,
            size: declared.size,
            content_type: declared.content_type,
            sha256: declared.sha256,
            at: Utc::now(),
        };
        super::files::store(&state, &ctx, &file_id, command).await?;
        metrics::counter!("chronicle_files_deduplicated_total").increment(1);
        metrics::counter!("chronicle_files_deduplicated_bytes_total").increment(deduplicated_bytes);
        return Ok((
            StatusCode::CREATED,
            Json(json!({"id": file_id, "deduplicated": true})),
        )
            .into_response());
    }
    let upload_id = uuid::Uuid::now_v7().to_string();
    let command = UploadCommand::Start {
        upload_id: upload_id.clone(),
        owner_id: caller.user_id.clone(),
        name: declared.name,
        size: declared.size,
        content_type: declared.content_type,
        sha256: declared.sha256,
        chunk_size: CHUNK_SIZE,
        expires_at: expiry(&state),
    };
    state
        .commands
        .execute::<Upload>(&upload_id, command, &(), &ctx)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"upload_id": upload_id, "chunk_size": CHUNK_SIZE})),
    )
        .into_response())
}

/// The caller's upload `id`; 404 for anyone else's.
async fn owned_upload(state: &AppState, id: &str, user_id: &str) -> Result<Upload, ApiError> {
    let id = super::respond::uuid_id(id, "upload")?;
    // Fresh: a client resuming may ask another gateway than the one it sent chunks to.
    let upload = state.commands.fresh_state::<Upload>(id).await?.state;
    if upload.exists() && upload.owner_id() == user_id {
        Ok(upload)
    } else {
        Err(ApiError::not_found(format!("no upload with id {id}")))
    }
}

/// `GET /api/v1/files/uploads/{id}`: `{"received","missing"}`, to resume.
#[utoipa::path(get, path = "/api/v1/files/uploads/{id}", tag = "files", operation_id = "upload_progress", summary = "Which chunks are in", params(("id" = String, Path)), responses((status = 200, description = "200: {\"received\",\"missing\",...}"), crate::schema::Problems))]
pub async fn progress(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let upload = owned_upload(&state, &id, &caller.user_id).await?;
    Ok(Json(json!({
        "received": upload.received().collect::<Vec<_>>(),
        "missing": upload.missing().collect::<Vec<_>>(),
        "completed": upload.completed(),
    }))
    .into_response())
}

/// `PUT /api/v1/files/uploads/{id}/chunks/{index}`: 204. A chunk has the exact length its
/// place asks (the chunk size; the rest, for the last one).
#[utoipa::path(put, path = "/api/v1/files/uploads/{id}/chunks/{index}", tag = "files", operation_id = "upload_chunk", summary = "One chunk's bytes", params(("id" = String, Path), ("index" = String, Path)), request_body(content = crate::schema::Binary, content_type = "application/octet-stream", description = "the chunk's bytes"), responses((status = 204, description = "204"), crate::schema::Problems))]
pub async fn chunk(
    State(state): State<AppState>,
    ApiPath((id, index)): ApiPath<(String, u64)>,
    caller: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let upload = owned_upload(&state, &id, &caller.user_id).await?;
    if upload.completed().is_some() || past_expiry(&upload) {
        return Err(refused(UploadError::Closed));
    }
    if index >= upload.chunks() {
        return Err(ApiError::validation(vec![FieldError::new(
            "index",
            format!("chunks are numbered 0 to {}", upload.chunks() - 1),
        )]));
    }
    // A chunk in is kept: sent again, it is not stored again (a bad copy would otherwise
    // replace the good one, and then be removed, with the upload counting it in).
    if upload.has_chunk(index) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let expected = upload.chunk_length(index);
    let content = state.content().await?;
    let offset = index * upload.chunk_size();
    // Chunks arriving in order at this process are hashed on their way in: completing the
    // upload then reads nothing back.
    let mut bytes = Incoming {
        inner: tokio_util::io::StreamReader::new(
            body.into_data_stream().map_err(std::io::Error::other),
        ),
        checksum: None,
        whole: take_hash(&state, &id, offset),
        keep_cut: false,
        cut: false,
    };
    // An object of its own for each attempt: two requests racing with one chunk never write
    // over each other, and the one recorded is the one whose bytes were hashed.
    let name = format!(
        "{}.{}",
        chunk_name(&id, index),
        uuid::Uuid::now_v7().simple()
    );
    let length = content
        .put_part(&name, &mut bytes, expected)
        .await
        .map_err(content_error)?;
    let command = UploadCommand::ReceiveChunk {
        index,
        length,
        part: Some(name.clone()),
        by: caller.user_id.clone(),
    };
    let recorded = match state
        .commands
        .execute::<Upload>(&id, command, &(), &super::respond::caller_context(&caller))
        .await
    {
        Ok(chronicle_commands::Executed::Committed(committed)) => committed.appended > 0,
        Ok(chronicle_commands::Executed::Replayed(_)) => false,
        Err(e) => {
            let _ = content.delete_object(&name).await;
            return Err(e.into());
        }
    };
    if !recorded {
        // Another request recorded this chunk first: its object is the chunk, not this one.
        let _ = content.delete_object(&name).await;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if let Some(whole) = bytes.whole {
        keep_hash(&state, &id, offset + length, whole);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/files/uploads/{id}/complete`: 201 `{"id","sha256","size"}` once every
/// chunk is in and the bytes hash as declared. Asked again, the same answer.
#[utoipa::path(post, path = "/api/v1/files/uploads/{id}/complete", tag = "files", operation_id = "upload_complete", summary = "Assemble the chunks into a file", params(("id" = String, Path)), responses((status = 201, description = "201: {\"id\",\"sha256\",\"size\"}"), crate::schema::Problems))]
pub async fn complete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let upload = owned_upload(&state, &id, &caller.user_id).await?;
    // The file's id is the upload's: completing twice, or again after a crash half way,
    // finds the same file.
    let file_id = id.clone();
    let done = |upload: &Upload| {
        (
            StatusCode::CREATED,
            Json(json!({"id": file_id, "sha256": upload.sha256(), "size": upload.size()})),
        )
            .into_response()
    };
    let ctx = super::respond::caller_context(&caller);
    if upload.completed().is_some() {
        ensure_file(&state, &ctx, &id, &upload).await?;
        return Ok(done(&upload));
    }
    if past_expiry(&upload) {
        return Err(refused(UploadError::Closed));
    }
    let missing = upload.missing().count() as u64;
    if missing > 0 {
        return Err(refused(UploadError::Incomplete { missing }));
    }
    // Assembling a large file takes longer than the handler timeout may allow: it runs on a
    // task of its own, which finishes even when this request is cut; asking again waits for
    // the same assembly (one per upload in this process), and then gets the file.
    let work = assemble(
        state.clone(),
        ctx,
        id.clone(),
        upload.clone(),
        caller.user_id.clone(),
    );
    once_per_upload(&state, &id, work).await?;
    Ok(done(&upload))
}

/// The assembly of upload `id` running in this process, or `work` started as it.
pub(super) fn once_per_upload(
    state: &AppState,
    id: &str,
    work: impl std::future::Future<Output = Result<(), ApiError>> + Send + 'static,
) -> super::files_state::Assembly {
    use futures::FutureExt;
    let mut running = state
        .files()
        .assemblies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(assembly) = running.get(id) {
        return assembly.clone();
    }
    let task = tokio::spawn({
        let (state, id) = (state.clone(), id.to_owned());
        async move {
            let outcome = work.await;
            state
                .files()
                .assemblies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
            outcome
        }
    });
    let assembly = task
        .map(|joined| {
            joined.unwrap_or_else(|e| Err(ApiError::internal(std::io::Error::other(e.to_string()))))
        })
        .boxed()
        .shared();
    running.insert(id.to_owned(), assembly.clone());
    assembly
}

/// When an upload started now expires (`upload_ttl` from now; a setting too large for the
/// calendar is the end of it, not a panic).
pub(super) fn expiry(state: &AppState) -> chrono::DateTime<Utc> {
    chrono::TimeDelta::from_std(
        state
            .config
            .contexts
            .get::<super::files_state::FilesConfig>()
            .upload_ttl,
    )
    .ok()
    .and_then(|ttl| Utc::now().checked_add_signed(ttl))
    .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
}

/// Whether `upload` is expired, or past its expiry (the janitor is about to remove its
/// chunks: none is taken, and it does not complete).
fn past_expiry(upload: &Upload) -> bool {
    upload.is_expired() || upload.expires_at().is_some_and(|at| at <= Utc::now())
}

/// An upload's refusal as the API answers it.
fn refused(rule: UploadError) -> ApiError {
    chronicle_commands::CommandError::Rejected(rule).into()
}

/// The chunks of `upload`, in order, as the parts of its bytes.
fn chunk_parts(id: &str, upload: &Upload) -> Vec<Part> {
    (0..upload.chunks())
        .map(|index| Part {
            name: upload
                .chunk_object(index)
                .map_or_else(|| chunk_name(id, index), str::to_owned),
            size: upload.chunk_length(index),
        })
        .collect()
}

/// The file a completed upload became, its bytes named and the file stored if they are not
/// yet (a crash after completing the upload is mended by completing again).
async fn ensure_file(
    state: &AppState,
    ctx: &CommandContext,
    id: &str,
    upload: &Upload,
) -> Result<(), ApiError> {
    let file = FileCommand::Store {
        file_id: id.to_owned(),
        owner_id: upload.owner_id().to_owned(),
        name: upload.name().to_owned(),
        size: upload.size(),
        content_type: upload.content_type().to_owned(),
        sha256: upload.sha256().to_owned(),
        at: Utc::now(),
    };
    store_file(state, ctx, file, &chunk_parts(id, upload)).await
}

/// Names `parts` by the hash `file` declares (claimed first: the files janitor leaves them
/// be) and stores `file` (once: stored already, it is left as it is). When other parts
/// held those bytes already, these are dropped.
pub(super) async fn store_file(
    state: &AppState,
    ctx: &CommandContext,
    file: FileCommand,
    parts: &[Part],
) -> Result<(), ApiError> {
    let FileCommand::Store {
        file_id, sha256, ..
    } = &file
    else {
        return Err(ApiError::internal(std::io::Error::other(
            "store_file takes FileCommand::Store",
        )));
    };
    let (file_id, sha256) = (file_id.clone(), sha256.clone());
    let content = state.content().await?;
    claim_bytes(state, &sha256).await?;
    let sealed = content.seal(&sha256, parts).await.map_err(content_error)?;
    match super::files::store(state, ctx, &file_id, file).await {
        Ok(_) | Err(chronicle_commands::CommandError::Rejected(FileError::Exists)) => {}
        Err(e) => return Err(e.into()),
    }
    if sealed == Sealed::Elsewhere {
        // The same bytes were stored already: this copy is not needed.
        content.drop_parts(parts).await;
    }
    Ok(())
}

/// Hashes the chunks in order (read once, never copied), completes the upload if they hash
/// as declared, and names them by their hash as the new file's bytes.
async fn assemble(
    state: AppState,
    ctx: CommandContext,
    id: String,
    upload: Upload,
    user_id: String,
) -> Result<(), ApiError> {
    let content = state.content().await?;
    let parts = chunk_parts(&id, &upload);
    let blob = Blob {
        size: upload.size(),
        parts,
    };
    let computed_sha256 = match take_hash(&state, &id, upload.size()) {
        Some(whole) if upload.size() > 0 => chronicle_bus::hex(&sha2::Digest::finalize(whole)),
        _ => content.hash(&blob).await.map_err(content_error)?,
    };
    // Refused (422 `checksum_mismatch`) unless the bytes are what was declared; nothing is
    // named by a hash they do not have.
    state
        .commands
        .execute::<Upload>(
            &id,
            UploadCommand::Complete {
                file_id: id.clone(),
                computed_sha256,
                by: user_id,
            },
            &(),
            &ctx,
        )
        .await?;
    ensure_file(&state, &ctx, &id, &upload).await
}
