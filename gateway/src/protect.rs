//! Cross-cutting protections: rate limiting and handler timeouts, as middleware whose
//! refusals are problem+json like every other error.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    error::ApiError,
    extract::bearer_token,
    state::{AppState, RateLimit},
};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by `user:<id>` and `ip:<addr>`.
///
/// A std mutex: every critical section is a few arithmetic operations with no `.await`.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    limit: RateLimit,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Arc::default(),
        }
    }

    /// Takes one token from each key's bucket; on refusal, the seconds until one is back.
    fn take(&self, keys: &[String]) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let burst = f64::from(self.limit.burst);
        // Forget idle clients now and then; a full bucket is the same as no bucket.
        if buckets.len() > 100_000 {
            let rate = self.limit.per_second;
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let mut wait: f64 = 0.0;
        for key in keys {
            let bucket = buckets.entry(key.clone()).or_insert(Bucket {
                tokens: burst,
                updated: now,
            });
            let refilled = (bucket.tokens
                + now.duration_since(bucket.updated).as_secs_f64() * self.limit.per_second)
                .min(burst);
            bucket.tokens = refilled;
            bucket.updated = now;
            if refilled < 1.0 {
                wait = wait.max((1.0 - refilled) / self.limit.per_second);
            }
        }
        if wait > 0.0 {
            return Err(wait.ceil().max(1.0) as u64);
        }
        for key in keys {
            if let Some(bucket) = buckets.get_mut(key) {
                bucket.tokens -= 1.0;
            }
        }
        Ok(())
    }
}

/// 429 `rate_limited` with `Retry-After` once a caller's or an address's burst is spent.
pub(crate) async fn rate_limit(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(limiter) = &state.limiter else {
        return next.run(request).await;
    };
    let mut keys = Vec::with_capacity(2);
    if let Some(ConnectInfo(addr)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        keys.push(format!("ip:{}", addr.ip()));
    }
    if let Some(user) = bearer_token(request.headers())
        .and_then(|t| state.auth.verify(t))
        .map(|v| v.user_id)
    {
        keys.push(format!("user:{user}"));
    }
    match limiter.take(&keys) {
        Ok(()) => next.run(request).await,
        Err(retry_after) => {
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests; retry in {retry_after} s"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

/// 503 `unavailable` when a handler outlives the configured timeout: a stuck backend never
/// holds a connection forever. A CPU profile (`/debug/profile`) is bounded by its own
/// `?seconds` instead.
///
/// The clock starts once the request body has been read (or dropped unread): the timeout
/// bounds the wait on backing services, not the client's upload, which may rightly take
/// minutes for a large file. A body is instead bounded by idleness: a client that sends
/// nothing for the same time fails its request.
pub(crate) async fn timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/debug/profile" {
        return next.run(request).await;
    }
    let limit = state.config.handler_timeout;
    let (request, body_read) = clock_body(request, limit);
    let run = next.run(request);
    tokio::pin!(run);
    if let Some(body_read) = body_read {
        tokio::select! {
            response = &mut run => return response,
            _ = body_read => {}
        }
    }
    match tokio::time::timeout(limit, run).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!("handler timed out");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the request timed out waiting for a backing service; retry later",
            )
            .into_response()
        }
    }
}

/// Runs the rest of the request (its extractors and handler) as a task of its own, so that
/// neither a client that goes away nor the handler timeout cancels it half way: a payment
/// recorded as requested is always either charged or failed, never left `paying` because
/// the connection closed between two of its commands. The caller still gets its answer, or
/// the timeout's 503, as before; a panic is a 500 problem, not a dropped connection.
pub(crate) async fn run_to_completion(request: Request, next: Next) -> Response {
    use tracing::Instrument;
    match tokio::spawn(next.run(request).in_current_span()).await {
        Ok(response) => response,
        Err(failed) => {
            tracing::error!(error = %failed, "a request handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an unexpected error occurred",
            )
            .into_response()
        }
    }
}

/// The request with a body that fails after `idle` without a byte, and a signal that
/// resolves when the body has been read to its end or dropped. `None` for an empty body.
fn clock_body(
    request: Request,
    idle: std::time::Duration,
) -> (Request, Option<tokio::sync::oneshot::Receiver<()>>) {
    use axum::body::{Body, HttpBody};
    use futures::StreamExt;
    if request.body().size_hint().exact() == Some(0) {
        return (request, None);
    }
    let (read, body_read) = tokio::sync::oneshot::channel::<()>();
    let (parts, body) = request.into_parts();
    let chunks = body.into_data_stream();
    let timed = futures::stream::unfold(Some((chunks, read)), move |state| async move {
        let (mut chunks, read) = state?;
        match tokio::time::timeout(idle, chunks.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some((chunks, read)))),
            Ok(Some(Err(e))) => Some((Err(axum::BoxError::from(e)), None)),
            Ok(None) => {
                let _ = read.send(());
                None
            }
            Err(_) => Some((
                Err(axum::BoxError::from(
                    "the client sent nothing for longer than the handler timeout",
                )),
                None,
            )),
        }
    });
    (
        Request::from_parts(parts, Body::from_stream(timed)),
        Some(body_read),
    )
}
