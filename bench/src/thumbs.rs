//! Thumbnails (issue 12): how long the gateway's `thumbnail` (the `image` crate: decode,
//! resize with a triangle filter, encode) takes for a 12-megapixel photo, JPEG and PNG, at
//! two widths, and how much of it is decoding. CPU only; no server.

use std::{io::Cursor, time::Instant};

use serde_json::json;

/// A 4000 x 3000 image with gradients and noise (JPEG and PNG compress it as they would a
/// photo, not a flat colour).
fn photo() -> image::RgbImage {
    let mut seed = 0x2545_f491_u32;
    image::RgbImage::from_fn(4000, 3000, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let noise = (seed & 0x1f) as u8;
        image::Rgb([
            ((x / 16) as u8).wrapping_add(noise),
            ((y / 12) as u8).wrapping_add(noise),
            (((x + y) / 28) as u8).wrapping_add(noise),
        ])
    })
}

fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[2] * 10.0).round() / 10.0
}

/// Prints one line per format and box (a width in a square, contained or covered).
///
/// # Errors
/// When an image cannot be encoded or thumbnailed.
pub fn run() -> anyhow::Result<()> {
    let photo = photo();
    for format in [image::ImageFormat::Jpeg, image::ImageFormat::Png] {
        let mut encoded = Cursor::new(Vec::new());
        photo.write_to(&mut encoded, format)?;
        let bytes = encoded.into_inner();
        let decode = median_ms(|| {
            let _ = image::load_from_memory(&bytes);
        });
        for (width, fit) in [
            (256, chronicle_files::Fit::Contain),
            (1024, chronicle_files::Fit::Contain),
            (256, chronicle_files::Fit::Cover),
        ] {
            let within = chronicle_files::ThumbnailBox {
                width,
                height: width,
                fit,
            };
            let mut made = 0;
            let total = median_ms(|| {
                made = chronicle_gateway::thumbnail::thumbnail(&bytes, within)
                    .map(|(t, _)| t.len())
                    .unwrap_or(0);
            });
            anyhow::ensure!(made > 0, "no thumbnail");
            println!(
                "{}",
                json!({"system": "chronicle", "workload": "thumbnails", "format": format!("{format:?}"),
                    "source_pixels": "4000x3000", "source_bytes": bytes.len(), "width": width,
                    "fit": format!("{fit:?}").to_lowercase(),
                    "ms_median_of_5": total, "ms_decode_median_of_5": decode,
                    "thumbnail_bytes": made})
            );
        }
    }
    Ok(())
}
