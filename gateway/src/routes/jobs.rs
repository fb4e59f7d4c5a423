//! `/api/v1/jobs` (the API contract, Scheduler): a caller's jobs, their runs, pause, resume, delete.
//! Only a job's owner sees it or acts on it; another user's job is 404, like one that does
//! not exist.

use chronicle_projections::jobs::{self, JobView};
use chronicle_scheduler::{
    after, check_spec, Action, CommandAction, Job, JobCommand, JobSpec, MissedPolicy,
    OverlapPolicy, Schedule, DEFAULT_BACKOFF_SECONDS, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_SECONDS,
};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;

use super::prelude::*;

/// This module's routes (the API contract).
pub(super) fn routes() -> Routes {
    documented![create, list, get, delete, runs, pause, resume]
}

/// How the scheduler's routes are configured.
#[derive(Debug, Clone, Default)]
pub struct JobsConfig {
    /// Hosts a job's HTTP action may call (`CHRONICLE_SCHEDULER_HTTP_ALLOW`).
    pub http_allow: chronicle_scheduler::AllowList,
    /// The event types a job may be triggered by, as (context, type): those of
    /// `chronicle schemas export`.
    pub event_types: Vec<(String, String)>,
}

/// The scheduler context as the gateway hosts it.
pub const CONTEXT: Context = Context {
    beside: |_, _| None,
    routes,
    problems: &[
        "job_busy",
        "job_exists",
        "job_not_due",
        "job_paused",
        "job_waiting",
        "run_not_running",
        "unknown_event_type",
        "url_not_allowed",
    ],
    settings: |s| {
        s.declare::<JobsConfig>();
    },
    state: |_, _| {},
};

/// `schedule`: exactly one of its fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    cron: Option<String>,
    at: Option<DateTime<Utc>>,
    after_seconds: Option<i64>,
    /// Staff only: once for every event of these types (of `context`, when named) that
    /// comes after the job's creation in the log.
    on_event: Option<OnEventRequest>,
}

/// `schedule.on_event`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnEventRequest {
    types: Vec<String>,
    context: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionRequest {
    Http {
        url: String,
        method: Option<String>,
        /// A string is sent as it is; any other JSON value as JSON.
        body: Option<serde_json::Value>,
    },
    Command {
        command: String,
        order_id: Option<String>,
    },
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    name: String,
    schedule: ScheduleRequest,
    action: ActionRequest,
    max_retries: Option<i64>,
    depends_on: Option<Vec<String>>,
    timezone: Option<String>,
    /// `skip`, `run_once` (the default) or `run_all`.
    #[schema(value_type = Option<String>, example = "run_once")]
    missed: Option<MissedPolicy>,
    /// `skip` (the default), `queue` or `allow`.
    #[schema(value_type = Option<String>, example = "skip")]
    overlap: Option<OverlapPolicy>,
    timeout_seconds: Option<i64>,
    backoff_seconds: Option<i64>,
}

/// A count the domain bounds; one that does not even fit `u32` is out of range all the same.
fn count(field: &str, value: Option<i64>, default: u32, errors: &mut Vec<FieldError>) -> u32 {
    match value {
        None => default,
        Some(v) => u32::try_from(v).unwrap_or_else(|_| {
            errors.push(FieldError::new(field, "out of range"));
            0
        }),
    }
}

/// The job the caller asked for, in the domain's terms (its limits are checked after).
fn spec_of(request: CreateJob, now: DateTime<Utc>) -> Result<JobSpec, ApiError> {
    let mut errors = Vec::new();
    let timezone = request.timezone.unwrap_or_else(|| "UTC".to_owned());
    let schedule = match (
        request.schedule.cron,
        request.schedule.at,
        request.schedule.after_seconds,
        request.schedule.on_event,
    ) {
        (Some(expression), None, None, None) => Some(Schedule::Cron {
            expression,
            timezone,
        }),
        (None, Some(at), None, None) => Some(Schedule::Once {
            at: at.trunc_subsecs(6),
        }),
        (None, None, Some(seconds), None) => match after(now, seconds) {
            Ok(at) => Some(Schedule::Once { at }),
            Err(invalid) => {
                errors.push(FieldError::new("schedule.after_seconds", invalid.message));
                None
            }
        },
        (None, None, None, Some(OnEventRequest { types, context })) => {
            Some(Schedule::OnEvent { types, context })
        }
        _ => {
            errors.push(FieldError::new(
                "schedule",
                "exactly one of cron, at, after_seconds and on_event",
            ));
            None
        }
    };
    let action = match request.action {
        ActionRequest::Http { url, method, body } => Action::Http {
            url,
            method: method
                .unwrap_or_else(|| "POST".to_owned())
                .to_ascii_uppercase(),
            body: body.map(|b| match b {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            }),
        },
        ActionRequest::Command { command, order_id } => match (command.as_str(), order_id) {
            ("noop", None) => Action::Command {
                command: CommandAction::Noop {},
            },
            ("cancel_order", Some(order_id)) => Action::Command {
                command: CommandAction::CancelOrder { order_id },
            },
            _ => {
                errors.push(FieldError::new(
                    "action.command",
                    "\"noop\", or \"cancel_order\" with an order_id",
                ));
                Action::Command {
                    command: CommandAction::Noop {},
                }
            }
        },
    };
    let max_retries = count(
        "max_retries",
        request.max_retries,
        DEFAULT_MAX_RETRIES,
        &mut errors,
    );
    let timeout_seconds = count(
        "timeout_seconds",
        request.timeout_seconds,
        DEFAULT_TIMEOUT_SECONDS,
        &mut errors,
    );
    let backoff_seconds = count(
        "backoff_seconds",
        request.backoff_seconds,
        DEFAULT_BACKOFF_SECONDS,
        &mut errors,
    );
    ApiError::check(errors)?;
    let spec = JobSpec {
        name: request.name,
        schedule: schedule.unwrap_or(Schedule::Once { at: now }),
        action,
        max_retries,
        depends_on: request.depends_on.unwrap_or_default(),
        missed: request.missed.unwrap_or_default(),
        overlap: request.overlap.unwrap_or_default(),
        timeout_seconds,
        backoff_seconds,
    };
    check_spec(&spec, now).map_err(|invalid| ApiError::validation(vec![invalid.into()]))?;
    Ok(spec)
}

/// `POST /api/v1/jobs`: 201 `{"id", "version"}`; 422 on a bad cron expression (with the
/// parser's message), an HTTP action to a host not allowed (`url_not_allowed`), or a
/// dependency that is not one of the caller's jobs.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "scheduler", summary = "Create a job (cron, at, after_seconds, or on_event: staff only, 422 unknown_event_type)", request_body = CreateJob, responses((status = 201, description = "201: {\"id\",\"version\"}", body = crate::schema::IdVersion), crate::schema::Problems))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKeyHeader,
    body: JsonBody<CreateJob>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let raw = body.raw;
    let spec = spec_of(body.value, now)?;
    if let Schedule::OnEvent { types, context } = &spec.schedule {
        // Events carry other people's data: only staff may be told of them.
        caller.require_staff()?;
        let known = &state.config.contexts.get::<JobsConfig>().event_types;
        if let Some(unknown) = types.iter().find(|t| {
            !known
                .iter()
                .any(|(c, k)| k == *t && context.as_ref().is_none_or(|context| context == c))
        }) {
            return Err(ApiError::unprocessable(
                "unknown_event_type",
                match context {
                    Some(context) => format!("no event type {unknown} in the context {context}"),
                    None => format!("no event type {unknown}"),
                },
            ));
        }
    }
    if let Action::Http { url, .. } = &spec.action {
        state
            .config
            .contexts
            .get::<JobsConfig>()
            .http_allow
            .check(url)
            .map_err(|invalid| ApiError::unprocessable("url_not_allowed", invalid.message))?;
    }
    let mut errors = Vec::new();
    for dependency in &spec.depends_on {
        let job = state.commands.fresh_state::<Job>(dependency).await?.state;
        if !job.exists() || job.owner_id() != caller.user_id {
            errors.push(FieldError::new(
                "depends_on",
                format!("no job of yours with id {dependency}"),
            ));
        }
    }
    ApiError::check(errors)?;
    let ctx = respond::context(&caller, IfMatch(None), key, &raw);
    let job_id = uuid::Uuid::now_v7().to_string();
    respond::run::<Job>(
        &state,
        &job_id,
        JobCommand::Create {
            job_id: job_id.clone(),
            owner_id: caller.user_id.clone(),
            spec,
            now,
        },
        &ctx,
        respond::id_and_version(201),
        Some("/api/v1/jobs"),
    )
    .await
}

/// A job as the API shows it: in the shape it was asked for (`schedule` with `cron` or `at`,
/// `timezone` beside it, the action's command by name), with its status and next run.
fn presented(view: JobView) -> serde_json::Value {
    use serde_json::json;
    let mut shown = json!({
        "id": view.id, "name": view.name, "status": view.status,
        "next_run_at": view.next_run_at, "created_at": view.created_at,
        "updated_at": view.updated_at, "version": view.version,
    });
    let Ok(spec) = serde_json::from_value::<JobSpec>(view.spec) else {
        return shown;
    };
    let (schedule, timezone) = match spec.schedule {
        Schedule::Cron {
            expression,
            timezone,
        } => (json!({"cron": expression}), timezone),
        Schedule::Once { at } => (json!({"at": at}), "UTC".to_owned()),
        Schedule::OnEvent { types, context } => (
            json!({"on_event": {"types": types, "context": context}}),
            "UTC".to_owned(),
        ),
    };
    let action = match spec.action {
        Action::Http { url, method, body } => {
            json!({"kind": "http", "url": url, "method": method, "body": body})
        }
        Action::Notify {
            channel, subject, ..
        } => json!({"kind": "notify", "channel": channel, "subject": subject}),
        Action::Command { command } => match command {
            CommandAction::Noop {} => json!({"kind": "command", "command": "noop"}),
            CommandAction::CancelOrder { order_id } => {
                json!({"kind": "command", "command": "cancel_order", "order_id": order_id})
            }
            CommandAction::ExpireUnpaidOrder { order_id } => {
                json!({"kind": "command", "command": "expire_unpaid_order", "order_id": order_id})
            }
        },
    };
    if let Some(fields) = shown.as_object_mut() {
        for (key, value) in [
            ("schedule", schedule),
            ("timezone", json!(timezone)),
            ("action", action),
            ("max_retries", json!(spec.max_retries)),
            ("depends_on", json!(spec.depends_on)),
            ("missed", json!(spec.missed)),
            ("overlap", json!(spec.overlap)),
            ("timeout_seconds", json!(spec.timeout_seconds)),
            ("backoff_seconds", json!(spec.backoff_seconds)),
        ] {
            fields.insert(key.to_owned(), value);
        }
    }
    shown
}

#[derive(Debug, Deserialize)]
pub struct ReadParams {
    min_version: Option<u64>,
}

/// The caller's job `id` from the read model, or 404.
async fn own_job(
    state: &AppState,
    caller: &Caller,
    id: &str,
    min_version: Option<u64>,
) -> Result<(JobView, Option<&'static str>), ApiError> {
    // Not a job id (a NUL, a megabyte): no such job, and nothing asked of the database.
    if !chronicle_scheduler::valid_id(id) {
        return Err(ApiError::not_found(format!("no job with id {id}")));
    }
    let read = state
        .freshness
        .read(
            min_version,
            |v: &JobView| u64::try_from(v.version).unwrap_or(0),
            || jobs::get(state.db.of(contexts::SCHEDULER), id),
        )
        .await
        .map_err(ApiError::internal)?;
    match read.value {
        Some(view) if view.owner_id == caller.user_id && view.status != "deleted" => {
            Ok((view, read.consistency))
        }
        _ => Err(ApiError::not_found(format!("no job with id {id}"))),
    }
}

/// `GET /api/v1/jobs/{id}`: status, next run, and what the owner chose.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "scheduler", summary = "One job with its next run (?min_version)", params(("id" = String, Path)), responses((status = 200, description = "200: {\"id\",\"name\",\"status\",\"schedule\",\"timezone\",\"action\",\"next_run_at\",...}"), crate::schema::Problems))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Response, ApiError> {
    let (view, consistency) = own_job(&state, &caller, &id, params.min_version).await?;
    let version = view.version;
    Ok(respond::read_model(presented(view), version, consistency))
}

/// `GET /api/v1/jobs`: the caller's jobs with `next_run_at`, newest first, in cursor pages.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "scheduler", summary = "The caller's jobs, in cursor pages", responses((status = 200, description = "200: {\"items\",\"next_cursor\"}", body = crate::schema::Page), crate::schema::Problems))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    let db = state.db.of(contexts::SCHEDULER);
    let page = PageRequest::from_params(&params)?
        .by_time_and_id(
            |after, fetch| jobs::jobs_of(db, &caller.user_id, after, fetch),
            |j| (j.created_at, &j.id),
        )
        .await?;
    Ok(Json(page.map(presented)).into_response())
}

/// `GET /api/v1/jobs/{id}/runs`: its runs, newest first, with outcome and attempt; due
/// times skipped (missed, or overlapping a run) are listed as `skipped`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/runs", tag = "scheduler", summary = "A job's runs, newest first, in cursor pages", params(("id" = String, Path)), responses((status = 200, description = "200: {\"items\",\"next_cursor\"}", body = crate::schema::Page), crate::schema::Problems))]
pub async fn runs(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    own_job(&state, &caller, &id, None).await?;
    let request = PageRequest::from_params(&params)?;
    let before = request.after.as_deref().and_then(|a| a.parse::<i64>().ok());
    let found = jobs::runs_of(
        state.db.of(contexts::SCHEDULER),
        &id,
        before,
        request.fetch(),
    )
    .await
    .map_err(ApiError::internal)?;
    let page = request.page(found, |(sequence, _)| sequence.to_string());
    Ok(Json(page.map(|(_, run)| run)).into_response())
}

/// Runs the owner's `command` (made from the caller's id and the time) on job `id`.
async fn command(
    state: &AppState,
    caller: &Caller,
    id: &str,
    command: fn(String, DateTime<Utc>) -> JobCommand,
) -> Result<chronicle_commands::Executed, ApiError> {
    if !chronicle_scheduler::valid_id(id) {
        return Err(ApiError::not_found(format!("no job with id {id}")));
    }
    let command = command(caller.user_id.clone(), Utc::now());
    Ok(state
        .commands
        .execute::<Job>(id, command, &(), &respond::caller_context(caller))
        .await?)
}

/// `POST /api/v1/jobs/{id}/pause`: 200; pausing twice changes nothing.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/pause", tag = "scheduler", summary = "Pause a job", params(("id" = String, Path)), responses((status = 200, description = "200: {\"id\",\"version\",\"status\":\"paused\"}"), crate::schema::Problems))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let pause = |by, now| JobCommand::Pause { by, now };
    let executed = command(&state, &caller, &id, pause).await?;
    Ok(respond::executed(
        executed,
        respond::id_version_status(200, "paused"),
    ))
}

/// `POST /api/v1/jobs/{id}/resume`: 200; due times that passed while paused are not run.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/resume", tag = "scheduler", summary = "Resume a job", params(("id" = String, Path)), responses((status = 200, description = "200: {\"id\",\"version\",\"status\":\"scheduled\"}"), crate::schema::Problems))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let resume = |by, now| JobCommand::Resume { by, now };
    let executed = command(&state, &caller, &id, resume).await?;
    Ok(respond::executed(
        executed,
        respond::id_version_status(200, "scheduled"),
    ))
}

/// `DELETE /api/v1/jobs/{id}`: 204. A run in progress finishes and is recorded.
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "scheduler", summary = "Delete a job", params(("id" = String, Path)), responses((status = 204, description = "204"), crate::schema::Problems))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let delete = |by, now| JobCommand::Delete { by, now };
    command(&state, &caller, &id, delete).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
