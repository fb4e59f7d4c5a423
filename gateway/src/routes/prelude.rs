//! What a context's routes take from the host, in one import (`use super::prelude::*;`):
//! the state, the extractors, the error type, the answers and paging conventions every
//! context shares, and the descriptor a routes module ends with.

pub(super) use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
pub(super) use chronicle_commands::contexts;

pub(super) use super::{
    page::{time_and_id, Page, PageParams, PageRequest},
    respond, with_layer, Context, Routes,
};
pub(super) use crate::{
    error::{ApiError, FieldError},
    extract::{ApiPath, ApiQuery, Caller, IdempotencyKeyHeader, IfMatch, JsonBody},
    state::AppState,
};
