//! The `posts` read model: posts with rendered, sanitized HTML, tags, comment counts and a
//! full-text index; their comments; tag counts over published posts.

use std::collections::BTreeSet;

use chronicle_blog::{markdown, Comment, CommentEvent, Post, PostEvent};
use chronicle_schemas::{AggregateKind, Envelope};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::{Definition, Projection, ProjectionError};
use chronicle_commands::contexts;

/// The Postgres channel the projection notifies (payload: a post id) when a post's row or
/// its comments change, so caches in front of it can drop the entry.
pub const POSTS_CHANNEL: &str = "chronicle_posts";

/// A post as `GET /api/v1/posts/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PostView {
    pub id: String,
    pub author_id: String,
    pub title: String,
    pub body_markdown: String,
    pub body_html: String,
    pub tags: Vec<String>,
    /// `draft` or `published`.
    pub status: String,
    pub comment_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl PostView {
    pub fn is_published(&self) -> bool {
        self.status == "published"
    }
}

/// A comment as `GET /api/v1/posts/{id}/comments` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct CommentView {
    pub id: String,
    pub author_id: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// One tag and how many published posts carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TagCount {
    pub tag: String,
    pub count: i64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PostsProjection;

const DDL: &str = "CREATE TABLE IF NOT EXISTS posts (
    id            text PRIMARY KEY,
    author_id     text        NOT NULL,
    title         text        NOT NULL,
    body_markdown text        NOT NULL,
    body_html     text        NOT NULL,
    tags          text[]      NOT NULL,
    status        text        NOT NULL,
    comment_count bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    published_at  timestamptz,
    version       bigint      NOT NULL,
    search        tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A') ||
        setweight(to_tsvector('english', body_markdown), 'B')
    ) STORED
);
CREATE INDEX IF NOT EXISTS posts_search ON posts USING GIN (search);
CREATE INDEX IF NOT EXISTS posts_tags ON posts USING GIN (tags);
CREATE INDEX IF NOT EXISTS posts_published ON posts (published_at DESC, id DESC) WHERE status = 'published';
CREATE TABLE IF NOT EXISTS post_comments (
    id         text PRIMARY KEY,
    post_id    text        NOT NULL,
    author_id  text        NOT NULL,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS post_comments_by_post ON post_comments (post_id, id)";

const COLUMNS: &str = "id, author_id, title, body_markdown, body_html, tags, status, \
    comment_count, created_at, updated_at, published_at, version";

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> ProjectionError {
    ProjectionError::db(context)
}

impl Projection for PostsProjection {
    const DEFINITION: Definition =
        Definition::new("posts", contexts::BLOG, &["posts", "post_comments"], DDL)
            .reading(&[
                (Post::CONTEXT, Post::TYPE),
                (Comment::CONTEXT, Comment::TYPE),
            ])
            // A deleted post's comments go by their post.
            .indexed_while_rebuilt(&["post_comments_by_post"]);

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        let mut touched = BTreeSet::new();
        for envelope in events {
            if envelope.aggregate_type == Post::TYPE {
                apply_post(conn, envelope).await?;
                touched.insert(envelope.aggregate_id.clone());
            } else if envelope.aggregate_type == Comment::TYPE {
                if let Some(post_id) = apply_comment(conn, envelope).await? {
                    touched.insert(post_id);
                }
            }
        }
        if !touched.is_empty() {
            // Delivered when the batch commits.
            sqlx::query("SELECT pg_notify($1, id) FROM unnest($2::text[]) AS id")
                .bind(POSTS_CHANNEL)
                .bind(touched.into_iter().collect::<Vec<_>>())
                .execute(&mut *conn)
                .await
                .map_err(db("notifying post caches"))?;
        }
        Ok(())
    }
}

/// One post event; every update is guarded by the version, so a replayed event is a no-op.
async fn apply_post(conn: &mut PgConnection, envelope: &Envelope) -> Result<(), ProjectionError> {
    let id = &envelope.aggregate_id;
    let at = envelope.recorded_at;
    let version = ProjectionError::bigint(envelope.sequence)?;
    let update = |set: &str| {
        format!(
            "UPDATE posts SET {set}, updated_at = $2, version = $3 WHERE id = $1 AND version < $3"
        )
    };
    match envelope.decode::<PostEvent>()? {
        PostEvent::PostDrafted {
            author_id,
            title,
            body_markdown,
            tags,
            ..
        } => {
            sqlx::query(
                "INSERT INTO posts (id, author_id, title, body_markdown, body_html, tags, status, \
                   created_at, updated_at, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'draft', $7, $7, $8) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(author_id)
            .bind(title)
            .bind(&body_markdown)
            .bind(markdown::render(&body_markdown))
            .bind(tags)
            .bind(at)
            .bind(version)
            .execute(&mut *conn)
            .await
            .map_err(db("inserting a post"))?;
        }
        PostEvent::PostEdited {
            title,
            body_markdown,
        } => {
            sqlx::query(&update("title = $4, body_markdown = $5, body_html = $6"))
                .bind(id)
                .bind(at)
                .bind(version)
                .bind(title)
                .bind(&body_markdown)
                .bind(markdown::render(&body_markdown))
                .execute(&mut *conn)
                .await
                .map_err(db("editing a post"))?;
        }
        PostEvent::TagsChanged { tags } => {
            sqlx::query(&update("tags = $4"))
                .bind(id)
                .bind(at)
                .bind(version)
                .bind(tags)
                .execute(&mut *conn)
                .await
                .map_err(db("changing a post's tags"))?;
        }
        PostEvent::PostPublished {} => {
            sqlx::query(&update("status = 'published', published_at = $2"))
                .bind(id)
                .bind(at)
                .bind(version)
                .execute(&mut *conn)
                .await
                .map_err(db("publishing a post"))?;
        }
        PostEvent::PostUnpublished {} => {
            sqlx::query(&update("status = 'draft', published_at = NULL"))
                .bind(id)
                .bind(at)
                .bind(version)
                .execute(&mut *conn)
                .await
                .map_err(db("unpublishing a post"))?;
        }
        PostEvent::PostDeleted {} => {
            sqlx::query(
                "WITH gone AS (DELETE FROM posts WHERE id = $1 RETURNING id) \
                 DELETE FROM post_comments WHERE post_id IN (SELECT id FROM gone)",
            )
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(db("deleting a post"))?;
        }
    }
    Ok(())
}

/// One comment event: the post whose comments changed, if any did.
async fn apply_comment(
    conn: &mut PgConnection,
    envelope: &Envelope,
) -> Result<Option<String>, ProjectionError> {
    let id = &envelope.aggregate_id;
    let post_id: Option<String> = match envelope.decode::<CommentEvent>()? {
        CommentEvent::CommentAdded {
            post_id,
            author_id,
            body_markdown: body,
            ..
        } => {
            // Not on a post that was deleted meanwhile.
            sqlx::query_scalar(
                "WITH added AS ( \
                   INSERT INTO post_comments (id, post_id, author_id, body, created_at) \
                   SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM posts WHERE id = $2) \
                   ON CONFLICT (id) DO NOTHING RETURNING post_id) \
                 UPDATE posts SET comment_count = comment_count + 1 \
                 WHERE id IN (SELECT post_id FROM added) RETURNING id",
            )
            .bind(id)
            .bind(post_id)
            .bind(author_id)
            .bind(body)
            .bind(envelope.recorded_at)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db("adding a comment"))?
        }
        CommentEvent::CommentDeleted {} => sqlx::query_scalar(
            "WITH gone AS (DELETE FROM post_comments WHERE id = $1 RETURNING post_id) \
             UPDATE posts SET comment_count = comment_count - 1 \
             WHERE id IN (SELECT post_id FROM gone) RETURNING id",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("deleting a comment"))?,
    };
    Ok(post_id)
}

/// One post by id, draft or published.
///
/// # Errors
/// When the database fails.
pub async fn get(pool: &PgPool, id: &str) -> Result<Option<PostView>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM posts WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// What a list of published posts is narrowed to.
#[derive(Debug, Clone, Default)]
pub struct PostFilter<'a> {
    pub tag: Option<&'a str>,
    pub author_id: Option<&'a str>,
}

/// Published posts, newest first, after the `(published_at, id)` of the last one seen.
/// Fetches `limit` rows.
///
/// # Errors
/// When the database fails.
pub async fn list(
    pool: &PgPool,
    filter: &PostFilter<'_>,
    after: Option<(DateTime<Utc>, &str)>,
    limit: i64,
) -> Result<Vec<PostView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM posts \
         WHERE status = 'published' \
           AND ($1::text IS NULL OR tags @> ARRAY[$1]) \
           AND ($2::text IS NULL OR author_id = $2) \
           AND ($3::timestamptz IS NULL OR (published_at, id) < ($3, $4)) \
         ORDER BY published_at DESC, id DESC LIMIT $5"
    ))
    .bind(filter.tag)
    .bind(filter.author_id)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Published posts matching `query` (web search syntax: words, "phrases", -not, or), best
/// first: a match in the title weighs more than one in the body. Skips `offset` rows,
/// fetches `limit`.
///
/// # Errors
/// When the database fails.
pub async fn search(
    pool: &PgPool,
    query: &str,
    filter: &PostFilter<'_>,
    offset: i64,
    limit: i64,
) -> Result<Vec<PostView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM posts, websearch_to_tsquery('english', $1) AS q \
         WHERE status = 'published' AND search @@ q \
           AND ($2::text IS NULL OR tags @> ARRAY[$2]) \
           AND ($3::text IS NULL OR author_id = $3) \
         ORDER BY ts_rank(search, q) DESC, published_at DESC, id DESC OFFSET $4 LIMIT $5"
    ))
    .bind(query)
    .bind(filter.tag)
    .bind(filter.author_id)
    .bind(offset)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Every tag on a published post with its count, most used first.
///
/// # Errors
/// When the database fails.
pub async fn tags(pool: &PgPool) -> Result<Vec<TagCount>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tag, count(*) AS count FROM posts, unnest(tags) AS tag \
         WHERE status = 'published' GROUP BY tag ORDER BY count DESC, tag",
    )
    .fetch_all(pool)
    .await
}

/// A post's comments, oldest first, after comment `after_id`. Fetches `limit` rows.
///
/// # Errors
/// When the database fails.
pub async fn comments(
    pool: &PgPool,
    post_id: &str,
    after_id: Option<&str>,
    limit: i64,
) -> Result<Vec<CommentView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, author_id, body, created_at FROM post_comments \
         WHERE post_id = $1 AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
    )
    .bind(post_id)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}
