//! Extractors whose every failure is an [`ApiError`] (problem+json), never axum's plain
//! text.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, StatusCode},
};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::{
    error::{ApiError, FieldError},
    state::AppState,
};

/// A JSON request body, with its raw bytes kept for idempotency hashing.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let raw = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large",
                )
            } else {
                ApiError::bad_request("unreadable_body", rejection.body_text())
            }
        })?;
        let value = serde_json::from_slice(&raw).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::bad_request(
                    "invalid_body",
                    format!("the body does not fit this route: {e}"),
                ),
                Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
                    "malformed_json",
                    format!("the body is not valid JSON: {e}"),
                ),
            }
        })?;
        Ok(Self { value, raw })
    }
}

/// `If-Match: "N"`: the version the client expects the aggregate to be at. Absent (or `*`)
/// means no expectation.
#[derive(Debug, Clone, Copy)]
pub struct IfMatch(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(Self(None));
        };
        let text = value.to_str().unwrap_or_default().trim();
        if text == "*" {
            return Ok(Self(None));
        }
        let version = text
            .trim_start_matches("W/")
            .trim_matches('"')
            .parse::<u64>()
            .map_err(|_| {
                ApiError::bad_request(
                    "invalid_if_match",
                    "If-Match must be an ETag of this API, like \"3\"",
                )
            })?;
        Ok(Self(Some(version)))
    }
}

/// `Idempotency-Key` (at most 255 visible ASCII characters), with the request it came on:
/// a key is scoped to its caller and to the method and path it was sent to, taken from the
/// request itself so no handler writes its route by hand.
#[derive(Debug, Clone)]
pub struct IdempotencyKeyHeader {
    pub key: Option<String>,
    /// `POST /api/v1/orders/0193.../pay`.
    pub route: String,
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let route = format!("{} {}", parts.method, parts.uri.path());
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(Self { key: None, route });
        };
        let key = value.to_str().unwrap_or_default();
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::validation(vec![FieldError::new(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )]));
        }
        Ok(Self {
            key: Some(key.to_owned()),
            route,
        })
    }
}

/// What a command request carries besides its body, extracted in this order: the
/// [`Caller`], `If-Match` and `Idempotency-Key`. A handler takes it apart where it takes it
/// (`CommandHeaders(caller, if_match, key): CommandHeaders`).
#[derive(Debug, Clone)]
pub struct CommandHeaders(pub Caller, pub IfMatch, pub IdempotencyKeyHeader);

impl FromRequestParts<AppState> for CommandHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            Caller::from_request_parts(parts, state).await?,
            IfMatch::from_request_parts(parts, state).await?,
            IdempotencyKeyHeader::from_request_parts(parts, state).await?,
        ))
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The authenticated caller: a valid bearer token's user. Routes that take a `Caller` are
/// closed to anonymous requests (401 `unauthorized`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    /// The roles the token carries (the API contract, Roles).
    pub roles: Vec<String>,
    /// The request id (`x-request-id`), which becomes the correlation id of every event the
    /// request causes.
    pub request_id: Option<uuid::Uuid>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized(
                "send Authorization: Bearer <token> (POST /api/v1/auth/login gives one)",
            )
        })?;
        let verified = state.auth.verify(token).ok_or_else(|| {
            ApiError::unauthorized("the token is invalid or expired; log in again")
        })?;
        Ok(Self {
            user_id: verified.user_id,
            roles: verified.roles,
            request_id: request_id(parts),
        })
    }
}

impl Caller {
    /// `Ok` for staff.
    ///
    /// # Errors
    /// 403 `forbidden` for anyone else.
    pub fn require_staff(&self) -> Result<(), ApiError> {
        if self.roles.iter().any(|r| r == crate::auth::STAFF) {
            Ok(())
        } else {
            Err(ApiError::forbidden("only staff may do this"))
        }
    }
}

/// The request id set by the request-id layer, as a UUID.
pub fn request_id(parts: &Parts) -> Option<uuid::Uuid> {
    parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The request id alone, for routes without a caller (register, login).
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub Option<uuid::Uuid>);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(request_id(parts)))
    }
}

/// `axum::extract::Path` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);
