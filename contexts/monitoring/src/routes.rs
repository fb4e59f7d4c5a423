//! `/api/v1/monitoring` (the API contract, Monitoring): samples reported and queried, the metric
//! names known, alert rules (staff only) and alerts.

use std::collections::BTreeMap;

use crate::{
    alerts,
    series::{self, SeriesQuery},
};
use crate::{
    check_channels, check_source, check_spec_limits, is_label_name, is_metric_name, parse_json,
    parse_text, Aggregation, Channel, Comparison, Limits, Rule, RuleCommand, RuleSpec, Severity,
    DEFAULT_WINDOW_SECONDS,
};
use axum::{
    body::Bytes,
    http::{header, HeaderMap},
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Deserialize;
use serde_json::json;

use chronicle_gateway::prelude::*;

/// This module's routes (the API contract).
fn routes() -> Routes {
    documented![
        report,
        query,
        metrics,
        create_rule,
        list_rules,
        get_rule,
        change_rule,
        delete_rule,
        list_alerts,
        acknowledge
    ]
}

/// How the monitoring routes (and the gateway's collection of its own series) are
/// configured. Which webhooks a rule may name is the notifier's
/// ([`chronicle_sagas::NotifyConfig`]).
#[derive(Debug, Clone)]
pub struct MonitoringConfig {
    /// How long samples are kept (`CHRONICLE_METRICS_RETENTION`); older queries read the
    /// per-minute rollups.
    pub retention: std::time::Duration,
    /// How often the built-in series are collected and stored (`None`: never).
    pub collect_every: Option<std::time::Duration>,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            retention: std::time::Duration::from_secs(15 * 86_400),
            collect_every: Some(std::time::Duration::from_secs(10)),
        }
    }
}

/// The monitoring context as the gateway hosts it.
pub const ROUTES: Context = Context {
    beside: |state, instance| {
        let every = state
            .config
            .contexts
            .get::<MonitoringConfig>()
            .collect_every?;
        Some(Box::pin(crate::collect::run(
            state.clone(),
            every,
            instance.to_owned(),
        )))
    },
    routes,
    problems: &[
        "alert_not_firing",
        "malformed_samples",
        "rule_exists",
        "too_many_series",
    ],
    settings: |s| {
        s.declare::<MonitoringConfig>()
            .declare::<chronicle_sagas::NotifyConfig>();
    },
    state: |_, _| {},
};

/// One sample of `POST /api/v1/monitoring/samples` in JSON.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only
pub struct SampleJson {
    metric: String,
    labels: Option<std::collections::BTreeMap<String, String>>,
    value: f64,
    /// RFC 3339, or seconds since the epoch; now when absent.
    #[schema(value_type = Option<String>)]
    at: Option<String>,
}

/// Most points one series of a query may have.
const MAX_POINTS: i64 = 11_000;

/// `POST /api/v1/monitoring/samples`: Prometheus text (any content type but JSON) or JSON;
/// 202 `{"accepted": N}`; 400 `malformed_samples` naming the line (or sample) at fault, and
/// nothing stored.
#[utoipa::path(post, path = "/api/v1/monitoring/samples", tag = "monitoring", summary = "Report samples (Prometheus text or JSON; Chronicle-Source)", request_body(content((String = "text/plain"), (Vec<SampleJson> = "application/json")), description = "Prometheus text exposition format, or a JSON array [{metric, labels, value, at?}]"), responses((status = 202, description = "202: {\"accepted\"}"), schema::Problems))]
pub async fn report(
    State(state): State<AppState>,
    _caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let source = match headers.get("chronicle-source") {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::bad_request("malformed_samples", "Chronicle-Source is not text")
            })?;
            check_source(text).map_err(malformed)?;
            Some(text.to_owned())
        }
    };
    let now = Utc::now();
    let limits = Limits {
        now,
        oldest: now - retention(&state),
        source,
        own_series: false,
    };
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let samples = if json {
        parse_json(&body, &limits)
    } else {
        let text = std::str::from_utf8(&body).map_err(|e| {
            ApiError::bad_request(
                "malformed_samples",
                format!("the body is not UTF-8 (byte {})", e.valid_up_to()),
            )
        })?;
        parse_text(text, &limits)
    }
    .map_err(malformed)?;
    let accepted = series::store(state.db.of(crate::NAME), &samples)
        .await
        .map_err(|e| match e {
            series::StoreError::TooManySeries { .. } => ApiError::unprocessable(
                "too_many_series",
                format!("{e}: keep unbounded values (ids, times) out of labels"),
            ),
            series::StoreError::Database(e) => ApiError::internal(e),
        })?;
    metrics::counter!("chronicle_monitoring_samples_total").increment(accepted);
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": accepted}))).into_response())
}

fn malformed(error: crate::SampleError) -> ApiError {
    let line = error
        .location
        .strip_prefix("line ")
        .and_then(|n| n.parse::<u64>().ok());
    let mut problem = ApiError::bad_request("malformed_samples", error.to_string())
        .with("location", error.location.clone());
    if let Some(line) = line {
        problem = problem.with("line", line);
    }
    problem
}

fn retention(state: &AppState) -> Duration {
    Duration::from_std(state.config.contexts.get::<MonitoringConfig>().retention)
        .unwrap_or(Duration::days(15))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    metric: String,
    labels: Option<String>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    agg: Option<String>,
}

/// `GET /api/v1/monitoring/query`: `{"metric","step_seconds","series":[{"labels","points"}]}`
/// with a point `[unix seconds, value]` per step that had samples. `from` defaults to an
/// hour before `to`, `to` to now, `step` to 60 s, `agg` to `avg`. A step of 5 minutes or
/// more, or a range reaching past the retention, reads the per-minute rollups.
#[utoipa::path(get, path = "/api/v1/monitoring/query", tag = "monitoring", summary = "Aggregated points (?metric, labels, from, to, step, agg)", responses((status = 200, description = "200: {\"metric\",\"step_seconds\",\"series\"}: series is [{labels, points: [[unix seconds, value]]}]"), schema::Problems))]
pub async fn query(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(params): ApiQuery<QueryParams>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    if !is_metric_name(&params.metric) {
        errors.push(FieldError::new("metric", "a metric name"));
    }
    let labels = match params.labels.as_deref().map(parse_labels).transpose() {
        Ok(labels) => labels.unwrap_or_default(),
        Err(e) => {
            errors.push(e);
            BTreeMap::new()
        }
    };
    let now = Utc::now();
    let to = time_param("to", params.to.as_deref(), now, &mut errors);
    let from = time_param(
        "from",
        params.from.as_deref(),
        to - Duration::hours(1),
        &mut errors,
    );
    let step = match params.step.as_deref().map(parse_step).unwrap_or(Some(60)) {
        Some(step) => step,
        None => {
            errors.push(FieldError::new(
                "step",
                "seconds, or a number with s, m, h or d (60s, 5m), from 1 s to 1 day",
            ));
            60
        }
    };
    let agg = match params.agg.as_deref().unwrap_or("avg") {
        "avg" => Aggregation::Avg,
        "min" => Aggregation::Min,
        "max" => Aggregation::Max,
        "sum" => Aggregation::Sum,
        "rate" => Aggregation::Rate,
        "p99" => Aggregation::P99,
        _ => {
            errors.push(FieldError::new(
                "agg",
                "one of avg, min, max, sum, rate, p99",
            ));
            Aggregation::Avg
        }
    };
    if from >= to {
        errors.push(FieldError::new("from", "before `to`"));
    } else if (to - from).num_seconds() / i64::from(step) > MAX_POINTS {
        errors.push(FieldError::new(
            "step",
            format!("at most {MAX_POINTS} points per series: a larger step or a shorter range"),
        ));
    }
    ApiError::check(errors)?;
    let query = SeriesQuery {
        metric: params.metric.clone(),
        labels,
        from,
        to,
        step_seconds: step,
        agg,
    };
    let found = series::query(state.db.of(crate::NAME), &query, retention(&state))
        .await
        .map_err(ApiError::internal)?;
    Ok(
        Json(json!({"metric": params.metric, "step_seconds": step, "series": found}))
            .into_response(),
    )
}

/// `k:v,k2:v2` as labels.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, FieldError> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once(':')
            .ok_or_else(|| FieldError::new("labels", "k:v pairs separated by commas"))?;
        if !is_label_name(key) {
            return Err(FieldError::new(
                "labels",
                format!("{key:?} is not a label name"),
            ));
        }
        chronicle_schemas::limits::text("labels", value, 0, crate::MAX_LABEL_VALUE)
            .map_err(|i| FieldError::new("labels", i.message))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    if labels.len() > crate::MAX_LABELS {
        return Err(FieldError::new("labels", "too many labels"));
    }
    Ok(labels)
}

/// RFC 3339 or seconds since the epoch; `default` when absent.
fn time_param(
    field: &str,
    value: Option<&str>,
    default: DateTime<Utc>,
    errors: &mut Vec<FieldError>,
) -> DateTime<Utc> {
    let Some(value) = value else {
        return default;
    };
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return at.with_timezone(&Utc);
    }
    match value.parse::<f64>() {
        Ok(s) if s.is_finite() && s.abs() < 1e11 => Utc
            .timestamp_millis_opt((s * 1000.0) as i64)
            .single()
            .unwrap_or(default),
        _ => {
            errors.push(FieldError::new(
                field,
                "RFC 3339 or seconds since the epoch",
            ));
            default
        }
    }
}

/// `60`, `60s`, `5m`, `1h`, `1d` as seconds, 1 s to 1 day.
fn parse_step(text: &str) -> Option<u32> {
    let (number, unit) = match text.char_indices().last()? {
        (i, 's') => (&text[..i], 1),
        (i, 'm') => (&text[..i], 60),
        (i, 'h') => (&text[..i], 3_600),
        (i, 'd') => (&text[..i], 86_400),
        _ => (text, 1),
    };
    let seconds = number.parse::<u32>().ok()?.checked_mul(unit)?;
    (1..=86_400).contains(&seconds).then_some(seconds)
}

/// `GET /api/v1/monitoring/metrics`: `[{"metric","labels":[keys]}]`.
#[utoipa::path(get, path = "/api/v1/monitoring/metrics", tag = "monitoring", summary = "The metric names known, with their label keys", responses((status = 200, description = "200: [{\"metric\",\"labels\"}]"), schema::Problems))]
pub async fn metrics(State(state): State<AppState>, _caller: Caller) -> Result<Response, ApiError> {
    let known = series::metrics(state.db.of(crate::NAME))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(known).into_response())
}

/// A rule as it is asked for: `window_seconds` defaults to 60, `for_seconds` to 0,
/// `severity` to `warning`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleRequest {
    name: String,
    metric: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// `avg`, `min`, `max`, `sum`, `rate` or `p99`.
    #[schema(value_type = String, example = "avg")]
    agg: Aggregation,
    window_seconds: Option<u32>,
    /// `>`, `<`, `>=` or `<=`.
    #[schema(value_type = String, example = ">")]
    op: Comparison,
    threshold: f64,
    for_seconds: Option<u32>,
    /// `info`, `warning` (the default) or `critical`.
    #[schema(value_type = Option<String>, example = "warning")]
    severity: Option<Severity>,
    #[serde(default)]
    /// `{"kind":"webhook","url"}` or `{"kind":"email","to"}`.
    #[schema(value_type = Vec<Object>)]
    channels: Vec<Channel>,
}

/// A change: the fields given replace the rule's.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RulePatch {
    name: Option<String>,
    metric: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    #[schema(value_type = Option<String>, example = "avg")]
    agg: Option<Aggregation>,
    window_seconds: Option<u32>,
    #[schema(value_type = Option<String>, example = ">")]
    op: Option<Comparison>,
    threshold: Option<f64>,
    for_seconds: Option<u32>,
    #[schema(value_type = Option<String>, example = "critical")]
    severity: Option<Severity>,
    #[schema(value_type = Option<Vec<Object>>)]
    channels: Option<Vec<Channel>>,
}

/// The domain's limits, then the webhook hosts (422 `url_not_allowed`).
fn checked(state: &AppState, spec: RuleSpec) -> Result<RuleSpec, ApiError> {
    check_spec_limits(&spec).map_err(|invalid| ApiError::validation(vec![invalid.into()]))?;
    check_channels(
        &spec,
        &state
            .config
            .contexts
            .get::<chronicle_sagas::NotifyConfig>()
            .allow,
    )
    .map_err(|invalid| ApiError::unprocessable("url_not_allowed", invalid.message))?;
    Ok(spec)
}

/// `POST /api/v1/monitoring/rules` (staff): 201 `{"id","version"}`.
#[utoipa::path(post, path = "/api/v1/monitoring/rules", tag = "monitoring", summary = "Create an alert rule (staff)", request_body = RuleRequest, responses((status = 201, description = "201: {\"id\",\"version\"}", body = schema::IdVersion), schema::Problems))]
pub async fn create_rule(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKeyHeader,
    body: JsonBody<RuleRequest>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let raw = body.raw;
    let r = body.value;
    let spec = checked(
        &state,
        RuleSpec {
            name: r.name,
            metric: r.metric,
            labels: r.labels,
            agg: r.agg,
            window_seconds: r.window_seconds.unwrap_or(DEFAULT_WINDOW_SECONDS),
            op: r.op,
            threshold: r.threshold,
            for_seconds: r.for_seconds.unwrap_or(0),
            severity: r.severity.unwrap_or(Severity::Warning),
            channels: r.channels,
        },
    )?;
    let ctx = respond::context(&caller, IfMatch(None), key, &raw);
    let rule_id = uuid::Uuid::now_v7().to_string();
    respond::run::<Rule>(
        &state,
        &rule_id,
        RuleCommand::Create {
            rule_id: rule_id.clone(),
            spec,
            by: caller.user_id.clone(),
            now: Utc::now(),
        },
        &ctx,
        respond::id_and_version(201),
        Some("/api/v1/monitoring/rules"),
    )
    .await
}

/// `GET /api/v1/monitoring/rules` (staff): every rule with its spec.
#[utoipa::path(get, path = "/api/v1/monitoring/rules", tag = "monitoring", summary = "The alert rules (staff)", responses((status = 200, description = "200: [rule]"), schema::Problems))]
pub async fn list_rules(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let rules = alerts::rules(state.db.of(crate::NAME))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(rules).into_response())
}

/// `GET /api/v1/monitoring/rules/{id}` (staff).
#[utoipa::path(get, path = "/api/v1/monitoring/rules/{id}", tag = "monitoring", summary = "One alert rule (staff)", params(("id" = String, Path)), responses((status = 200, description = "200: rule"), schema::Problems))]
pub async fn get_rule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let missing = || ApiError::not_found(format!("no rule with id {id}"));
    if !crate::valid_id(&id) {
        return Err(missing());
    }
    let rule = alerts::rule(state.db.of(crate::NAME), &id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(missing)?;
    let version = rule.version;
    Ok(respond::read_model(rule, version, None))
}

/// `PATCH /api/v1/monitoring/rules/{id}` (staff): the fields given replace the rule's; an
/// open alert resolves (its condition changed). Honours `If-Match`.
#[utoipa::path(patch, path = "/api/v1/monitoring/rules/{id}", tag = "monitoring", summary = "Change an alert rule (staff, If-Match)", params(("id" = String, Path)), request_body = RulePatch, responses((status = 200, description = "200: {\"id\",\"version\"}", body = schema::IdVersion), schema::Problems))]
pub async fn change_rule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    if_match: IfMatch,
    key: IdempotencyKeyHeader,
    body: JsonBody<RulePatch>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let missing = || ApiError::not_found(format!("no rule with id {id}"));
    if !crate::valid_id(&id) {
        return Err(missing());
    }
    let current = state.commands.fresh_state::<Rule>(&id).await?.state;
    let spec = current.spec().cloned().ok_or_else(missing)?;
    let p = body.value;
    let spec = checked(
        &state,
        RuleSpec {
            name: p.name.unwrap_or(spec.name),
            metric: p.metric.unwrap_or(spec.metric),
            labels: p.labels.unwrap_or(spec.labels),
            agg: p.agg.unwrap_or(spec.agg),
            window_seconds: p.window_seconds.unwrap_or(spec.window_seconds),
            op: p.op.unwrap_or(spec.op),
            threshold: p.threshold.unwrap_or(spec.threshold),
            for_seconds: p.for_seconds.unwrap_or(spec.for_seconds),
            severity: p.severity.unwrap_or(spec.severity),
            channels: p.channels.unwrap_or(spec.channels),
        },
    )?;
    let ctx = respond::context(&caller, if_match, key, &body.raw);
    let executed = state
        .commands
        .execute::<Rule>(
            &id,
            RuleCommand::Change {
                spec,
                by: caller.user_id.clone(),
                now: Utc::now(),
            },
            &(),
            &ctx,
        )
        .await?;
    Ok(respond::executed(executed, respond::id_and_version(200)))
}

/// `DELETE /api/v1/monitoring/rules/{id}` (staff): 204; an open alert resolves.
#[utoipa::path(delete, path = "/api/v1/monitoring/rules/{id}", tag = "monitoring", summary = "Delete an alert rule (staff)", params(("id" = String, Path)), responses((status = 204, description = "204"), schema::Problems))]
pub async fn delete_rule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    if !crate::valid_id(&id) {
        return Err(ApiError::not_found(format!("no rule with id {id}")));
    }
    let delete = RuleCommand::Delete {
        by: caller.user_id.clone(),
        now: Utc::now(),
    };
    state
        .commands
        .execute::<Rule>(&id, delete, &(), &respond::caller_context(&caller))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertParams {
    state: Option<String>,
    rule_id: Option<String>,
    min_version: Option<u64>,
    limit: Option<u32>,
}

/// `GET /api/v1/monitoring/alerts?state=&rule_id=`: newest first (at most `limit`, default
/// 100). The list is eventually consistent; with `rule_id` and `min_version` (the version an
/// acknowledgement answered) it first waits up to 2 s for the rule's alerts to reach that
/// version, and says `Chronicle-Consistency: fresh` or `stale`.
#[utoipa::path(get, path = "/api/v1/monitoring/alerts", tag = "monitoring", summary = "Alerts, newest first (?state, ?rule_id, ?min_version, ?limit)", params(("state" = Option<String>, Query, description = "pending, firing, acknowledged or resolved"), ("rule_id" = Option<String>, Query, description = "one rule's alerts"), ("min_version" = Option<u64>, Query, description = "with rule_id: wait for the rule's alerts to reach this version"), ("limit" = Option<u32>, Query, description = "1-1,000, default 100")), responses((status = 200, description = "200: [{\"id\",\"rule_id\",\"state\",\"value\",\"started_at\",\"fired_at\"?,\"acknowledged_by\"?,\"resolved_at\"?,\"rule_name\"?,\"metric\"?,\"severity\"?}]: the rule's name, metric and severity unless it was deleted"), schema::Problems))]
pub async fn list_alerts(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(params): ApiQuery<AlertParams>,
) -> Result<Response, ApiError> {
    let wanted = params.state.as_deref();
    if wanted.is_some_and(|s| !["pending", "firing", "acknowledged", "resolved"].contains(&s)) {
        return Err(ApiError::validation(vec![FieldError::new(
            "state",
            "one of pending, firing, acknowledged, resolved",
        )]));
    }
    let rule_id = params.rule_id.as_deref();
    let consistency = match (params.min_version, rule_id) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ApiError::validation(vec![FieldError::new(
                "min_version",
                "give the rule_id whose version it is",
            )]))
        }
        // Not a rule id (a NUL, a megabyte): it has no alerts, and nothing is waited for.
        (Some(_), Some(rule)) if !crate::valid_id(rule) => Some("stale"),
        (Some(min), Some(rule)) => {
            let (_, fresh) = state
                .freshness
                .wait_for(
                    min,
                    |version: &i64| *version as u64,
                    || alerts::rule_version(state.db.of(crate::NAME), rule),
                )
                .await
                .map_err(ApiError::internal)?;
            Some(if fresh { "fresh" } else { "stale" })
        }
    };
    let limit = i64::from(params.limit.unwrap_or(100).clamp(1, 1_000));
    let found = match rule_id {
        Some(rule) if !crate::valid_id(rule) => Vec::new(),
        _ => alerts::alerts(state.db.of(crate::NAME), wanted, rule_id, limit)
            .await
            .map_err(ApiError::internal)?,
    };
    let mut response = Json(found).into_response();
    if let Some(consistency) = consistency {
        response.headers_mut().insert(
            "chronicle-consistency",
            axum::http::HeaderValue::from_static(consistency),
        );
    }
    Ok(response)
}

/// `POST /api/v1/monitoring/alerts/{id}/acknowledge` (staff): 200; no more notifications
/// until it resolves and fires again. 409 `alert_not_firing` when it is not firing.
#[utoipa::path(post, path = "/api/v1/monitoring/alerts/{id}/acknowledge", tag = "monitoring", summary = "Acknowledge a firing alert (staff)", params(("id" = String, Path)), responses((status = 200, description = "200: {\"id\",\"version\",\"status\":\"acknowledged\"}"), schema::Problems))]
pub async fn acknowledge(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let rule_id = id
        .rsplit_once('.')
        .map(|(rule, _)| rule)
        .filter(|rule| crate::valid_id(rule))
        .ok_or_else(|| ApiError::not_found(format!("no alert with id {id}")))?;
    let ack = RuleCommand::Acknowledge {
        alert_id: id.clone(),
        by: caller.user_id.clone(),
        at: Utc::now(),
    };
    let executed = state
        .commands
        .execute::<Rule>(rule_id, ack, &(), &respond::caller_context(&caller))
        .await?;
    Ok(respond::executed(
        executed,
        respond::id_version_status(200, "acknowledged"),
    ))
}
