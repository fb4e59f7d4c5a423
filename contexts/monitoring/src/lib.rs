//! The monitoring bounded context (the API contract, Monitoring), all of it: samples reported in the
//! Prometheus text format or JSON and stored as series with retention, alert [`Rule`]s whose
//! alerts go pending, fire after `for_seconds`, are acknowledged and resolve (each transition
//! decided once), the alert engine, business series from the log, and the routes.
//!
//! # Layout
//!
//! The domain (no I/O and no clock: the alert engine measures and tells a rule the time):
//! - [`events`]: the payloads of its events (alert rules, alerts), its contract with readers.
//! - `samples`: parsing and limits of reported samples.
//! - `rule`: the [`Rule`] aggregate with its alerts.
//! - here: the limits of a rule and its channels, and the default rules (the seed's four).
//!
//! Around it, each on the shared runtime:
//! - [`series`]: the time-series store (samples, per-minute rollups, queries, retention);
//!   not a projection: samples are not events.
//! - [`alerts`]: the read model of rules and every alert with its state.
//! - [`business`]: business series per minute, derived from other contexts' events.
//! - [`alert_engine`]: evaluates the rules, turns alert transitions into notification jobs
//!   on the scheduler, installs the default rules, applies the samples' retention.
//! - `routes`: `/api/v1/monitoring`, as the gateway hosts it ([`ROUTES`]), with the
//!   collection of Chronicle's own series each gateway runs beside them (`collect`).

pub mod alert_engine;
pub mod alerts;
pub mod business;
mod collect;
pub mod events;
mod routes;
mod rule;
mod samples;
pub mod series;
mod settings;

pub use alert_engine::{AlertEngine, AlertEngineConfig, ALERT_NOTIFIER};
pub use events::{Aggregation, AlertState, Channel, Comparison, RuleEvent, RuleSpec, Severity};
pub use routes::{MonitoringConfig, ROUTES};
pub use rule::{OpenAlert, Rule, RuleCommand, RuleError};
pub use samples::{
    check_source, is_label_name, is_metric_name, parse_json, parse_text, Limits, Sample,
    SampleError, MAX_LABELS, MAX_LABEL_VALUE, MAX_METRIC_NAME, MAX_SAMPLES, RESERVED_PREFIXES,
};
pub use settings::MonitoringSettings;

/// The monitoring context, as the list of contexts names it.
pub const CONTEXT: chronicle_host::Context = chronicle_host::Context {
    name: NAME,
    gateway: ROUTES,
    read_models: &[
        &chronicle_projections::Erased(alerts::AlertsProjection),
        &chronicle_projections::Erased(business::BusinessMetricsProjection),
    ],
    processes: &[ALERT_ENGINE],
    contracts,
    settings: Some(chronicle_host::SettingsGroup::of::<MonitoringSettings>()),
    declare: |s| {
        s.declare::<AlertEngineConfig>()
            .declare::<chronicle_sagas::NotifyConfig>();
    },
    // Its samples, series and rollups predate the contexts' own migrations: they are made
    // by the shared ones (0010, moved by 0013).
    migrations: None,
};

/// Its name: its PostgreSQL schema, and the middle of its subjects (`events.monitoring.>`).
pub const NAME: &str = "monitoring";

/// The alert engine: two by default, each alert transition still happens once.
pub const ALERT_ENGINE: chronicle_host::Process = chronicle_host::Process {
    name: "alert-engine",
    args: &["alert-engine"],
    about: "An alert engine: evaluates alert rules, sends notifications, applies the samples' \
            retention (run several: each transition still happens once)",
    replicas: 2,
    reader: Some(chronicle_host::Reader {
        durable: ALERT_NOTIFIER,
        context: NAME,
    }),
    // Its rules, alerts and samples, and the notification jobs it makes on the scheduler.
    uses: Some(&[NAME, chronicle_commands::contexts::SCHEDULER]),
    start: |host, shutdown| {
        let engine = AlertEngine::new(
            host.commands.clone(),
            host.db.of(NAME).clone(),
            host.nats.clone(),
            host.settings.get::<AlertEngineConfig>().clone(),
        );
        Ok(Box::pin(engine.run(shutdown)))
    },
};

/// The contracts of its events (`chronicle schemas export`).
pub fn contracts() -> Vec<chronicle_schemas::contracts::EventContract> {
    chronicle_schemas::contracts::contracts_of::<RuleEvent>(NAME, "rule")
}

use chronicle_scheduler::{AllowList, HttpTarget};
use chronicle_schemas::limits::{self, Invalid};

pub use chronicle_scheduler::valid_id;

/// Longest rule name.
pub const MAX_RULE_NAME: usize = 200;
/// Longest window a rule may look back over: one day.
pub const MAX_WINDOW_SECONDS: u32 = 86_400;
/// Shortest window: the built-in series come every 10 s.
pub const MIN_WINDOW_SECONDS: u32 = 10;
/// Default window when a rule names none.
pub const DEFAULT_WINDOW_SECONDS: u32 = 60;
/// Longest a condition may be required to hold before firing: one day.
pub const MAX_FOR_SECONDS: u32 = 86_400;
/// Most channels a rule notifies.
pub const MAX_CHANNELS: usize = 8;
/// Longest email address.
pub const MAX_EMAIL: usize = 254;
/// Largest threshold magnitude (any finite value a sample could plausibly have).
pub const MAX_THRESHOLD: f64 = 1e15;

/// The limits of a rule that need nothing outside it: name, metric, labels, window,
/// threshold, channels' shape. (Webhook hosts are checked against the operator's list by
/// [`check_channels`].)
///
/// # Errors
/// The first field outside its limits.
pub fn check_spec_limits(spec: &RuleSpec) -> Result<(), Invalid> {
    limits::text("name", &spec.name, 1, MAX_RULE_NAME)?;
    if !is_metric_name(&spec.metric) {
        return Err(Invalid::new(
            "metric",
            "a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*, at most 200 characters)",
        ));
    }
    if spec.labels.len() > MAX_LABELS {
        return Err(Invalid::new(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (key, value) in &spec.labels {
        if !is_label_name(key) {
            return Err(Invalid::new(
                "labels",
                format!("{key:?} is not a label name"),
            ));
        }
        limits::text("labels", value, 0, MAX_LABEL_VALUE)?;
    }
    limits::in_range(
        "window_seconds",
        i128::from(spec.window_seconds),
        i128::from(MIN_WINDOW_SECONDS),
        i128::from(MAX_WINDOW_SECONDS),
    )?;
    limits::in_range(
        "for_seconds",
        i128::from(spec.for_seconds),
        0,
        i128::from(MAX_FOR_SECONDS),
    )?;
    if !spec.threshold.is_finite() || spec.threshold.abs() > MAX_THRESHOLD {
        return Err(Invalid::new(
            "threshold",
            "a finite number of magnitude at most 1e15",
        ));
    }
    if spec.channels.len() > MAX_CHANNELS {
        return Err(Invalid::new(
            "channels",
            format!("at most {MAX_CHANNELS} channels"),
        ));
    }
    for channel in &spec.channels {
        match channel {
            Channel::Webhook { url } => {
                HttpTarget::parse(url).map_err(|e| Invalid::new("channels.url", e.message))?;
            }
            Channel::Email { to } => check_email(to)?,
        }
    }
    Ok(())
}

/// An email address as a channel takes it: `local@domain`, no spaces or control characters.
///
/// # Errors
/// [`Invalid`] for `channels.to`.
pub fn check_email(to: &str) -> Result<(), Invalid> {
    let invalid = || Invalid::new("channels.to", "an email address (local@domain)");
    limits::text("channels.to", to, 3, MAX_EMAIL)?;
    let (local, domain) = to.split_once('@').ok_or_else(invalid)?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && !"<>()[],;:\"@\\".contains(c))
    };
    if plain(local) && plain(domain) && !domain.starts_with('.') && !domain.ends_with('.') {
        Ok(())
    } else {
        Err(invalid())
    }
}

/// Which of `spec`'s webhooks `allow` does not allow (`CHRONICLE_NOTIFY_ALLOW`).
///
/// # Errors
/// The first webhook whose host is not on the list, with a message naming it.
pub fn check_channels(spec: &RuleSpec, allow: &AllowList) -> Result<(), Invalid> {
    for channel in &spec.channels {
        if let Channel::Webhook { url } = channel {
            let target =
                HttpTarget::parse(url).map_err(|e| Invalid::new("channels.url", e.message))?;
            if !allow.allows(&target) {
                return Err(Invalid::new(
                    "channels.url",
                    format!(
                        "{}:{} is not in CHRONICLE_NOTIFY_ALLOW",
                        target.host, target.port
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The seed's four rules (availability under 99 %, response time over 1 s, error rate over
/// 1 %, resource use over 80 %) on Chronicle's own series, as `(id, spec)`. They notify no
/// one until staff give them channels.
pub fn default_rules() -> Vec<(&'static str, RuleSpec)> {
    let rule = |name: &str, metric: &str, agg, op, threshold: f64, severity| RuleSpec {
        name: name.to_owned(),
        metric: metric.to_owned(),
        // The request series are per route template and for all routes together.
        labels: if metric.starts_with("chronicle_http_") {
            [("route".to_owned(), "all".to_owned())].into()
        } else {
            Default::default()
        },
        agg,
        window_seconds: 300,
        op,
        threshold,
        for_seconds: 300,
        severity,
        channels: Vec::new(),
    };
    vec![
        (
            "default-availability",
            rule(
                "Availability under 99%",
                "chronicle_availability_ratio",
                Aggregation::Avg,
                Comparison::Below,
                0.99,
                Severity::Critical,
            ),
        ),
        (
            "default-response-time",
            rule(
                "Response time (p99) over 1 s",
                "chronicle_http_latency_p99_seconds",
                Aggregation::Max,
                Comparison::Above,
                1.0,
                Severity::Warning,
            ),
        ),
        (
            "default-error-rate",
            rule(
                "Error rate over 1%",
                "chronicle_http_error_ratio",
                Aggregation::Avg,
                Comparison::Above,
                0.01,
                Severity::Warning,
            ),
        ),
        (
            "default-resource-use",
            rule(
                "Resource use (CPU, memory, disk) over 80%",
                "chronicle_host_resource_ratio",
                Aggregation::Max,
                Comparison::Above,
                0.8,
                Severity::Warning,
            ),
        ),
    ]
}
