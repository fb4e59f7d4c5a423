//! The gateway's one error type and its problem+json form (RFC 9457, the API contract Conventions).

use axum::{
    extract::{
        multipart::MultipartRejection,
        rejection::{PathRejection, QueryRejection},
        ws::rejection::WebSocketUpgradeRejection,
    },
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chronicle_commands::{CommandError, ErrorChain, StoreError};
use chronicle_schemas::limits::{DomainRule, Invalid, Refusal};
use serde::Serialize;

/// One invalid field of a request, for 422 `validation_failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The failures among `checks` (the domain's own validators, run before a command is
    /// built, so the 422 names every invalid field at once).
    pub fn collect(checks: impl IntoIterator<Item = Result<(), Invalid>>) -> Vec<Self> {
        checks
            .into_iter()
            .filter_map(Result::err)
            .map(Self::from)
            .collect()
    }
}

impl From<Invalid> for FieldError {
    fn from(invalid: Invalid) -> Self {
        Self {
            field: invalid.field,
            message: invalid.message,
        }
    }
}

/// A failed request. Client errors say what was wrong; server errors say nothing of their
/// cause to the client and log it, whole, when turned into a response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    /// Extra members of the problem object (`"id"` of an existing resource, say).
    extra: serde_json::Map<String, serde_json::Value>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// A copy answers the same; its cause, if any, is kept as text (for an outcome several
/// requests wait on, like an upload's assembly).
impl Clone for ApiError {
    fn clone(&self) -> Self {
        Self {
            status: self.status,
            code: self.code,
            detail: self.detail.clone(),
            errors: self.errors.clone(),
            extra: self.extra.clone(),
            source: self.source.as_ref().map(|source| {
                Box::new(std::io::Error::other(
                    ErrorChain(source.as_ref()).to_string(),
                )) as Box<dyn std::error::Error + Send + Sync>
            }),
        }
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            extra: serde_json::Map::new(),
            source: None,
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 401 `unauthorized`, with the `WWW-Authenticate` challenge added on the way out.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 422 with a code of its own: the request is well formed, but the domain refuses what
    /// it asks for (`url_not_allowed`, `image_too_large`, ...).
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    /// 422 `validation_failed` listing each invalid field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "the request has invalid fields",
        );
        e.errors = errors;
        e
    }

    /// A failure of ours (500), or of a backing server (503 `unavailable`).
    /// `Ok` when `errors` is empty, else the 422 problem naming them.
    ///
    /// # Errors
    /// 422 `validation_failed` with `errors`.
    pub fn check(errors: Vec<FieldError>) -> Result<(), Self> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Self::validation(errors))
        }
    }

    pub fn internal(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        let unavailable = is_unavailable(&source);
        let mut e = if unavailable {
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "a backing service is unavailable; retry later",
            )
        } else {
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an unexpected error occurred",
            )
        };
        e.source = Some(Box::new(source));
        e
    }

    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The human sentence of the problem (generic for server errors).
    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

/// Whether an error chain bottoms out in a server that cannot be reached.
fn is_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(sqlx_error) = e.downcast_ref::<sqlx::Error>() {
            return match sqlx_error {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_) => true,
                // A read model's table its projector has not made yet (42P01): there in a
                // moment, as a server coming back is.
                sqlx::Error::Database(db) => db.code().as_deref() == Some("42P01"),
                _ => false,
            };
        }
        current = e.source();
    }
    false
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(source) = &self.source {
            let source: &(dyn std::error::Error + 'static) = &**source;
            tracing::error!(status = self.status.as_u16(), code = self.code, error = %ErrorChain(source), "request failed");
        }
        let body = Problem {
            kind: format!(
                "https://chronicle.dev/problems/{}",
                self.code.replace('_', "-")
            ),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            errors: &self.errors,
            extra: &self.extra,
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (self.status, json).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

/// The last word on every answer (the API contract Conventions): an error a framework layer or
/// extractor wrote as text (a body over the limit, a bad header, a rejection not mapped
/// above) leaves as problem+json with the text as its `detail`, and its other headers kept.
/// What the routes answer themselves is problem+json, or JSON on purpose (`/health`'s 503
/// names each server), and passes untouched.
pub async fn every_error_is_a_problem(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/") && v.contains("json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let detail = match axum::body::to_bytes(body, 4 * 1024).await {
        Ok(text) if !text.is_empty() => String::from_utf8_lossy(&text).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let code = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ if status.is_server_error() => "internal",
        _ => "bad_request",
    };
    let problem = ApiError::new(status, code, detail).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(problem.headers().clone());
    let (_, body) = problem.into_parts();
    Response::from_parts(parts, body)
}

/// A body that is not `multipart/form-data` with a boundary, on a multipart route.
impl From<MultipartRejection> for ApiError {
    fn from(rejection: MultipartRejection) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the body as multipart/form-data with a boundary ({})",
                rejection.body_text()
            ),
        )
    }
}

/// A request to `/ws` that is not a WebSocket handshake: its own status (400, 405 or 426).
impl From<WebSocketUpgradeRejection> for ApiError {
    fn from(rejection: WebSocketUpgradeRejection) -> Self {
        Self::new(
            rejection.status(),
            "not_a_websocket_handshake",
            format!("open /ws as a WebSocket: {}", rejection.body_text()),
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(e)
    }
}

/// The one status of each kind of domain refusal.
fn refusal_status(refusal: Refusal) -> StatusCode {
    match refusal {
        Refusal::NotFound => StatusCode::NOT_FOUND,
        Refusal::Forbidden => StatusCode::FORBIDDEN,
        Refusal::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        Refusal::Conflict => StatusCode::CONFLICT,
        Refusal::TimedOut => StatusCode::GATEWAY_TIMEOUT,
    }
}

impl<E: DomainRule> From<CommandError<E>> for ApiError {
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(rule) => {
                let mut error = Self::new(
                    refusal_status(rule.refusal()),
                    rule.rule_code(),
                    rule.to_string(),
                );
                error.errors = rule
                    .invalid_fields()
                    .into_iter()
                    .map(FieldError::from)
                    .collect();
                error
            }
            CommandError::VersionMismatch { expected, actual } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                format!(
                    "If-Match expected version {expected}, the resource is at version {actual}"
                ),
            )
            .with("current_version", actual),
            CommandError::Conflict => Self::new(
                StatusCode::CONFLICT,
                "concurrency_conflict",
                "the resource was changed concurrently; retry the request",
            ),
            CommandError::ClaimTaken { namespace, .. } => {
                let code = match namespace.as_str() {
                    "username" => "username_taken",
                    _ => "already_taken",
                };
                Self::new(
                    StatusCode::CONFLICT,
                    code,
                    format!("this {namespace} is already taken"),
                )
            }
            CommandError::IdempotencyKeyReused => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request",
            ),
            CommandError::Store(store) => Self::internal(store),
        }
    }
}
