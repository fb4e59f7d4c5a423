use chronicle_schemas::{blog::PostEvent, AggregateKind};
use serde::{Deserialize, Serialize};

/// Longest title, in characters.
pub const MAX_TITLE: usize = 200;
/// Longest body, in characters of Markdown.
pub const MAX_BODY: usize = 100_000;
/// Most tags on a post.
pub const MAX_TAGS: usize = 10;
/// Longest tag, in characters.
pub const MAX_TAG: usize = 32;

/// What can be asked of a post. `by` is the caller's user id: only the author acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostCommand {
    Draft {
        post_id: String,
        author_id: String,
        title: String,
        body_markdown: String,
        tags: Vec<String>,
    },
    /// Change any of the three; what is `None` stays.
    Edit {
        by: String,
        title: Option<String>,
        body_markdown: Option<String>,
        tags: Option<Vec<String>>,
    },
    Publish {
        by: String,
    },
    Unpublish {
        by: String,
    },
    Delete {
        by: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    #[error("no such post")]
    NotFound,
    #[error("the post already exists")]
    PostExists,
    #[error("only the post's author may do this")]
    NotAuthor,
    #[error("a title is 1 to {MAX_TITLE} characters, not blank, without control characters")]
    InvalidTitle,
    #[error(
        "a body is at most {MAX_BODY} characters, without control characters but tab and newlines"
    )]
    InvalidBody,
    #[error("at most {MAX_TAGS} tags, each 1 to {MAX_TAG} characters of a-z, 0-9 and '-'")]
    InvalidTags,
}

chronicle_schemas::domain_rules!(PostError {
    Self::NotFound => NotFound,
    Self::PostExists => Conflict("post_exists"),
    Self::NotAuthor => Forbidden,
    Self::InvalidTitle => Invalid("title"),
    Self::InvalidBody => Invalid("body_markdown"),
    Self::InvalidTags => Invalid("tags"),
});

/// Tags as the blog keeps them: trimmed, lower case, sorted, each once.
///
/// # Errors
/// [`PostError::InvalidTags`] when there are too many or one is malformed.
pub fn normalize_tags(tags: &[String]) -> Result<Vec<String>, PostError> {
    let mut normalized: Vec<String> = tags.iter().map(|t| t.trim().to_lowercase()).collect();
    normalized.sort();
    normalized.dedup();
    let valid = |tag: &String| {
        (1..=MAX_TAG).contains(&tag.chars().count())
            && tag
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if normalized.len() > MAX_TAGS || !normalized.iter().all(valid) {
        return Err(PostError::InvalidTags);
    }
    Ok(normalized)
}

/// # Errors
/// [`PostError::InvalidTitle`].
pub fn check_title(title: &str) -> Result<(), PostError> {
    chronicle_schemas::limits::text("title", title, 1, MAX_TITLE)
        .map_err(|_| PostError::InvalidTitle)
}

/// # Errors
/// [`PostError::InvalidBody`].
pub fn check_body(body: &str) -> Result<(), PostError> {
    chronicle_schemas::limits::text("body_markdown", body, 0, MAX_BODY)
        .map_err(|_| PostError::InvalidBody)
}

/// A blog post. It holds its text and status, never its comments (each comment is its own
/// aggregate), so its commands cost the same with 0 or 10,000 comments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    created: bool,
    deleted: bool,
    author_id: String,
    title: String,
    body_markdown: String,
    tags: Vec<String>,
    published: bool,
}

impl Post {
    /// Drafted and not deleted.
    pub fn exists(&self) -> bool {
        self.created && !self.deleted
    }
    pub fn author_id(&self) -> &str {
        &self.author_id
    }
    pub fn is_published(&self) -> bool {
        self.published
    }

    fn check_author(&self, by: &str) -> Result<(), PostError> {
        if by == self.author_id {
            Ok(())
        } else {
            Err(PostError::NotAuthor)
        }
    }

    fn decide(&self, command: PostCommand) -> Result<Vec<PostEvent>, PostError> {
        use PostCommand as C;
        use PostEvent as E;
        if let C::Draft {
            post_id,
            author_id,
            title,
            body_markdown,
            tags,
        } = command
        {
            if self.created {
                return Err(PostError::PostExists);
            }
            check_title(&title)?;
            check_body(&body_markdown)?;
            return Ok(vec![E::PostDrafted {
                post_id,
                author_id,
                title,
                body_markdown,
                tags: normalize_tags(&tags)?,
            }]);
        }
        if !self.exists() {
            return Err(PostError::NotFound);
        }
        match command {
            C::Draft { .. } => Err(PostError::PostExists),
            C::Edit {
                by,
                title,
                body_markdown,
                tags,
            } => {
                self.check_author(&by)?;
                let title = title.unwrap_or_else(|| self.title.clone());
                let body_markdown = body_markdown.unwrap_or_else(|| self.body_markdown.clone());
                check_title(&title)?;
                check_body(&body_markdown)?;
                let tags = tags.map(|t| normalize_tags(&t)).transpose()?;
                let mut events = Vec::new();
                if title != self.title || body_markdown != self.body_markdown {
                    events.push(E::PostEdited {
                        title,
                        body_markdown,
                    });
                }
                if let Some(tags) = tags.filter(|t| *t != self.tags) {
                    events.push(E::TagsChanged { tags });
                }
                Ok(events)
            }
            C::Publish { by } => {
                self.check_author(&by)?;
                Ok(if self.published {
                    vec![]
                } else {
                    vec![E::PostPublished {}]
                })
            }
            C::Unpublish { by } => {
                self.check_author(&by)?;
                Ok(if self.published {
                    vec![E::PostUnpublished {}]
                } else {
                    vec![]
                })
            }
            C::Delete { by } => {
                self.check_author(&by)?;
                Ok(vec![E::PostDeleted {}])
            }
        }
    }
}

impl AggregateKind for Post {
    const CONTEXT: &'static str = "blog";
}

chronicle_schemas::decided_aggregate!(Post: "post", PostCommand => PostEvent, PostError);

impl Post {
    fn apply_event(&mut self, event: PostEvent) {
        match event {
            PostEvent::PostDrafted {
                author_id,
                title,
                body_markdown,
                tags,
                ..
            } => {
                self.created = true;
                self.author_id = author_id;
                self.title = title;
                self.body_markdown = body_markdown;
                self.tags = tags;
            }
            PostEvent::PostEdited {
                title,
                body_markdown,
            } => {
                self.title = title;
                self.body_markdown = body_markdown;
            }
            PostEvent::TagsChanged { tags } => self.tags = tags,
            PostEvent::PostPublished {} => self.published = true,
            PostEvent::PostUnpublished {} => self.published = false,
            PostEvent::PostDeleted {} => {
                self.deleted = true;
                self.published = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use PostCommand as C;
    use PostEvent as E;

    type Given = TestFramework<Post>;

    fn drafted() -> E {
        E::PostDrafted {
            post_id: "p-1".into(),
            author_id: "ann".into(),
            title: "Hello".into(),
            body_markdown: "First *post*".into(),
            tags: vec!["intro".into(), "rust".into()],
        }
    }

    fn given() -> Given {
        Given::with(())
    }

    #[test]
    fn drafting_normalizes_the_tags() {
        given()
            .given_no_previous_events()
            .when(C::Draft {
                post_id: "p-1".into(),
                author_id: "ann".into(),
                title: "Hello".into(),
                body_markdown: "First *post*".into(),
                tags: vec!["Rust".into(), " intro ".into(), "rust".into()],
            })
            .then_expect_events(vec![drafted()]);
    }

    #[test]
    fn a_blank_title_an_oversized_body_or_bad_tags_are_refused() {
        let draft = |title: &str, body: String, tags: Vec<String>| C::Draft {
            post_id: "p-1".into(),
            author_id: "ann".into(),
            title: title.into(),
            body_markdown: body,
            tags,
        };
        given()
            .given_no_previous_events()
            .when(draft("  ", String::new(), vec![]))
            .then_expect_error(PostError::InvalidTitle);
        given()
            .given_no_previous_events()
            .when(draft("t", "x".repeat(MAX_BODY + 1), vec![]))
            .then_expect_error(PostError::InvalidBody);
        given()
            .given_no_previous_events()
            .when(draft("t", String::new(), vec!["no spaces".into()]))
            .then_expect_error(PostError::InvalidTags);
        given()
            .given_no_previous_events()
            .when(draft(
                "t",
                String::new(),
                (0..=MAX_TAGS).map(|i| format!("t{i}")).collect(),
            ))
            .then_expect_error(PostError::InvalidTags);
    }

    #[test]
    fn only_the_author_edits_publishes_unpublishes_or_deletes() {
        for command in [
            C::Edit {
                by: "eve".into(),
                title: Some("Mine now".into()),
                body_markdown: None,
                tags: None,
            },
            C::Publish { by: "eve".into() },
            C::Unpublish { by: "eve".into() },
            C::Delete { by: "eve".into() },
        ] {
            given()
                .given(vec![drafted()])
                .when(command)
                .then_expect_error(PostError::NotAuthor);
        }
    }

    #[test]
    fn an_edit_records_what_changed_and_nothing_when_nothing_did() {
        given()
            .given(vec![drafted()])
            .when(C::Edit {
                by: "ann".into(),
                title: None,
                body_markdown: Some("Second draft".into()),
                tags: Some(vec!["rust".into()]),
            })
            .then_expect_events(vec![
                E::PostEdited {
                    title: "Hello".into(),
                    body_markdown: "Second draft".into(),
                },
                E::TagsChanged {
                    tags: vec!["rust".into()],
                },
            ]);
        given()
            .given(vec![drafted()])
            .when(C::Edit {
                by: "ann".into(),
                title: Some("Hello".into()),
                body_markdown: None,
                tags: Some(vec!["RUST".into(), "intro".into()]),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn publishing_and_unpublishing_happen_once_each() {
        given()
            .given(vec![drafted()])
            .when(C::Publish { by: "ann".into() })
            .then_expect_events(vec![E::PostPublished {}]);
        given()
            .given(vec![drafted(), E::PostPublished {}])
            .when(C::Publish { by: "ann".into() })
            .then_expect_events(vec![]);
        given()
            .given(vec![drafted(), E::PostPublished {}])
            .when(C::Unpublish { by: "ann".into() })
            .then_expect_events(vec![E::PostUnpublished {}]);
        given()
            .given(vec![drafted()])
            .when(C::Unpublish { by: "ann".into() })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_deleted_post_is_gone_for_every_command() {
        given()
            .given(vec![drafted()])
            .when(C::Delete { by: "ann".into() })
            .then_expect_events(vec![E::PostDeleted {}]);
        given()
            .given(vec![drafted(), E::PostDeleted {}])
            .when(C::Publish { by: "ann".into() })
            .then_expect_error(PostError::NotFound);
        given()
            .given(vec![drafted(), E::PostDeleted {}])
            .when(C::Draft {
                post_id: "p-1".into(),
                author_id: "ann".into(),
                title: "Again".into(),
                body_markdown: String::new(),
                tags: vec![],
            })
            .then_expect_error(PostError::PostExists);
    }

    #[test]
    fn commands_on_a_post_never_drafted_are_not_found() {
        given()
            .given_no_previous_events()
            .when(C::Publish { by: "ann".into() })
            .then_expect_error(PostError::NotFound);
    }
}
