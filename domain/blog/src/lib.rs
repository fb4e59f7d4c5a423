//! The blog bounded context.
//!
//! # Layout
//!
//! - [`Post`]: a post's text, tags and status: drafted, edited, tags changed, published,
//!   unpublished, deleted; only its author acts on it.
//! - [`Comment`]: one comment, its own aggregate so that a post's commands never load its
//!   comments; added only to a published post, deleted by its author or the post's author.
//! - [`markdown::render`]: Markdown to sanitized HTML, for the read model.
//!
//! Pure: no HTTP, SQL or NATS.

mod comment;
pub mod markdown;
mod post;

pub use chronicle_schemas::blog::{CommentEvent, PostEvent};
pub use comment::{check_comment, Comment, CommentCommand, CommentError, PostRef, MAX_COMMENT};
pub use post::{
    check_body, check_title, normalize_tags, Post, PostCommand, PostError, MAX_BODY, MAX_TAG,
    MAX_TAGS, MAX_TITLE,
};
