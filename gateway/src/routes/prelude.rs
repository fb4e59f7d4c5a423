//! What a context's routes take from the host, in one import
//! (`use chronicle_gateway::prelude::*;`):
//! the state, the extractors, the error type, the answers and paging conventions every
//! context shares, and the descriptor a routes module ends with.

pub use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
pub use chronicle_commands::contexts;

pub use super::{
    documented,
    page::{time_and_id, Page, PageParams, PageRequest},
    respond, with_layer, Context, Routes,
};
pub use crate::{
    error::{ApiError, FieldError},
    extract::{ApiPath, ApiQuery, Caller, CommandHeaders, IdempotencyKeyHeader, IfMatch, JsonBody},
    schema,
    state::AppState,
};
