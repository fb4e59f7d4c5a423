//! The files bounded context (API.md, Files): a [`File`] names its bytes by their SHA-256
//! and belongs to its owner; an [`Upload`] collects a declared number of bytes in chunks, in
//! any order, and completes only when every chunk is in and the bytes hash as declared; a
//! [`Share`] serves a file without authentication until it expires or is revoked.
//!
//! No I/O and no bytes: the gateway streams and hashes the bytes into the object store and
//! tells these aggregates what it saw. The limits every input must meet live here, for the
//! gateway to run before it builds a command (DESIGN.md invariant 7).

mod file;
mod share;
mod tus;
mod upload;

pub use chronicle_schemas::files::{FileEvent, ShareEvent, TusUploadEvent, UploadEvent};
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
