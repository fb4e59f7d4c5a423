//! `GET /api/v1/projections` (each reader of the log: checkpoint, lag, parked events) and
//! the staff routes over parked events (the API contract, Health and operations).

use axum::{extract::State, http::StatusCode, Json};
use chronicle_bus::{ParkedEvent, RetryOutcome, SubscriberError, SubscriberRef, SubscriberStatus};
use serde::Deserialize;

use super::Routes;
use crate::{
    error::ApiError,
    extract::{ApiPath, Caller},
    state::AppState,
};

/// This module's routes (the API contract).
pub(super) fn routes() -> Routes {
    documented![list, parked, retry]
}

#[utoipa::path(get, path = "/api/v1/projections", tag = "operations", summary = "Every reader of the log: checkpoint, lag, parked events, status", responses((status = 200, description = "200: [{\"name\",\"checkpoint\",\"stream_last_seq\",\"lag_events\",\"lag_seconds\",\"status\",\"parked\",\"error\"?}]"), crate::schema::Problems))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<SubscriberStatus>>, ApiError> {
    let js = async_nats::jetstream::new(state.nats.clone());
    let mut out = Vec::new();
    for subscriber in &state.config.subscribers {
        out.push(
            chronicle_bus::status(
                state.db.of(subscriber.context),
                &js,
                &subscriber.name,
                &subscriber.durable,
            )
            .await
            .map_err(ApiError::internal)?,
        );
    }
    Ok(Json(out))
}

/// The subscriber named in the path, if it is a known one.
fn known<'a>(state: &'a AppState, name: &str) -> Result<&'a SubscriberRef, ApiError> {
    state
        .config
        .subscribers
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::not_found("no such projection or saga"))
}

#[utoipa::path(get, path = "/api/v1/projections/{name}/parked", tag = "operations", summary = "The parked events of a projection or saga (staff)", params(("name" = String, Path)), responses((status = 200, description = "200: [{\"stream_seq\",\"subject\",\"event_type\",\"error\",\"attempts\",\"first_failed_at\",\"last_failed_at\"}]"), crate::schema::Problems))]
pub async fn parked(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<ParkedEvent>>, ApiError> {
    caller.require_staff()?;
    let subscriber = known(&state, &name)?;
    chronicle_bus::parked(state.db.of(subscriber.context), &name)
        .await
        .map(Json)
        .map_err(ApiError::internal)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(default)]
    stream_seq: Option<u64>,
}

/// Asks the running subscriber to re-apply its parked events; 503 `unavailable` when none
/// runs.
#[utoipa::path(post, path = "/api/v1/projections/{name}/retry", tag = "operations", summary = "Re-apply parked events (staff)", params(("name" = String, Path)), request_body = Retry, responses((status = 200, description = "200: {\"applied\",\"still_parked\"}"), crate::schema::Problems))]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<RetryOutcome>, ApiError> {
    caller.require_staff()?;
    known(&state, &name)?;
    // The body is optional: none retries every parked event.
    let only = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<Retry>(&body)
            .map_err(|e| {
                ApiError::bad_request(
                    "malformed_json",
                    format!("the body is not a retry request: {e}"),
                )
            })?
            .stream_seq
    };
    match chronicle_bus::request_retry(&state.nats, &name, only).await {
        Ok(outcome) => Ok(Json(outcome)),
        Err(SubscriberError::NotRunning(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no process runs this projection or saga now; start it and retry",
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}
