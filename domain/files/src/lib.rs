//! The files bounded context (the API contract, Files): a [`File`] names its bytes by their SHA-256
//! and belongs to its owner; an [`Upload`] collects a declared number of bytes in chunks, in
//! any order, and completes only when every chunk is in and the bytes hash as declared; a
//! [`Share`] serves a file without authentication until it expires or is revoked.
//!
//! No I/O and no bytes: the gateway streams and hashes the bytes into the object store and
//! tells these aggregates what it saw. The limits every input must meet live here, for the
//! gateway to run before it builds a command (architecture.md invariant 7).

mod declared;
mod file;
mod share;
mod tus;
mod upload;

pub use chronicle_schemas::files::{FileEvent, ShareEvent, TusUploadEvent, UploadEvent};
pub use declared::Declared;
pub use file::{File, FileCommand, FileError};
pub use share::{Share, ShareCommand, ShareError, Unserved, MAX_SHARE_SECONDS};
pub use tus::{Segment, TusCommand, TusError, TusUpload, MAX_TUS_SEGMENTS};
pub use upload::{Upload, UploadCommand, UploadError, MAX_CHUNKS, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};

use chronicle_schemas::limits::{self, Invalid};

/// Largest file, in bytes (5 GiB).
pub const MAX_FILE_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Longest file name, in characters.
pub const MAX_NAME: usize = 255;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE: usize = 127;

/// A file name: 1 to [`MAX_NAME`] characters, no control characters (NUL included), no path
/// separator, not `.` or `..`: a name is never a path, wherever it is later written.
///
/// # Errors
/// [`Invalid`] for `name`.
pub fn check_name(name: &str) -> Result<(), Invalid> {
    limits::text("name", name, 1, MAX_NAME)?;
    if name.contains(['/', '\\'])
        || name == "."
        || name == ".."
        || name.chars().any(char::is_control)
    {
        return Err(Invalid::new(
            "name",
            "a file name, not a path: no '/' or '\\', not '.' or '..'",
        ));
    }
    Ok(())
}

/// A SHA-256 as 64 lowercase hex digits.
///
/// # Errors
/// [`Invalid`] for `field`.
pub fn check_sha256(field: &str, hash: &str) -> Result<(), Invalid> {
    if hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(Invalid::new(field, "64 lowercase hex digits (a SHA-256)"))
    }
}

/// A content type: `type/subtype`, optionally with parameters, in at most
/// [`MAX_CONTENT_TYPE`] visible ASCII characters and spaces.
///
/// # Errors
/// [`Invalid`] for `content_type`.
pub fn check_content_type(content_type: &str) -> Result<(), Invalid> {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    let valid = content_type.len() <= MAX_CONTENT_TYPE
        && content_type
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ')
        && essence
            .split_once('/')
            .is_some_and(|(kind, subtype)| token(kind) && token(subtype));
    if valid {
        Ok(())
    } else {
        Err(Invalid::new(
            "content_type",
            "a media type such as text/plain, at most 127 characters",
        ))
    }
}

/// A size of 1 byte to [`MAX_FILE_SIZE`].
///
/// # Errors
/// [`Invalid`] for `size`.
/// The widths thumbnails are made in: a width asked for is served by the smallest of these
/// at least as wide, so each image has at most this many thumbnails, made once each.
pub const THUMBNAIL_WIDTHS: [u32; 6] = [32, 64, 128, 256, 512, 1024];
/// The largest image thumbnailed, in bytes (it is read whole to be decoded).
pub const MAX_THUMBNAIL_SOURCE_BYTES: u64 = 32 * 1024 * 1024;
/// The most pixels an image thumbnailed may declare: a decompression bomb (a small file
/// declaring a huge image) is refused from its header, never decoded.
pub const MAX_THUMBNAIL_SOURCE_PIXELS: u64 = 40_000_000;
/// The longest side an image thumbnailed may declare.
pub const MAX_THUMBNAIL_SOURCE_SIDE: u32 = 20_000;

/// The thumbnail width that serves `asked` (1 to the largest of [`THUMBNAIL_WIDTHS`]).
pub fn thumbnail_width(asked: u32) -> Result<u32, Invalid> {
    THUMBNAIL_WIDTHS
        .iter()
        .copied()
        .find(|w| asked >= 1 && *w >= asked)
        .ok_or_else(|| {
            Invalid::new(
                "width",
                format!(
                    "1 to {} pixels",
                    THUMBNAIL_WIDTHS[THUMBNAIL_WIDTHS.len() - 1]
                ),
            )
        })
}

/// How a thumbnail fills its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fit {
    /// The whole picture, inside the box, the aspect ratio kept (never larger than the
    /// picture): one side may be shorter than the box's.
    Contain,
    /// Exactly the box: the picture scaled to cover it, the overflow cropped around the
    /// centre (a picture smaller than the box is scaled up).
    Cover,
}

/// The box a thumbnail is made for: each side snapped up to [`THUMBNAIL_WIDTHS`], so an
/// image has at most [`ThumbnailBox::all`] thumbnails, made once each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThumbnailBox {
    pub width: u32,
    pub height: u32,
    pub fit: Fit,
}

impl ThumbnailBox {
    /// The box asked for by `?width=&height=&fit=`: a side left out is the other's (a
    /// square; 256 when both are), `fit` is `contain` (the default) or `cover`.
    ///
    /// # Errors
    /// [`Invalid`] naming `width`, `height` or `fit`.
    pub fn asked(
        width: Option<u32>,
        height: Option<u32>,
        fit: Option<&str>,
    ) -> Result<Self, Invalid> {
        let fit = match fit {
            None | Some("contain") => Fit::Contain,
            Some("cover") => Fit::Cover,
            Some(_) => return Err(Invalid::new("fit", "contain or cover")),
        };
        let (width, height) = match (width, height) {
            (None, None) => (256, 256),
            (Some(w), None) => (w, w),
            (None, Some(h)) => (h, h),
            (Some(w), Some(h)) => (w, h),
        };
        let width = thumbnail_width(width)?;
        let height = thumbnail_width(height).map_err(|e| Invalid::new("height", e.message))?;
        Ok(Self { width, height, fit })
    }

    /// The name this box's thumbnail has beside the bytes' (`<width>` for a square that
    /// contains, the name thumbnails had before boxes; `<width>x<height>.<fit>` otherwise).
    pub fn suffix(&self) -> String {
        match self.fit {
            Fit::Contain if self.width == self.height => self.width.to_string(),
            Fit::Contain => format!("{}x{}.contain", self.width, self.height),
            Fit::Cover => format!("{}x{}.cover", self.width, self.height),
        }
    }

    /// Every box a thumbnail can be made for (what is removed with the bytes).
    pub fn all() -> impl Iterator<Item = Self> {
        [Fit::Contain, Fit::Cover].into_iter().flat_map(|fit| {
            THUMBNAIL_WIDTHS.into_iter().flat_map(move |width| {
                THUMBNAIL_WIDTHS
                    .into_iter()
                    .map(move |height| Self { width, height, fit })
            })
        })
    }
}

pub fn check_size(size: u64) -> Result<(), Invalid> {
    limits::in_range("size", size.into(), 1, MAX_FILE_SIZE.into())
}

/// An owner, sharer or uploader id: 1 to 64 characters of `0-9`, `a-z`, `A-Z` and `-`.
fn valid_user_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_widths_snap_up_and_are_bounded() {
        assert_eq!(thumbnail_width(1), Ok(32));
        assert_eq!(thumbnail_width(32), Ok(32));
        assert_eq!(thumbnail_width(33), Ok(64));
        assert_eq!(thumbnail_width(1024), Ok(1024));
        assert!(thumbnail_width(0).is_err());
        assert!(thumbnail_width(1025).is_err());
        assert!(thumbnail_width(u32::MAX).is_err());
    }

    #[test]
    fn a_box_snaps_each_side_up_defaults_to_a_square_and_names_its_thumbnail() {
        let square = ThumbnailBox::asked(Some(100), None, None).unwrap();
        assert_eq!(
            (square.width, square.height, square.fit),
            (128, 128, Fit::Contain)
        );
        assert_eq!(square.suffix(), "128", "the name a width alone always had");
        let default = ThumbnailBox::asked(None, None, None).unwrap();
        assert_eq!((default.width, default.height), (256, 256));
        let tall = ThumbnailBox::asked(None, Some(40), Some("cover")).unwrap();
        assert_eq!(
            (tall.width, tall.height, tall.suffix().as_str()),
            (64, 64, "64x64.cover")
        );
        let wide = ThumbnailBox::asked(Some(512), Some(100), Some("contain")).unwrap();
        assert_eq!(wide.suffix(), "512x128.contain");
        for (width, height, fit, field) in [
            (Some(0), None, None, "width"),
            (Some(64), Some(0), None, "height"),
            (Some(64), Some(2000), None, "height"),
            (Some(u32::MAX), Some(64), None, "width"),
            (Some(64), Some(64), Some("stretch"), "fit"),
            (Some(64), Some(64), Some(""), "fit"),
        ] {
            let refused = ThumbnailBox::asked(width, height, fit).unwrap_err();
            assert_eq!(refused.field, field, "{width:?} {height:?} {fit:?}");
        }
        // Every box that can be asked for is among those removed with the bytes.
        let all: std::collections::HashSet<String> =
            ThumbnailBox::all().map(|b| b.suffix()).collect();
        assert_eq!(all.len(), 72);
        for width in [1, 33, 200, 1024] {
            for height in [None, Some(1), Some(700)] {
                for fit in [None, Some("contain"), Some("cover")] {
                    let asked = ThumbnailBox::asked(Some(width), height, fit).unwrap();
                    assert!(all.contains(&asked.suffix()), "{asked:?}");
                }
            }
        }
    }

    #[test]
    fn a_name_is_never_a_path_nor_hostile_text() {
        for bad in [
            "",
            " ",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "a\u{0}b",
            "a\nb",
            "\u{1b}[31mred",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(MAX_NAME + 1)).is_err());
        assert!(check_name(&"x".repeat(10_000)).is_err());
        for good in ["report.pdf", "..hidden", "日本語.txt", "a b (1).png"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn hashes_and_content_types_have_one_spelling() {
        assert!(check_sha256("sha256", &"a".repeat(64)).is_ok());
        assert!(check_sha256("sha256", &"A".repeat(64)).is_err());
        assert!(check_sha256("sha256", &"a".repeat(63)).is_err());
        assert!(check_sha256("sha256", &"g".repeat(64)).is_err());
        for good in [
            "text/plain",
            "image/png",
            "text/plain; charset=utf-8",
            "application/vnd.a+json",
        ] {
            assert!(check_content_type(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "text",
            "/plain",
            "text/",
            "text/pl ain",
            "text/plain\u{0}",
            "tëxt/plain",
        ] {
            assert!(check_content_type(bad).is_err(), "{bad:?}");
        }
        assert!(check_content_type(&format!("text/{}", "x".repeat(200))).is_err());
        assert!(check_size(0).is_err());
        assert!(check_size(MAX_FILE_SIZE).is_ok());
        assert!(check_size(MAX_FILE_SIZE + 1).is_err());
        assert!(check_size(u64::MAX).is_err());
    }
}
