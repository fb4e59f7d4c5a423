//! The route table.

mod health;
mod inventory;
mod projections;
mod respond;

use axum::{
    http::{HeaderName, StatusCode},
    routing::{get, post},
    Router,
};
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{error::ApiError, state::AppState};

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/health", get(health::health))
        .route("/api/v1/projections", get(projections::list))
        .route(
            "/api/v1/inventory/items",
            post(inventory::create).get(inventory::list),
        )
        .route("/api/v1/inventory/items/{sku}", get(inventory::get))
        .route(
            "/api/v1/inventory/items/{sku}/receive",
            post(inventory::receive),
        )
        .fallback(|| async { ApiError::not_found("there is no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}
