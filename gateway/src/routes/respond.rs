//! Turning command outcomes into responses.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chronicle_commands::{
    CommandContext, Committed, Executable, Executed, IdempotencyKey, StoredResponse,
};
use chronicle_schemas::limits::DomainRule;

use crate::{
    error::ApiError,
    extract::{Caller, IdempotencyKeyHeader, IfMatch},
    state::AppState,
};

/// The context of a command sent over HTTP: the caller as actor, the request id as
/// correlation id, `If-Match`, and the idempotency key scoped to caller and request route.
pub fn context(
    caller: &Caller,
    if_match: IfMatch,
    key: IdempotencyKeyHeader,
    raw_body: &[u8],
) -> CommandContext {
    anonymous_context(
        caller.request_id,
        Some(&caller.user_id),
        if_match,
        key,
        raw_body,
    )
}

/// The context of a command the caller asks for without `If-Match` or an idempotency key
/// (routes whose retries are made safe by their own ids: files, uploads, shares).
pub fn caller_context(caller: &Caller) -> CommandContext {
    let base = CommandContext::new();
    CommandContext {
        correlation_id: caller.request_id.unwrap_or(base.correlation_id),
        actor: Some(caller.user_id.clone()),
        ..base
    }
}

/// [`context`] for routes open to anonymous callers (register): without an actor, the
/// key's scope is the route alone.
pub fn anonymous_context(
    request_id: Option<uuid::Uuid>,
    actor: Option<&str>,
    if_match: IfMatch,
    key: IdempotencyKeyHeader,
    raw_body: &[u8],
) -> CommandContext {
    let base = CommandContext::new();
    let scope = format!("{}|{}", actor.unwrap_or("anonymous"), key.route);
    CommandContext {
        correlation_id: request_id.unwrap_or(base.correlation_id),
        actor: actor.map(str::to_owned),
        expected_version: if_match.0,
        idempotency: key.key.map(|key| IdempotencyKey::new(scope, key, raw_body)),
        ..base
    }
}

/// `{"id", "version"}` with `status`: the body of most command responses.
pub fn id_and_version(status: u16) -> impl Fn(&Committed) -> StoredResponse {
    move |c| StoredResponse {
        status,
        body: serde_json::json!({"id": c.aggregate_id, "version": c.version}),
    }
}

/// `{"id", "version", "status"}` with HTTP `status`: commands that move a resource through
/// its states (orders, posts).
pub fn id_version_status(
    status: u16,
    state: &'static str,
) -> impl Fn(&Committed) -> StoredResponse {
    move |c| StoredResponse {
        status,
        body: serde_json::json!({"id": c.aggregate_id, "version": c.version, "status": state}),
    }
}

/// The response of an executed command: the fresh one, or the stored one on a replay
/// (marked with `Idempotent-Replayed: true`). `ETag` carries the version.
pub fn executed(executed: Executed, respond: impl Fn(&Committed) -> StoredResponse) -> Response {
    let (stored, replayed) = match executed {
        Executed::Committed(c) => (respond(&c), false),
        Executed::Replayed(r) => (r, true),
    };
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, axum::Json(&stored.body)).into_response();
    if let Some(version) = stored
        .body
        .get("version")
        .and_then(serde_json::Value::as_u64)
    {
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
            response.headers_mut().insert(header::ETAG, etag);
        }
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Runs `command` on aggregate `id` and answers it as `respond` says: [`executed`], or
/// [`created`] with its `Location` when the command creates a resource of `created_in`.
///
/// # Errors
/// The command's refusal or conflict, or the store's failure, as a problem.
pub async fn run<A>(
    state: &AppState,
    id: &str,
    command: A::Command,
    ctx: &CommandContext,
    respond: impl Fn(&Committed) -> StoredResponse,
    created_in: Option<&str>,
) -> Result<Response, ApiError>
where
    A: Executable<Services = ()>,
    A::Error: DomainRule,
{
    let done = state
        .commands
        .execute_with_response::<A>(id, command, &(), ctx, &respond)
        .await?;
    Ok(match created_in {
        Some(collection) => created(done, respond, collection),
        None => executed(done, respond),
    })
}

/// Sets `ETag: "version"` on a query response.
pub fn with_etag(mut response: Response, version: i64) -> Response {
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// A query response: `body` as JSON with `ETag` from `version`, and
/// `Chronicle-Consistency` when the read waited for a version.
pub fn read_model(
    body: impl serde::Serialize,
    version: i64,
    consistency: Option<&'static str>,
) -> Response {
    let mut response = with_etag(axum::Json(body).into_response(), version);
    if let Some(consistency) = consistency {
        response.headers_mut().insert(
            "chronicle-consistency",
            HeaderValue::from_static(consistency),
        );
    }
    response
}

/// [`executed`] for a command that created a resource: `Location: {collection}/{id}`, with
/// the id of the stored answer on a replay (the first request's resource).
pub fn created(
    executed: Executed,
    respond: impl Fn(&Committed) -> StoredResponse,
    collection: &str,
) -> Response {
    let id = match &executed {
        Executed::Committed(c) => Some(c.aggregate_id.clone()),
        Executed::Replayed(r) => r.body["id"].as_str().map(str::to_owned),
    };
    let mut response = self::executed(executed, respond);
    if let Some(location) =
        id.and_then(|id| HeaderValue::from_str(&format!("{collection}/{id}")).ok())
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// An id in a path that must be a UUID (orders, posts, comments): anything else names
/// nothing, so it is 404 like an id that does not exist.
///
/// # Errors
/// 404 `not_found` naming `what`.
pub fn uuid_id<'a>(id: &'a str, what: &str) -> Result<&'a str, crate::error::ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|_| id)
        .map_err(|_| crate::error::ApiError::not_found(format!("no {what} with id {id}")))
}
