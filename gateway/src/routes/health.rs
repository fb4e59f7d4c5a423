//! `GET /health`: whether Postgres (every database a context lives on) and NATS answer;
//! `GET /metrics` (see `observe`).

use std::time::Duration;

use axum::{extract::State, http::StatusCode, Json};
use serde_json::{json, Value};

use super::Routes;
use crate::state::AppState;

/// This module's routes (the API contract).
pub(super) fn routes() -> Routes {
    documented![health, crate::observe::metrics]
}

#[utoipa::path(get, path = "/health", tag = "operations", summary = "Whether PostgreSQL and NATS answer", responses((status = 200, description = "200: {\"status\",\"postgres\",\"nats\"}; 503 when degraded"), crate::schema::Problems))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    // Every database the contexts live on (one, unless a context is on a database of its
    // own), asked at once.
    let answers = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move {
            matches!(
                tokio::time::timeout(
                    Duration::from_secs(1),
                    sqlx::query("SELECT 1").execute(&pool)
                )
                .await,
                Ok(Ok(_))
            )
        }
    };
    let databases = state.db.databases().into_iter().map(answers);
    let postgres = futures::future::join_all(databases)
        .await
        .into_iter()
        .all(|up| up);
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let up = |ok: bool| if ok { "up" } else { "down" };
    let status = if postgres && nats {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "degraded" },
        "postgres": up(postgres),
        "nats": up(nats),
    });
    (status, Json(body))
}
