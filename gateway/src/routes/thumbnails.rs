//! `GET /api/v1/files/{id}/thumbnail?width=N` (API.md, Files): a PNG or JPEG thumbnail of an
//! image file, made once per (bytes, width) and kept in the object store beside the bytes
//! (`thumb.<sha256>.<width>`; removed with them).
//!
//! Images are refused from their header before any pixel is decoded when they declare
//! more than the domain's limits (a decompression bomb: a small file declaring a huge
//! image), and decoded under an allocation limit besides; at most two are made at once.

use std::{collections::HashMap, io::Cursor};

use axum::{
    extract::{Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chronicle_files::{
    thumbnail_width, MAX_THUMBNAIL_SOURCE_BYTES, MAX_THUMBNAIL_SOURCE_PIXELS,
    MAX_THUMBNAIL_SOURCE_SIDE,
};
use futures::TryStreamExt;
use serde::Deserialize;

use super::files::{content_error, readable_file};
use crate::{
    error::{ApiError, FieldError},
    extract::{ApiPath, Caller},
    state::AppState,
};

/// Why an image gets no thumbnail.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not an image this server reads.
    #[error("the file is not an image")]
    NotAnImage,
    /// An image past the limits (its bytes, its declared size, or what decoding it takes).
    #[error("{0}")]
    TooLarge(String),
}

/// A thumbnail at most `width` wide (never wider than the image), the aspect ratio kept:
/// its bytes and media type (PNG for images that may have transparency, JPEG for JPEGs).
///
/// # Errors
/// [`Refused`]: not an image, or an image past the limits (checked from its header first).
pub fn thumbnail(bytes: &[u8], width: u32) -> Result<(Vec<u8>, &'static str), Refused> {
    use image::ImageFormat;
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| Refused::NotAnImage)?;
    let format = reader.format().ok_or(Refused::NotAnImage)?;
    let (w, h) = reader.into_dimensions().map_err(|_| Refused::NotAnImage)?;
    if w == 0
        || h == 0
        || w > MAX_THUMBNAIL_SOURCE_SIDE
        || h > MAX_THUMBNAIL_SOURCE_SIDE
        || u64::from(w) * u64::from(h) > MAX_THUMBNAIL_SOURCE_PIXELS
    {
        return Err(Refused::TooLarge(format!(
            "a {w}x{h} image: at most {MAX_THUMBNAIL_SOURCE_PIXELS} pixels, \
             {MAX_THUMBNAIL_SOURCE_SIDE} on a side"
        )));
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_THUMBNAIL_SOURCE_SIDE);
    limits.max_image_height = Some(MAX_THUMBNAIL_SOURCE_SIDE);
    // Four bytes a pixel, and room for the decoder's own buffers.
    limits.max_alloc = Some(MAX_THUMBNAIL_SOURCE_PIXELS * 4 + 64 * 1024 * 1024);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(limit) => Refused::TooLarge(limit.to_string()),
        _ => Refused::NotAnImage,
    })?;
    let width = width.min(image.width());
    let height =
        ((u64::from(image.height()) * u64::from(width)) / u64::from(image.width())).max(1) as u32;
    let small = image.thumbnail(width, height);
    let mut out = Cursor::new(Vec::new());
    let media_type = if format == ImageFormat::Jpeg {
        small
            .to_rgb8()
            .write_to(&mut out, ImageFormat::Jpeg)
            .map_err(|_| Refused::NotAnImage)?;
        "image/jpeg"
    } else {
        small
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|_| Refused::NotAnImage)?;
        "image/png"
    };
    Ok((out.into_inner(), media_type))
}

/// This module's routes.
pub(super) fn routes() -> axum::Router<AppState> {
    axum::Router::new().route("/api/v1/files/{id}/thumbnail", axum::routing::get(get))
}

#[derive(Debug, Deserialize)]
pub struct Width {
    width: Option<u32>,
}

/// `GET /api/v1/files/{id}/thumbnail?width=N` (default 256).
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Query(asked): Query<Width>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let width = thumbnail_width(asked.width.unwrap_or(256))
        .map_err(|invalid| ApiError::validation(vec![FieldError::from(invalid)]))?;
    let file = readable_file(&state, &id, &caller.user_id).await?;
    let etag = format!("\"{}.{width}\"", file.sha256());
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
    let name = chronicle_bus::thumbnail_object(file.sha256(), width);
    let (bytes, media_type) = match content
        .get_small(&name, 4 * 1024 * 1024)
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
            let made = tokio::task::spawn_blocking(move || thumbnail(&source, width))
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
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "image_too_large",
        detail.into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255])
        });
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_thumbnail_keeps_the_aspect_ratio_and_never_upscales() {
        let (bytes, media_type) = thumbnail(&png(400, 200), 100).unwrap();
        assert_eq!(media_type, "image/png");
        let small = image::load_from_memory(&bytes).unwrap();
        assert_eq!((small.width(), small.height()), (100, 50));
        let (bytes, _) = thumbnail(&png(40, 20), 100).unwrap();
        let same = image::load_from_memory(&bytes).unwrap();
        assert_eq!((same.width(), same.height()), (40, 20));
    }

    #[test]
    fn text_and_truncated_images_are_not_images() {
        assert_eq!(
            thumbnail(b"just some text", 64).unwrap_err(),
            Refused::NotAnImage
        );
        let png = png(50, 50);
        assert_eq!(
            thumbnail(&png[..png.len() / 2], 64).unwrap_err(),
            Refused::NotAnImage
        );
    }
}
