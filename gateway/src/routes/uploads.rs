//! `/api/v1/files/uploads` (API.md, Files): resumable uploads in chunks. The client declares
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
use chronicle_commands::CommandContext;
use chronicle_files::{
    check_content_type, check_name, check_sha256, check_size, File, FileCommand, FileError, Upload,
    UploadCommand, UploadError, MAX_CHUNK_SIZE,
};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::json;

use super::files::content_error;
use crate::{
    error::{ApiError, FieldError},
    extract::{ApiPath, Caller, JsonBody},
    state::AppState,
};

/// The chunk size this gateway asks for.
const CHUNK_SIZE: u64 = 8 * 1024 * 1024;
/// How long an upload may stay unfinished.
const UPLOAD_TTL: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// This module's routes (API.md).
pub(super) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post, put};
    axum::Router::new()
        .route("/api/v1/files/uploads", post(start))
        .route("/api/v1/files/uploads/{id}", get(progress))
        .route(
            "/api/v1/files/uploads/{id}/chunks/{index}",
            put(chunk).layer(DefaultBodyLimit::max(MAX_CHUNK_SIZE as usize)),
        )
        .route("/api/v1/files/uploads/{id}/complete", post(complete))
}

/// The object a chunk is kept in until the upload completes.
fn chunk_name(upload_id: &str, index: u64) -> String {
    format!("chunk.{upload_id}.{index}")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    name: String,
    size: u64,
    sha256: String,
    content_type: String,
}

/// `POST /api/v1/files/uploads`: 201 `{"upload_id","chunk_size"}`, or 201
/// `{"id","deduplicated":true}` when the caller already has these bytes.
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
    let theirs = chronicle_projections::file_metadata::owns_bytes(
        &state.pool,
        &caller.user_id,
        &declared.sha256,
    )
    .await
    .map_err(ApiError::internal)?;
    if theirs
        && state
            .content()
            .await?
            .contains(&declared.sha256)
            .await
            .map_err(content_error)?
    {
        let file_id = uuid::Uuid::now_v7().to_string();
        let command = FileCommand::Store {
            file_id: file_id.clone(),
            owner_id: caller.user_id.clone(),
            name: declared.name,
            size: declared.size,
            content_type: declared.content_type,
            sha256: declared.sha256,
            at: Utc::now(),
        };
        state
            .commands
            .execute::<File>(&file_id, command, &(), &ctx)
            .await?;
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
        expires_at: Utc::now() + UPLOAD_TTL,
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
    let upload = state.commands.state::<Upload>(id).await?.state;
    if upload.exists() && upload.owner_id() == user_id {
        Ok(upload)
    } else {
        Err(ApiError::not_found(format!("no upload with id {id}")))
    }
}

/// `GET /api/v1/files/uploads/{id}`: `{"received","missing"}`, to resume.
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
pub async fn chunk(
    State(state): State<AppState>,
    ApiPath((id, index)): ApiPath<(String, u64)>,
    caller: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let upload = owned_upload(&state, &id, &caller.user_id).await?;
    if upload.completed().is_some() || upload.is_expired() {
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
    let mut bytes =
        tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let name = chunk_name(&id, index);
    let length = content
        .put_part(&name, &mut bytes, expected)
        .await
        .map_err(content_error)?;
    let command = UploadCommand::ReceiveChunk {
        index,
        length,
        by: caller.user_id.clone(),
    };
    if let Err(e) = state
        .commands
        .execute::<Upload>(&id, command, &(), &super::respond::caller_context(&caller))
        .await
    {
        if length != expected {
            let _ = content.delete(&name).await;
        }
        return Err(e.into());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/files/uploads/{id}/complete`: 201 `{"id","sha256","size"}` once every
/// chunk is in and the bytes hash as declared. Asked again, the same answer.
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
        ensure_file(&state, &ctx, &file_id, &upload).await?;
        return Ok(done(&upload));
    }
    let missing = upload.missing().count() as u64;
    if missing > 0 {
        return Err(refused(UploadError::Incomplete { missing }));
    }
    // Assembling a large file takes longer than the handler timeout may allow: it runs on a
    // task of its own, which finishes even when this request is cut (the client asks to
    // complete again, and gets the file).
    let assembly = tokio::spawn(assemble(
        state.clone(),
        ctx,
        id.clone(),
        file_id.clone(),
        upload.clone(),
        caller.user_id.clone(),
    ));
    assembly
        .await
        .map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))??;
    Ok(done(&upload))
}

/// An upload's refusal as the API answers it.
fn refused(rule: UploadError) -> ApiError {
    chronicle_commands::CommandError::Rejected(rule).into()
}

/// The file a completed upload became, stored if it is not yet (a crash between completing
/// the upload and storing the file is mended by completing again).
async fn ensure_file(
    state: &AppState,
    ctx: &CommandContext,
    file_id: &str,
    upload: &Upload,
) -> Result<(), ApiError> {
    let command = FileCommand::Store {
        file_id: file_id.to_owned(),
        owner_id: upload.owner_id().to_owned(),
        name: upload.name().to_owned(),
        size: upload.size(),
        content_type: upload.content_type().to_owned(),
        sha256: upload.sha256().to_owned(),
        at: Utc::now(),
    };
    match state
        .commands
        .execute::<File>(file_id, command, &(), ctx)
        .await
    {
        Ok(_) | Err(chronicle_commands::CommandError::Rejected(FileError::Exists)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads the chunks in order into the content-addressed store, completes the upload if the
/// bytes hash as declared, stores the file, and drops the chunks.
async fn assemble(
    state: AppState,
    ctx: CommandContext,
    id: String,
    file_id: String,
    upload: Upload,
    user_id: String,
) -> Result<(), ApiError> {
    let content = state.content().await?;
    // The chunks in order, as one stream of bytes, into the content-addressed store.
    let chunks = futures::stream::iter(0..upload.chunks())
        .then(|index| {
            let content = content.clone();
            let name = chunk_name(&id, index);
            async move {
                match content.get(&name).await {
                    Ok(Some(object)) => Ok(tokio_util::io::ReaderStream::new(object)),
                    Ok(None) => Err(std::io::Error::other(format!("chunk {index} is missing"))),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                }
            }
        })
        .try_flatten();
    let mut whole = tokio_util::io::StreamReader::new(Box::pin(chunks));
    let stored = content
        .put(&mut whole, upload.size())
        .await
        .map_err(content_error)?;
    let completed = state
        .commands
        .execute::<Upload>(
            &id,
            UploadCommand::Complete {
                file_id: file_id.clone(),
                computed_sha256: stored.sha256.clone(),
                by: user_id.clone(),
            },
            &(),
            &ctx,
        )
        .await;
    if let Err(e) = completed {
        // Bytes that are not what was declared are not kept (unless a file has them).
        if !stored.deduplicated {
            let _ = content.delete(&stored.sha256).await;
        }
        return Err(e.into());
    }
    ensure_file(&state, &ctx, &file_id, &upload).await?;
    for index in 0..upload.chunks() {
        let _ = content.delete(&chunk_name(&id, index)).await;
    }
    Ok(())
}
