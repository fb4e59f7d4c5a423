//! `GET /debug/profile` (staff, off unless `CHRONICLE_PROFILING=1`): a CPU profile of this
//! process, sampled for `?seconds=N`, as Google's pprof format (for `go tool pprof`,
//! Speedscope, Pyroscope) or, with `?format=svg`, a flame graph to open in a browser.
//!
//! The sampling is `pprof`'s (SIGPROF at [`FREQUENCY`] Hz, every thread, symbols resolved
//! when the report is built); the request holds its own worker thread while it samples,
//! and one profile runs at a time.

use std::time::Duration;

use axum::http::header;
use serde::Deserialize;

use super::prelude::*;

/// This module's routes.
pub(super) fn routes() -> Routes {
    documented![profile]
}

/// Samples per second: a prime, so the sampling does not beat with periodic work (the
/// collector's ticks, pings) and see only one phase of it.
pub const FREQUENCY: i32 = 99;

/// The longest profile one request may ask for, in seconds.
pub const MAX_SECONDS: u64 = 60;

/// `?seconds=N` (1 to [`MAX_SECONDS`], 10 by default) and `?format=pprof|svg`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProfileParams {
    /// How long to sample, 1 to 60 seconds (10 by default).
    seconds: Option<u64>,
    /// `pprof` (the default: gzip-free protobuf, `go tool pprof` reads it) or `svg`.
    format: Option<String>,
}

#[utoipa::path(get, path = "/debug/profile", tag = "operations", summary = "A CPU profile of this process (staff; CHRONICLE_PROFILING=1)", params(ProfileParams), responses((status = 200, description = "200: the profile, application/octet-stream (pprof protobuf) or image/svg+xml (?format=svg)"), crate::schema::Problems))]
pub async fn profile(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ProfileParams>,
) -> Result<Response, ApiError> {
    if !state.config.profiling {
        return Err(ApiError::not_found(
            "profiling is off; start the process with CHRONICLE_PROFILING=1 to turn it on",
        ));
    }
    caller.require_staff()?;
    let seconds = params.seconds.unwrap_or(10);
    let mut errors = Vec::new();
    if !(1..=MAX_SECONDS).contains(&seconds) {
        errors.push(FieldError::new("seconds", "1 to 60"));
    }
    let svg = match params.format.as_deref() {
        None | Some("pprof") => false,
        Some("svg") => true,
        Some(_) => {
            errors.push(FieldError::new("format", "pprof or svg"));
            false
        }
    };
    ApiError::check(errors)?;
    let window = Duration::from_secs(seconds);
    let (content_type, body) = tokio::task::spawn_blocking(move || sample(window, svg))
        .await
        .map_err(ApiError::internal)??;
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Samples this process for `window` on the calling (blocking) thread; the profile as a
/// flame graph (`svg`) or in pprof's format, with its content type.
fn sample(window: Duration, svg: bool) -> Result<(&'static str, Vec<u8>), ApiError> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|error| match error {
            pprof::Error::Running => ApiError::new(
                StatusCode::CONFLICT,
                "profile_in_progress",
                "another profile of this process is being taken; ask again when it is done",
            ),
            other => ApiError::internal(other),
        })?;
    std::thread::sleep(window);
    let report = guard.report().build().map_err(ApiError::internal)?;
    drop(guard);
    if svg {
        let mut body = Vec::new();
        report.flamegraph(&mut body).map_err(ApiError::internal)?;
        Ok(("image/svg+xml", body))
    } else {
        use pprof::protos::Message as _;
        let profile = report.pprof().map_err(ApiError::internal)?;
        Ok(("application/octet-stream", profile.encode_to_vec()))
    }
}
