//! Events of the blog bounded context. Posts carry their Markdown source; the rendered,
//! sanitized HTML is derived by the read model.

use serde::{Deserialize, Serialize};

/// Everything that can happen to a post (aggregate type `post`, id = a UUID v7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PostEvent {
    /// The author started the post; it is a draft, seen by its author only.
    PostDrafted {
        post_id: String,
        author_id: String,
        title: String,
        body_markdown: String,
        /// Normalized: lower case, sorted, no duplicates.
        tags: Vec<String>,
    },
    /// The title or body changed; both carry their new values.
    PostEdited {
        title: String,
        body_markdown: String,
    },
    TagsChanged {
        tags: Vec<String>,
    },
    PostPublished {},
    /// Back to a draft.
    PostUnpublished {},
    /// Gone, with its comments.
    PostDeleted {},
}

event_types!(PostEvent:
    PostDrafted,
    PostEdited,
    TagsChanged,
    PostPublished,
    PostUnpublished,
    PostDeleted,
);

/// Everything that can happen to one comment (aggregate type `comment`, id = a UUID v7).
/// Each comment is its own small aggregate, so a post with thousands of comments costs
/// nothing to the post's commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CommentEvent {
    CommentAdded {
        comment_id: String,
        post_id: String,
        /// The post's author, who may delete any comment on it.
        post_author_id: String,
        author_id: String,
        /// Markdown, rendered and sanitized by the read model. (Version 1 called it `body`.)
        body_markdown: String,
    },
    CommentDeleted {},
}

event_types!(CommentEvent: CommentAdded, CommentDeleted);
