//! `/api/v1/posts`, their comments, and `/api/v1/tags` (the API contract, Blog). Drafts are seen by
//! their author only; everyone else gets 404, as if they did not exist.

use axum::http::{header, HeaderValue};
use chronicle_blog::{
    check_body, check_comment, check_title, normalize_tags, Comment, CommentCommand, Post,
    PostCommand, PostRef,
};
use chronicle_commands::{Committed, Executed, StoredResponse};
use chronicle_projections::posts::{self, CommentView, PostFilter, PostView};
use serde::Deserialize;

use super::prelude::*;

/// This module's routes (the API contract).
pub(super) fn routes() -> Routes {
    documented![
        draft,
        preview,
        list,
        get,
        edit,
        delete,
        publish,
        unpublish,
        add_comment,
        comments,
        delete_comment,
        tags
    ]
}

/// The blog context as the gateway hosts it.
pub const CONTEXT: Context = Context {
    beside: |_, _| None,
    routes,
    problems: &["comment_exists", "post_exists", "post_not_published"],
    settings: |_| {},
    state: |_, s| {
        s.insert_default(|| crate::cache::PostCache::new(10_000));
    },
};

/// 204 with the new version as `ETag` (or the stored answer of a replayed request).
fn no_content(executed: Executed) -> Response {
    let version = match &executed {
        Executed::Committed(c) => Some(c.version),
        Executed::Replayed(r) => r.body["version"].as_u64(),
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(etag) = version.and_then(|v| HeaderValue::from_str(&format!("\"{v}\"")).ok()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

fn text_errors(
    title: Option<&str>,
    body: Option<&str>,
    tags: Option<&[String]>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(Err(e)) = title.map(check_title) {
        errors.push(FieldError::new("title", e.to_string()));
    }
    if let Some(Err(e)) = body.map(check_body) {
        errors.push(FieldError::new("body_markdown", e.to_string()));
    }
    if let Some(Err(e)) = tags.map(normalize_tags) {
        errors.push(FieldError::new("tags", e.to_string()));
    }
    errors
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftPost {
    title: String,
    body_markdown: String,
    #[serde(default)]
    tags: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/posts", tag = "blog", summary = "Draft a post (Markdown)", request_body = DraftPost, responses((status = 201, description = "201: {\"id\",\"version\"}", body = crate::schema::IdVersion), crate::schema::Problems))]
pub async fn draft(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKeyHeader,
    body: JsonBody<DraftPost>,
) -> Result<Response, ApiError> {
    let post = body.value;
    ApiError::check(text_errors(
        Some(&post.title),
        Some(&post.body_markdown),
        Some(&post.tags),
    ))?;
    let ctx = respond::context(&caller, IfMatch(None), key, &body.raw);
    let post_id = uuid::Uuid::now_v7().to_string();
    let make = respond::id_version_status(201, "draft");
    respond::run::<Post>(
        &state,
        &post_id,
        PostCommand::Draft {
            post_id: post_id.clone(),
            author_id: caller.user_id.clone(),
            title: post.title,
            body_markdown: post.body_markdown,
            tags: post.tags,
        },
        &ctx,
        make,
        Some("/api/v1/posts"),
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preview {
    body_markdown: String,
}

/// `POST /api/v1/posts/preview`: the HTML a post with this Markdown would show, rendered and
/// sanitized exactly as a saved post's `body_html` is, without storing anything. For an
/// editor's as-you-type preview; signed-in callers only, and the body's limits are a post's.
#[utoipa::path(post, path = "/api/v1/posts/preview", tag = "blog", summary = "Render Markdown as a post would show it (stores nothing)", request_body = Preview, responses((status = 200, description = "200: {\"body_html\"}"), crate::schema::Problems))]
pub async fn preview(_caller: Caller, body: JsonBody<Preview>) -> Result<Response, ApiError> {
    let markdown = body.value.body_markdown;
    ApiError::check(text_errors(None, Some(&markdown), None))?;
    // Up to 100,000 characters of hostile Markdown: rendered off the async workers.
    let body_html =
        tokio::task::spawn_blocking(move || chronicle_blog::markdown::render(&markdown))
            .await
            .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({ "body_html": body_html })).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditPost {
    title: Option<String>,
    body_markdown: Option<String>,
    tags: Option<Vec<String>>,
}

#[utoipa::path(patch, path = "/api/v1/posts/{id}", tag = "blog", summary = "Edit one's post (If-Match)", params(("id" = String, Path)), request_body = EditPost, responses((status = 200, description = "200: {\"id\",\"version\"}", body = crate::schema::IdVersion), crate::schema::Problems))]
pub async fn edit(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
    body: JsonBody<EditPost>,
) -> Result<Response, ApiError> {
    let id = respond::uuid_id(&id, "post")?;
    let edit = body.value;
    if edit.title.is_none() && edit.body_markdown.is_none() && edit.tags.is_none() {
        return Err(ApiError::validation(vec![FieldError::new(
            "body",
            "give at least one of title, body_markdown, tags",
        )]));
    }
    ApiError::check(text_errors(
        edit.title.as_deref(),
        edit.body_markdown.as_deref(),
        edit.tags.as_deref(),
    ))?;
    let ctx = respond::context(&caller, if_match, key, &body.raw);
    let make = respond::id_and_version(200);
    let command = PostCommand::Edit {
        by: caller.user_id.clone(),
        title: edit.title,
        body_markdown: edit.body_markdown,
        tags: edit.tags,
    };
    respond::run::<Post>(&state, id, command, &ctx, make, None).await
}

/// A post command without a body: publish, unpublish, delete.
async fn act(
    state: &AppState,
    id: &str,
    (caller, if_match, key): (Caller, IfMatch, IdempotencyKeyHeader),
    command: PostCommand,
    make: impl Fn(&Committed) -> StoredResponse,
) -> Result<Executed, ApiError> {
    let id = respond::uuid_id(id, "post")?;
    let ctx = respond::context(&caller, if_match, key, b"");
    Ok(state
        .commands
        .execute_with_response::<Post>(id, command, &(), &ctx, make)
        .await?)
}

#[utoipa::path(post, path = "/api/v1/posts/{id}/publish", tag = "blog", summary = "Publish one's post", params(("id" = String, Path)), responses((status = 200, description = "200: {\"id\",\"status\",\"version\"}", body = crate::schema::IdStatusVersion), crate::schema::Problems))]
pub async fn publish(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
) -> Result<Response, ApiError> {
    set_published(&state, &id, (caller, if_match, key), true).await
}

#[utoipa::path(post, path = "/api/v1/posts/{id}/unpublish", tag = "blog", summary = "Back to a draft", params(("id" = String, Path)), responses((status = 200, description = "200: {\"id\",\"status\",\"version\"}", body = crate::schema::IdStatusVersion), crate::schema::Problems))]
pub async fn unpublish(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
) -> Result<Response, ApiError> {
    set_published(&state, &id, (caller, if_match, key), false).await
}

async fn set_published(
    state: &AppState,
    id: &str,
    (caller, if_match, key): (Caller, IfMatch, IdempotencyKeyHeader),
    published: bool,
) -> Result<Response, ApiError> {
    let by = caller.user_id.clone();
    let (command, make) = if published {
        (
            PostCommand::Publish { by },
            respond::id_version_status(200, "published"),
        )
    } else {
        (
            PostCommand::Unpublish { by },
            respond::id_version_status(200, "draft"),
        )
    };
    let executed = act(state, id, (caller, if_match, key), command, &make).await?;
    Ok(respond::executed(executed, make))
}

#[utoipa::path(delete, path = "/api/v1/posts/{id}", tag = "blog", summary = "Delete one's post", params(("id" = String, Path)), responses((status = 204, description = "204"), crate::schema::Problems))]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
) -> Result<Response, ApiError> {
    let command = PostCommand::Delete {
        by: caller.user_id.clone(),
    };
    let make = respond::id_and_version(204);
    let executed = act(&state, &id, (caller, if_match, key), command, make).await?;
    Ok(no_content(executed))
}

#[derive(Debug, Deserialize)]
pub struct ReadParams {
    min_version: Option<u64>,
}

/// The post if the caller may see it (published, or theirs), else 404.
async fn visible_post(
    state: &AppState,
    caller: &Caller,
    id: &str,
    min_version: Option<u64>,
) -> Result<(std::sync::Arc<PostView>, Option<&'static str>), ApiError> {
    let id = respond::uuid_id(id, "post")?;
    let mut consistency = None;
    let post = state
        .contexts
        .get::<crate::cache::PostCache>()
        .post(id, min_version, || async {
            let read = state
                .freshness
                .read(
                    min_version,
                    |p: &PostView| p.version as u64,
                    || posts::get(state.db.of(contexts::BLOG), id),
                )
                .await?;
            consistency = read.consistency;
            Ok::<_, sqlx::Error>(read.value)
        })
        .await?;
    let consistency = match (min_version, consistency) {
        // Served from the cache at or past the version asked for.
        (Some(_), None) => Some("fresh"),
        (_, c) => c,
    };
    match post {
        Some(post) if post.is_published() || post.author_id == caller.user_id => {
            Ok((post, consistency))
        }
        _ => Err(ApiError::not_found(format!("no post with id {id}"))),
    }
}

#[utoipa::path(get, path = "/api/v1/posts/{id}", tag = "blog", summary = "One post with its sanitized HTML (?min_version)", params(("id" = String, Path)), responses((status = 200, description = "200: {\"id\",\"title\",\"body_markdown\",\"body_html\",\"tags\",\"status\",...}"), crate::schema::Problems))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Response, ApiError> {
    let (post, consistency) = visible_post(&state, &caller, &id, params.min_version).await?;
    let version = post.version;
    Ok(respond::read_model(&*post, version, consistency))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    tag: Option<String>,
    author: Option<String>,
    q: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

fn bad_cursor() -> ApiError {
    ApiError::bad_request("invalid_cursor", "the cursor is not one this API gave out")
}

#[utoipa::path(get, path = "/api/v1/posts", tag = "blog", summary = "Published posts (?tag, ?q full-text search), in cursor pages", responses((status = 200, description = "200: {\"items\",\"next_cursor\"}", body = crate::schema::Page), crate::schema::Problems))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<PostView>>, ApiError> {
    let request = PageRequest::new(params.limit, params.cursor.as_deref())?;
    // No tag or author id holds a NUL (PostgreSQL's text cannot): no post matches one.
    let filters = [params.tag.as_deref(), params.author.as_deref()];
    if filters.into_iter().flatten().any(|f| f.contains('\0')) {
        return Ok(Json(request.page(Vec::new(), |_: &PostView| String::new())));
    }
    let filter = PostFilter {
        tag: params.tag.as_deref(),
        author_id: params.author.as_deref(),
    };
    // A NUL in a search separates words, like a space: the database never sees it.
    let searched = params.q.as_deref().map(|q| q.replace('\0', " "));
    let query = searched.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if let Some(query) = query {
        if query.chars().count() > 200 {
            return Err(ApiError::validation(vec![FieldError::new(
                "q",
                "at most 200 characters",
            )]));
        }
        // Ranked results page by position.
        let offset = match &request.after {
            None => 0,
            Some(after) => after
                .parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .ok_or_else(bad_cursor)?,
        };
        let items = posts::search(
            state.db.of(contexts::BLOG),
            query,
            &filter,
            offset,
            request.fetch(),
        )
        .await?;
        let next = offset + request.limit;
        return Ok(Json(request.page(items, |_| next.to_string())));
    }
    let db = state.db.of(contexts::BLOG);
    let page = request
        .by_time_and_id(
            |after, fetch| posts::list(db, &filter, after, fetch),
            |post| (post.published_at.unwrap_or(post.created_at), &post.id),
        )
        .await?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/api/v1/tags", tag = "blog", summary = "Tags of published posts with their counts", responses((status = 200, description = "200: [{\"tag\",\"count\"}]"), crate::schema::Problems))]
pub async fn tags(State(state): State<AppState>, _caller: Caller) -> Result<Response, ApiError> {
    let tags = state
        .contexts
        .get::<crate::cache::PostCache>()
        .tags(|| posts::tags(state.db.of(contexts::BLOG)))
        .await?;
    // Serialized straight from the cached list, not a copy of it.
    Ok(Json(tags.as_slice()).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddComment {
    body: String,
}

#[utoipa::path(post, path = "/api/v1/posts/{id}/comments", tag = "blog", summary = "Comment on a published post", params(("id" = String, Path)), request_body = AddComment, responses((status = 201, description = "201: {\"id\",\"version\"}", body = crate::schema::IdVersion), crate::schema::Problems))]
pub async fn add_comment(
    State(state): State<AppState>,
    ApiPath(post_id): ApiPath<String>,
    caller: Caller,
    key: IdempotencyKeyHeader,
    body: JsonBody<AddComment>,
) -> Result<Response, ApiError> {
    let post_id = respond::uuid_id(&post_id, "post")?;
    let text = body.value.body;
    if let Err(e) = check_comment(&text) {
        return Err(ApiError::validation(vec![FieldError::new(
            "body",
            e.to_string(),
        )]));
    }
    // The post as the write side knows it: whether it takes comments, and its author.
    let post = state.commands.state::<Post>(post_id).await?.state;
    if !post.exists() || (!post.is_published() && post.author_id() != caller.user_id) {
        return Err(ApiError::not_found(format!("no post with id {post_id}")));
    }
    let ctx = respond::context(&caller, IfMatch(None), key, &body.raw);
    let comment_id = uuid::Uuid::now_v7().to_string();
    let make = respond::id_and_version(201);
    respond::run::<Comment>(
        &state,
        &comment_id,
        CommentCommand::Add {
            comment_id: comment_id.clone(),
            post: PostRef {
                post_id: post_id.to_owned(),
                author_id: post.author_id().to_owned(),
                published: post.is_published(),
            },
            author_id: caller.user_id.clone(),
            body: text,
        },
        &ctx,
        make,
        None,
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct CommentParams {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/posts/{id}/comments", tag = "blog", summary = "A post's comments, in cursor pages", params(("id" = String, Path)), responses((status = 200, description = "200: {\"items\",\"next_cursor\"}", body = crate::schema::Page), crate::schema::Problems))]
pub async fn comments(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(post_id): ApiPath<String>,
    ApiQuery(params): ApiQuery<CommentParams>,
) -> Result<Json<Page<CommentView>>, ApiError> {
    let request = PageRequest::new(params.limit, params.cursor.as_deref())?;
    let (post, _) = visible_post(&state, &caller, &post_id, None).await?;
    let items = posts::comments(
        state.db.of(contexts::BLOG),
        &post.id,
        request.after.as_deref(),
        request.fetch(),
    )
    .await?;
    Ok(Json(request.page(items, |c| c.id.clone())))
}

#[utoipa::path(delete, path = "/api/v1/posts/{id}/comments/{comment_id}", tag = "blog", summary = "Delete a comment (its author or the post's)", params(("id" = String, Path), ("comment_id" = String, Path)), responses((status = 204, description = "204"), crate::schema::Problems))]
pub async fn delete_comment(
    State(state): State<AppState>,
    ApiPath((post_id, comment_id)): ApiPath<(String, String)>,
    CommandHeaders(caller, if_match, key): CommandHeaders,
) -> Result<Response, ApiError> {
    let post_id = respond::uuid_id(&post_id, "post")?;
    let comment_id = respond::uuid_id(&comment_id, "comment")?;
    let comment = state.commands.state::<Comment>(comment_id).await?.state;
    if !comment.exists() || comment.post_id() != post_id {
        return Err(ApiError::not_found(format!(
            "no comment {comment_id} on post {post_id}"
        )));
    }
    let ctx = respond::context(&caller, if_match, key, b"");
    let executed = state
        .commands
        .execute_with_response::<Comment>(
            comment_id,
            CommentCommand::Delete {
                by: caller.user_id.clone(),
            },
            &(),
            &ctx,
            respond::id_and_version(204),
        )
        .await?;
    Ok(no_content(executed))
}
