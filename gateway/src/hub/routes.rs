//! The hub's routes: the WebSocket (`connection.rs`) and who is online.

use axum::extract::State;

use crate::{
    error::ApiError,
    routes::{documented, Routes},
    state::AppState,
};

/// The hub's routes.
pub(crate) fn routes() -> Routes {
    documented![super::connection::upgrade, presence]
}

/// `GET /api/v1/users/{id}/presence`: online while any of the user's connections is live.
#[utoipa::path(get, path = "/api/v1/users/{id}/presence", tag = "chat", summary = "Whether a user is online", params(("id" = String, Path)), responses((status = 200, description = "200: {\"online\",\"last_seen\"}: last_seen is null while online or never seen"), crate::schema::Problems))]
pub(crate) async fn presence(
    State(state): State<AppState>,
    _caller: crate::extract::Caller,
    crate::extract::ApiPath(id): crate::extract::ApiPath<String>,
) -> Result<axum::Json<chronicle_bus::PresenceView>, ApiError> {
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::not_found("no such user"));
    }
    let presence = state
        .hub
        .presence(&state.nats)
        .await
        .map_err(ApiError::internal)?;
    presence
        .of(&id)
        .await
        .map(axum::Json)
        .map_err(ApiError::internal)
}
