//! The shapes the OpenAPI document names that are not a handler's own: problem details and
//! their codes, the common command answers, a page, raw and multipart bodies. A leaf: route
//! modules refer to these in their annotations, and [`crate::routes::openapi`] assembles the
//! document from the routes, so nothing here points back at a route.

use utoipa::ToSchema;

/// The problem `code`s the host itself answers (the API contract: errors are RFC 9457
/// problem+json), whatever the route: auth, limits, malformed requests, versions,
/// idempotency, backing servers. Each context declares its own beside its routes
/// (`crate::routes::Context::problems`); the document enumerates them all.
pub const HOST_PROBLEMS: &[&str] = &[
    "already_taken",
    "bad_header",
    "bad_request",
    "concurrency_conflict",
    "forbidden",
    "idempotency_key_reused",
    "internal",
    "invalid_body",
    "invalid_cursor",
    "invalid_if_match",
    "invalid_path",
    "invalid_query",
    "malformed_json",
    "method_not_allowed",
    "not_a_websocket_handshake",
    "not_found",
    "payload_too_large",
    "profile_in_progress",
    "rate_limited",
    "unauthorized",
    "unavailable",
    "unreadable_body",
    "unsupported_media_type",
    "validation_failed",
    "version_mismatch",
];

/// An error, as every route answers one: `application/problem+json`.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the shape `ApiError` writes; never built
pub struct Problem {
    /// `about:blank` or a URL naming the problem type.
    r#type: String,
    title: String,
    status: u16,
    detail: String,
    /// Stable, for programs: one of the codes this enumeration lists.
    code: String,
    /// With `validation_failed`: one entry per invalid field.
    errors: Option<Vec<FieldProblem>>,
}

/// The error answers every operation may give, listed once for all of them.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a schema only
pub enum Problems {
    #[response(
        status = "4XX",
        description = "a problem: see Problem.code",
        content_type = "application/problem+json"
    )]
    Client(Problem),
    #[response(
        status = "5XX",
        description = "internal, or unavailable (503) when a backing server is down",
        content_type = "application/problem+json"
    )]
    Server(Problem),
}

/// The answer of most commands: the aggregate and the version the command left it at (also
/// in `ETag`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct IdVersion {
    id: String,
    version: u64,
}

/// The answer of a command that moves a status.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct IdStatusVersion {
    id: String,
    status: String,
    version: u64,
}

/// One page of a list, newest first; `next_cursor` asks for the next page (`?cursor=`), and is
/// absent on the last one.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct Page {
    #[schema(value_type = Vec<Object>)]
    items: Vec<()>,
    next_cursor: Option<String>,
}

/// One invalid field of a `validation_failed` problem.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct FieldProblem {
    field: String,
    message: String,
}

/// A request body of raw bytes (`type: string, format: binary`), which generated clients
/// send as a file.
#[allow(dead_code)] // a schema only
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .into()
    }
}

impl ToSchema for Binary {}

/// `POST /api/v1/files`: the multipart form.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct FileForm {
    /// The file's bytes; its part's file name and content type become the file's.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}
