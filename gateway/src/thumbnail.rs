//! Thumbnails of images (the API contract, Files): made within the domain's limits, from the image's
//! header first, so a decompression bomb is refused before a pixel is decoded.

use std::io::Cursor;

use chronicle_files::{Fit, ThumbnailBox, MAX_THUMBNAIL_SOURCE_PIXELS, MAX_THUMBNAIL_SOURCE_SIDE};

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

/// A thumbnail for `within` (see [`Fit`]): its bytes and media type (PNG for images that may
/// have transparency, JPEG for JPEGs).
///
/// # Errors
/// [`Refused`]: not an image, or an image past the limits (checked from its header first).
pub fn thumbnail(bytes: &[u8], within: ThumbnailBox) -> Result<(Vec<u8>, &'static str), Refused> {
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
    let (width, height) = (within.width, within.height);
    let small = match within.fit {
        // Inside the box, the aspect ratio kept; never larger than the image.
        Fit::Contain if image.width() <= width && image.height() <= height => image,
        Fit::Contain => image.thumbnail(width, height),
        // Exactly the box: scaled to cover it, the overflow cut off around the centre.
        Fit::Cover => image.resize_to_fill(width, height, image::imageops::FilterType::Triangle),
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

    fn contain(side: u32) -> ThumbnailBox {
        ThumbnailBox {
            width: side,
            height: side,
            fit: Fit::Contain,
        }
    }

    fn dimensions(bytes: &[u8]) -> (u32, u32) {
        let image = image::load_from_memory(bytes).unwrap();
        (image.width(), image.height())
    }

    #[test]
    fn a_thumbnail_keeps_the_aspect_ratio_and_never_upscales() {
        let (bytes, media_type) = thumbnail(&png(400, 200), contain(100)).unwrap();
        assert_eq!(media_type, "image/png");
        let small = image::load_from_memory(&bytes).unwrap();
        assert_eq!((small.width(), small.height()), (100, 50));
        let (bytes, _) = thumbnail(&png(40, 20), contain(100)).unwrap();
        let same = image::load_from_memory(&bytes).unwrap();
        assert_eq!((same.width(), same.height()), (40, 20));
        // A tall image fits the square: its thumbnail is bounded both ways.
        let (bytes, _) = thumbnail(&png(100, 2000), contain(64)).unwrap();
        let tall = image::load_from_memory(&bytes).unwrap();
        assert_eq!((tall.width(), tall.height()), (3, 64));
    }

    #[test]
    fn a_box_is_contained_or_covered_around_the_centre() {
        let wide = ThumbnailBox {
            width: 128,
            height: 64,
            fit: Fit::Contain,
        };
        // 400x200 inside 128x64: 128x64; 200x400 inside it: 32x64.
        assert_eq!(
            dimensions(&thumbnail(&png(400, 200), wide).unwrap().0),
            (128, 64)
        );
        assert_eq!(
            dimensions(&thumbnail(&png(200, 400), wide).unwrap().0),
            (32, 64)
        );
        let square = ThumbnailBox {
            width: 64,
            height: 64,
            fit: Fit::Cover,
        };
        // Exactly the box, whatever the picture's shape, and a small one scaled up.
        for (w, h) in [(400, 200), (200, 400), (64, 64), (20, 10)] {
            assert_eq!(
                dimensions(&thumbnail(&png(w, h), square).unwrap().0),
                (64, 64),
                "{w}x{h}"
            );
        }
        // Cropped around the centre: a picture red on its left and right quarters, blue in
        // the middle half, covers a square with blue only.
        let striped = image::RgbaImage::from_fn(400, 100, |x, _| {
            if (100..300).contains(&x) {
                image::Rgba([0, 0, 255, 255])
            } else {
                image::Rgba([255, 0, 0, 255])
            }
        });
        let mut bytes = Cursor::new(Vec::new());
        striped
            .write_to(&mut bytes, image::ImageFormat::Png)
            .unwrap();
        let (covered, _) = thumbnail(bytes.get_ref(), square).unwrap();
        let covered = image::load_from_memory(&covered).unwrap().to_rgba8();
        for x in [0, 32, 63] {
            let pixel = covered.get_pixel(x, 32);
            assert!(
                pixel[2] > 200 && pixel[0] < 60,
                "column {x} is {pixel:?}, not the centre's blue"
            );
        }
    }

    #[test]
    fn text_and_truncated_images_are_not_images() {
        assert_eq!(
            thumbnail(b"just some text", contain(64)).unwrap_err(),
            Refused::NotAnImage
        );
        let png = png(50, 50);
        assert_eq!(
            thumbnail(&png[..png.len() / 2], contain(64)).unwrap_err(),
            Refused::NotAnImage
        );
    }
}
