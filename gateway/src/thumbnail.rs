//! Thumbnails of images (API.md, Files): made within the domain's limits, from the image's
//! header first, so a decompression bomb is refused before a pixel is decoded.

use std::io::Cursor;

use chronicle_files::{MAX_THUMBNAIL_SOURCE_PIXELS, MAX_THUMBNAIL_SOURCE_SIDE};

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

/// A thumbnail within a `width` square (never larger than the image), the aspect ratio kept:
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
    // Within a `width` square, the aspect ratio kept; never larger than the image.
    let small = if image.width() <= width && image.height() <= width {
        image
    } else {
        image.thumbnail(width, width)
    };
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
        // A tall image fits the square: its thumbnail is bounded both ways.
        let (bytes, _) = thumbnail(&png(100, 2000), 64).unwrap();
        let tall = image::load_from_memory(&bytes).unwrap();
        assert_eq!((tall.width(), tall.height()), (3, 64));
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
