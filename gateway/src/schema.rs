//! The shapes the OpenAPI document names that are not a handler's own: problem details and
//! their codes, the common command answers, a page, raw and multipart bodies. A leaf: route
//! modules refer to these in their annotations, and [`crate::routes::openapi`] assembles the
//! document from the routes, so nothing here points back at a route.

use utoipa::ToSchema;

/// Every `code` a problem can carry (API.md: errors are RFC 9457 problem+json).
pub const PROBLEM_CODES: &[&str] = &[
    "alert_not_firing",
    "already_registered",
    "already_taken",
    "bad_header",
    "bad_request",
    "checksum_mismatch",
    "comment_exists",
    "concurrency_conflict",
    "coupon_exhausted",
    "coupon_exists",
    "direct_room_exists",
    "direct_room_fixed",
    "file_exists",
    "forbidden",
    "idempotency_key_reused",
    "image_too_large",
    "insufficient_stock",
    "internal",
    "invalid_body",
    "invalid_credentials",
    "invalid_cursor",
    "invalid_if_match",
    "invalid_path",
    "invalid_query",
    "invalid_state",
    "job_busy",
    "job_exists",
    "job_not_due",
    "job_paused",
    "job_waiting",
    "malformed_json",
    "malformed_samples",
    "method_not_allowed",
    "not_an_image",
    "not_a_websocket_handshake",
    "not_found",
    "offset_mismatch",
    "order_exists",
    "payload_too_large",
    "payment_declined",
    "payment_timeout",
    "post_exists",
    "post_not_published",
    "range_not_satisfiable",
    "rate_limited",
    "reservation_committed",
    "reservation_mismatch",
    "reservation_released",
    "room_exists",
    "rule_exists",
    "run_not_running",
    "share_exists",
    "sku_exists",
    "stock_limit_exceeded",
    "too_many_segments",
    "too_many_series",
    "tus_version_unsupported",
    "unauthorized",
    "unavailable",
    "unknown_reservation",
    "unreadable_body",
    "unsupported_media_type",
    "upload_closed",
    "upload_exists",
    "upload_expired",
    "upload_incomplete",
    "upload_not_expired",
    "url_not_allowed",
    "username_taken",
    "validation_failed",
    "version_mismatch",
    "wrong_amount",
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
    /// One of [`PROBLEM_CODES`]; stable, for programs.
    #[schema(inline, value_type = String)]
    code: ProblemCode,
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

/// The codes as an enumeration in the document.
#[allow(dead_code)] // a schema only
pub struct ProblemCode;

impl utoipa::PartialSchema for ProblemCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(PROBLEM_CODES.iter().copied()))
            .into()
    }
}

impl ToSchema for ProblemCode {}

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

/// One sample of `POST /api/v1/monitoring/samples` in JSON.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct SampleJson {
    metric: String,
    labels: Option<std::collections::BTreeMap<String, String>>,
    value: f64,
    /// RFC 3339, or seconds since the epoch; now when absent.
    #[schema(value_type = Option<String>)]
    at: Option<String>,
}
