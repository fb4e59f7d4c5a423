//! `GET /api/v1/files/{id}/thumbnail?width=N&height=M&fit=contain|cover` (the API contract, Files): a
//! PNG or JPEG thumbnail of an image file, made once per (bytes, box) and kept in the object
//! store beside the bytes (`thumb.<sha256>.<box>`; removed with them).
//!
//! Images are refused from their header before any pixel is decoded when they declare
//! more than the domain's limits (a decompression bomb: a small file declaring a huge
//! image), and decoded under an allocation limit besides; one is made at a time (a 40-megapixel image decodes to 160 MB).

use std::collections::HashMap;

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chronicle_files::{ThumbnailBox, MAX_THUMBNAIL_SOURCE_BYTES};
use futures::TryStreamExt;
use serde::Deserialize;

use super::{
    files::{content_error, readable_file},
    Routes,
};
use crate::{
    error::{ApiError, FieldError},
    extract::{ApiPath, ApiQuery, Caller},
    state::AppState,
    thumbnail::{thumbnail, Refused},
};

/// This module's routes.
pub(super) fn routes() -> Routes {
    documented![get]
}

#[derive(Debug, Deserialize)]
pub struct Asked {
    width: Option<u32>,
    height: Option<u32>,
    fit: Option<String>,
}

/// `GET /api/v1/files/{id}/thumbnail?width=N&height=M&fit=contain|cover` (a 256 square that
/// contains by default).
#[utoipa::path(get, path = "/api/v1/files/{id}/thumbnail", tag = "files", operation_id = "thumbnail", summary = "A thumbnail of an image file in a box (?width, ?height: a side left out is the other's, 256 by default; each snapped up to 32, 64, 128, 256, 512 or 1024; ?fit=contain fits inside, cover fills the box exactly and crops around the centre)", params(("id" = String, Path), ("width" = Option<u32>, Query), ("height" = Option<u32>, Query), ("fit" = Option<String>, Query, description = "contain (default) or cover")), responses((status = 200, description = "200: image/png or image/jpeg"), crate::schema::Problems))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(asked): ApiQuery<Asked>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let within = ThumbnailBox::asked(asked.width, asked.height, asked.fit.as_deref())
        .map_err(|invalid| ApiError::validation(vec![FieldError::from(invalid)]))?;
    let file = readable_file(&state, &id, &caller.user_id).await?;
    let etag = format!("\"{}.{}\"", file.sha256(), within.suffix());
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let etag = HeaderValue::from_str(&etag).map_err(ApiError::internal)?;
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let not_an_image = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_an_image",
            "the file is not an image this server makes thumbnails of",
        )
    };
    if !file.content_type().starts_with("image/") {
        return Err(not_an_image());
    }
    let content = state.content().await?;
    let name = chronicle_bus::thumbnail_object(file.sha256(), &within.suffix());
    let (bytes, media_type) = match content
        .get_small(&name, 64 * 1024 * 1024)
        .await
        .map_err(content_error)?
    {
        Some((bytes, metadata)) => {
            let media_type = metadata
                .get("content-type")
                .cloned()
                .unwrap_or_else(|| "image/png".to_owned());
            (bytes, media_type)
        }
        None => {
            if file.size() > MAX_THUMBNAIL_SOURCE_BYTES {
                return Err(too_large(format!(
                    "images of at most {MAX_THUMBNAIL_SOURCE_BYTES} bytes have thumbnails"
                )));
            }
            let _permit = state
                .files()
                .thumbnailing
                .acquire()
                .await
                .map_err(ApiError::internal)?;
            let blob = content
                .blob(file.sha256())
                .await
                .map_err(content_error)?
                .ok_or_else(|| {
                    ApiError::internal(std::io::Error::other(
                        "the bytes of a live file are missing",
                    ))
                })?;
            let source: Vec<u8> = content
                .read(&blob, 0, blob.size)
                .try_fold(Vec::new(), |mut all, chunk| async move {
                    all.extend_from_slice(&chunk);
                    Ok(all)
                })
                .await
                .map_err(ApiError::internal)?;
            let made = tokio::task::spawn_blocking(move || thumbnail(&source, within))
                .await
                .map_err(ApiError::internal)?;
            let (bytes, media_type) = match made {
                Ok(made) => made,
                Err(Refused::NotAnImage) => return Err(not_an_image()),
                Err(Refused::TooLarge(detail)) => return Err(too_large(detail)),
            };
            let metadata = HashMap::from([("content-type".to_owned(), media_type.to_owned())]);
            content
                .put_small(&name, &bytes, metadata)
                .await
                .map_err(content_error)?;
            (bytes, media_type.to_owned())
        }
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&media_type).map_err(ApiError::internal)?,
            ),
            (header::ETAG, etag),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=86400"),
            ),
        ],
        bytes,
    )
        .into_response())
}

fn too_large(detail: impl Into<String>) -> ApiError {
    ApiError::unprocessable("image_too_large", detail.into())
}
