use chronicle_schemas::{blog::CommentEvent, AggregateKind};
use serde::{Deserialize, Serialize};

/// Longest comment, in characters.
pub const MAX_COMMENT: usize = 5_000;

/// A comment's text: 1 to [`MAX_COMMENT`] characters, not blank, no control characters
/// but tab and newlines.
///
/// # Errors
/// [`CommentError::InvalidBody`].
pub fn check_comment(body: &str) -> Result<(), CommentError> {
    chronicle_schemas::limits::text("body", body, 1, MAX_COMMENT)
        .map_err(|_| CommentError::InvalidBody)
}

/// What a comment needs to know of its post when it is added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostRef {
    pub post_id: String,
    pub author_id: String,
    pub published: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommentCommand {
    Add {
        comment_id: String,
        post: PostRef,
        author_id: String,
        body: String,
    },
    /// By the comment's author or the post's author.
    Delete { by: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommentError {
    #[error("no such comment")]
    NotFound,
    #[error("the comment already exists")]
    CommentExists,
    #[error("comments are only taken on published posts")]
    PostNotPublished,
    #[error("a comment is 1 to {MAX_COMMENT} characters, not blank, without control characters")]
    InvalidBody,
    #[error("only the comment's author or the post's author may delete it")]
    NotAllowed,
}

chronicle_schemas::domain_rules!(CommentError {
    Self::NotFound => NotFound,
    Self::CommentExists => Conflict("comment_exists"),
    Self::PostNotPublished => Conflict("post_not_published"),
    Self::InvalidBody => Invalid("body"),
    Self::NotAllowed => Forbidden,
});

/// One comment on a post.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    created: bool,
    deleted: bool,
    post_id: String,
    post_author_id: String,
    author_id: String,
}

impl Comment {
    /// Added and not deleted.
    pub fn exists(&self) -> bool {
        self.created && !self.deleted
    }
    pub fn post_id(&self) -> &str {
        &self.post_id
    }

    fn decide(&self, command: CommentCommand) -> Result<Vec<CommentEvent>, CommentError> {
        match command {
            CommentCommand::Add {
                comment_id,
                post,
                author_id,
                body,
            } => {
                if self.created {
                    return Err(CommentError::CommentExists);
                }
                if !post.published {
                    return Err(CommentError::PostNotPublished);
                }
                check_comment(&body)?;
                Ok(vec![CommentEvent::CommentAdded {
                    comment_id,
                    post_id: post.post_id,
                    post_author_id: post.author_id,
                    author_id,
                    body_markdown: body,
                }])
            }
            CommentCommand::Delete { by } => {
                if !self.exists() {
                    return Err(CommentError::NotFound);
                }
                if by != self.author_id && by != self.post_author_id {
                    return Err(CommentError::NotAllowed);
                }
                Ok(vec![CommentEvent::CommentDeleted {}])
            }
        }
    }
}

impl AggregateKind for Comment {
    const CONTEXT: &'static str = "blog";
}

chronicle_schemas::decided_aggregate!(Comment: "comment", CommentCommand => CommentEvent, CommentError);

impl Comment {
    fn apply_event(&mut self, event: CommentEvent) {
        match event {
            CommentEvent::CommentAdded {
                post_id,
                post_author_id,
                author_id,
                ..
            } => {
                self.created = true;
                self.post_id = post_id;
                self.post_author_id = post_author_id;
                self.author_id = author_id;
            }
            CommentEvent::CommentDeleted {} => self.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use CommentCommand as C;
    use CommentEvent as E;

    type Given = TestFramework<Comment>;

    fn post(published: bool) -> PostRef {
        PostRef {
            post_id: "p-1".into(),
            author_id: "ann".into(),
            published,
        }
    }

    fn add(published: bool, body: &str) -> C {
        C::Add {
            comment_id: "c-1".into(),
            post: post(published),
            author_id: "bob".into(),
            body: body.into(),
        }
    }

    fn added() -> E {
        E::CommentAdded {
            comment_id: "c-1".into(),
            post_id: "p-1".into(),
            post_author_id: "ann".into(),
            author_id: "bob".into(),
            body_markdown: "Nice".into(),
        }
    }

    #[test]
    fn a_comment_is_added_to_a_published_post_only() {
        Given::with(())
            .given_no_previous_events()
            .when(add(true, "Nice"))
            .then_expect_events(vec![added()]);
        Given::with(())
            .given_no_previous_events()
            .when(add(false, "Nice"))
            .then_expect_error(CommentError::PostNotPublished);
    }

    #[test]
    fn a_blank_or_oversized_comment_is_refused() {
        Given::with(())
            .given_no_previous_events()
            .when(add(true, "   "))
            .then_expect_error(CommentError::InvalidBody);
        Given::with(())
            .given_no_previous_events()
            .when(add(true, &"x".repeat(MAX_COMMENT + 1)))
            .then_expect_error(CommentError::InvalidBody);
    }

    #[test]
    fn the_comment_author_or_the_post_author_deletes_and_nobody_else() {
        for by in ["bob", "ann"] {
            Given::with(())
                .given(vec![added()])
                .when(C::Delete { by: by.into() })
                .then_expect_events(vec![E::CommentDeleted {}]);
        }
        Given::with(())
            .given(vec![added()])
            .when(C::Delete { by: "eve".into() })
            .then_expect_error(CommentError::NotAllowed);
        Given::with(())
            .given(vec![added(), E::CommentDeleted {}])
            .when(C::Delete { by: "bob".into() })
            .then_expect_error(CommentError::NotFound);
    }
}
