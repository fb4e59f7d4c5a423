//! `GET /api/v1/projections`: each read model's checkpoint and lag.

use axum::{extract::State, Json};
use chronicle_projections::{status, ProjectionStatus, PROJECTIONS};

use crate::{error::ApiError, extract::Caller, state::AppState};

pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<ProjectionStatus>>, ApiError> {
    let js = async_nats::jetstream::new(state.nats.clone());
    let mut out = Vec::new();
    for name in PROJECTIONS {
        out.push(
            status(&state.pool, &js, name)
                .await
                .map_err(ApiError::internal)?,
        );
    }
    Ok(Json(out))
}
