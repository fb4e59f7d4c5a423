//! The alert engine (`chronicle alert-engine`; several may run): evaluates every rule at
//! least every `every`, turns each alert transition into notifications, installs the
//! default rules, and applies the samples' retention.
//!
//! - **Each transition once.** Engines only measure and tell the rule ([`RuleCommand::Evaluate`]);
//!   the rule aggregate decides, under optimistic concurrency, so when two engines measure
//!   at once the second finds the transition made and decides nothing.
//! - **Each notification once per transition and channel.** The notifier reads the rule
//!   events on the shared subscriber runtime (one durable consumer, whichever engine takes
//!   the message) and makes one system job per channel, named by alert, transition and
//!   channel, whose action the scheduler runs with its retries and growing delays: a webhook
//!   that is down is tried again, and making the job twice (a redelivery) changes nothing.
//!   Firing, acknowledgement and resolution (of an alert that fired) are notified; an alert
//!   that never left pending is not.

use std::{future::Future, time::Duration};

use crate::{alerts, series};
use crate::{default_rules, Channel, Rule, RuleCommand, RuleError, RuleEvent};
use chronicle_bus::{ErrorChain, Handler, HandlerError, Subscriber, SubscriberConfig};
use chronicle_commands::{CommandContext, CommandError, CommandExecutor};
use chronicle_scheduler::{
    Action, Job, JobCommand, JobError, JobSpec, MissedPolicy, OverlapPolicy, Schedule,
};
use chronicle_schemas::{AggregateKind, Envelope};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use futures::FutureExt;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

/// The notifier's checkpoint and durable consumer.
pub const ALERT_NOTIFIER: &str = "alert-notifier";

/// Who owns the default rules and the notification jobs.
const SYSTEM: &str = "system:monitoring";

/// Tuning of the alert engine.
#[derive(Debug, Clone)]
pub struct AlertEngineConfig {
    /// How often every rule is evaluated (the API contract: at least every 10 s).
    pub every: Duration,
    /// How long samples are kept (`CHRONICLE_METRICS_RETENTION`).
    pub retention: Duration,
    /// How long per-minute rollups are kept.
    pub rollup_retention: Duration,
    /// How often retention is applied.
    pub purge_every: Duration,
    /// Retries of a notification whose channel fails, with growing delays from 1 s.
    pub notify_retries: u32,
    /// Whether the seed's four rules are installed at start (tests that count events turn
    /// it off).
    pub default_rules: bool,
}

impl Default for AlertEngineConfig {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(10),
            retention: Duration::from_secs(15 * 86_400),
            rollup_retention: Duration::from_secs(400 * 86_400),
            purge_every: Duration::from_secs(600),
            notify_retries: 8,
            default_rules: true,
        }
    }
}

pub struct AlertEngine {
    bus: CommandExecutor,
    pool: PgPool,
    nats: async_nats::Client,
    config: AlertEngineConfig,
}

impl AlertEngine {
    pub fn new(
        bus: CommandExecutor,
        pool: PgPool,
        nats: async_nats::Client,
        config: AlertEngineConfig,
    ) -> Self {
        Self {
            bus,
            pool,
            nats,
            config,
        }
    }

    /// The notifier's place on the shared runtime: rule events, one at a time.
    pub fn subscriber_config() -> SubscriberConfig {
        SubscriberConfig {
            batch_max: 1,
            // Making a job fails only when the database does: retried for about a minute,
            // then parked (visible, and retried on request).
            attempts: 10,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            fault_prefix: "alerts",
            ..SubscriberConfig::new(
                ALERT_NOTIFIER,
                ALERT_NOTIFIER,
                vec![format!("events.{}.{}.>", Rule::CONTEXT, Rule::TYPE)],
            )
        }
    }

    /// Runs until `shutdown` completes.
    ///
    /// # Errors
    /// When the notifier stops on a fault point.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown = shutdown.boxed().shared();
        let notifier = Subscriber::new(
            Notifications {
                bus: self.bus.clone(),
                retries: self.config.notify_retries,
            },
            self.pool.clone(),
            self.nats.clone(),
            Self::subscriber_config(),
        );
        let notifying = tokio::spawn(notifier.run(shutdown.clone()));
        // The rules are read from the alerts projection's table: on a new database the engine
        // may start before that projector has made it.
        let rules = alerts::AlertsProjection;
        if let Err(e) = chronicle_projections::setup(&self.pool, &rules).await {
            tracing::warn!(error = %ErrorChain(&e), "cannot create the alert rules' table");
        }
        if self.config.default_rules {
            self.install_defaults().await;
        }
        let evaluating = chronicle_bus::periodic::every(
            "alert evaluation",
            self.config.every,
            Duration::ZERO,
            shutdown.clone(),
            || async {
                self.evaluate_all().await;
                Ok::<(), std::convert::Infallible>(())
            },
        );
        let purging = chronicle_bus::periodic::every(
            "series purge",
            self.config.purge_every,
            Duration::ZERO,
            shutdown.clone(),
            || async {
                self.purge().await;
                Ok::<(), std::convert::Infallible>(())
            },
        );
        tokio::join!(evaluating, purging);
        match notifying.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the alert notifier stopped")),
            Err(join) => Err(anyhow::Error::new(join).context("the alert notifier panicked")),
        }
    }

    /// The seed's four rules, made once (made again, or after staff deleted one, nothing).
    async fn install_defaults(&self) {
        for (id, spec) in default_rules() {
            let create = RuleCommand::Create {
                rule_id: id.to_owned(),
                spec,
                by: SYSTEM.to_owned(),
                now: Utc::now(),
            };
            match self.bus.execute::<Rule>(id, create, &(), &context()).await {
                Ok(_) | Err(CommandError::Rejected(RuleError::Exists)) => {}
                Err(e) => {
                    tracing::warn!(rule = id, error = %ErrorChain(&e), "cannot install a default rule")
                }
            }
        }
    }

    /// Measures every rule's metric over its window and tells the rule.
    async fn evaluate_all(&self) {
        let rules = match alerts::rules(&self.pool).await {
            Ok(rules) => rules,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot list the alert rules");
                return;
            }
        };
        let retention =
            chrono::Duration::from_std(self.config.retention).unwrap_or(chrono::Duration::days(15));
        for rule in rules {
            let spec = &rule.spec;
            let now = Utc::now();
            let value = match series::evaluate(
                &self.pool,
                &spec.metric,
                &spec.labels,
                spec.agg,
                spec.window_seconds,
                now,
                retention,
            )
            .await
            {
                Ok(value) => value,
                Err(e) => {
                    tracing::warn!(rule = rule.rule_id, error = %ErrorChain(&e), "cannot measure a rule");
                    continue;
                }
            };
            let evaluate = RuleCommand::Evaluate { value, at: now };
            match self
                .bus
                .execute::<Rule>(&rule.rule_id, evaluate, &(), &context())
                .await
            {
                Ok(_) | Err(CommandError::Rejected(RuleError::NotFound)) => {}
                Err(e) => {
                    tracing::warn!(rule = rule.rule_id, error = %ErrorChain(&e), "cannot evaluate a rule");
                }
            }
        }
    }

    async fn purge(&self) {
        let now = Utc::now();
        let ago =
            |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        match series::purge(
            &self.pool,
            ago(self.config.retention),
            ago(self.config.rollup_retention),
        )
        .await
        {
            Ok((samples, rollups)) if samples + rollups > 0 => {
                tracing::info!(
                    samples,
                    rollups,
                    "retention removed old samples and rollups"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot apply the samples' retention")
            }
        }
    }
}

fn context() -> CommandContext {
    CommandContext {
        actor: Some(SYSTEM.to_owned()),
        ..CommandContext::new()
    }
}

/// The notifier's [`Handler`]: one job per channel for each notified transition.
struct Notifications {
    bus: CommandExecutor,
    retries: u32,
}

impl Handler for Notifications {
    async fn handle(
        &self,
        _conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), HandlerError> {
        for envelope in events {
            let event: RuleEvent = envelope.decode().map_err(HandlerError::rejected)?;
            let (alert_id, transition, value, by, at) = match event {
                RuleEvent::AlertFiring {
                    alert_id,
                    value,
                    at,
                } => (alert_id, "firing", Some(value), None, at),
                RuleEvent::AlertAcknowledged { alert_id, by, at } => {
                    (alert_id, "acknowledged", None, Some(by), at)
                }
                RuleEvent::AlertResolved {
                    alert_id,
                    value,
                    fired: true,
                    at,
                } => (alert_id, "resolved", value, None, at),
                _ => continue,
            };
            let rule = self
                .bus
                .fresh_state::<Rule>(&envelope.aggregate_id)
                .await
                .map_err(HandlerError::failed)?
                .state;
            let Some(spec) = rule.last_spec() else {
                continue;
            };
            let notice = Notice {
                rule_id: &envelope.aggregate_id,
                alert_id: &alert_id,
                transition,
                value,
                by: by.as_deref(),
                at,
                spec,
            };
            for (index, channel) in spec.channels.iter().enumerate() {
                self.notify(&notice, index, channel, envelope).await?;
            }
        }
        Ok(())
    }
}

/// What a notification says.
struct Notice<'a> {
    rule_id: &'a str,
    alert_id: &'a str,
    transition: &'static str,
    value: Option<f64>,
    by: Option<&'a str>,
    at: DateTime<Utc>,
    spec: &'a crate::RuleSpec,
}

impl Notice<'_> {
    fn subject(&self) -> String {
        let severity = serde_json::to_value(self.spec.severity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_uppercase))
            .unwrap_or_default();
        format!("[{severity}] {} is {}", self.spec.name, self.transition)
    }

    fn json(&self) -> String {
        json!({
            "alert_id": self.alert_id,
            "rule_id": self.rule_id,
            "rule": self.spec.name,
            "state": self.transition,
            "severity": self.spec.severity,
            "metric": self.spec.metric,
            "labels": self.spec.labels,
            "agg": self.spec.agg,
            "op": self.spec.op.symbol(),
            "threshold": self.spec.threshold,
            "value": self.value,
            "acknowledged_by": self.by,
            "at": self.at,
        })
        .to_string()
    }

    fn text(&self) -> String {
        let measured = self
            .value
            .map_or_else(|| "no data".to_owned(), |v| v.to_string());
        let mut text = format!(
            "Alert {} of rule \"{}\" is {} ({}).\n\n{:?} of {} over {} s {} {}: {}\n",
            self.alert_id,
            self.spec.name,
            self.transition,
            self.at.to_rfc3339(),
            self.spec.agg,
            self.spec.metric,
            self.spec.window_seconds,
            self.spec.op.symbol(),
            self.spec.threshold,
            measured,
        );
        if let Some(by) = self.by {
            text.push_str(&format!("Acknowledged by {by}.\n"));
        }
        text
    }
}

impl Notifications {
    async fn notify(
        &self,
        notice: &Notice<'_>,
        index: usize,
        channel: &Channel,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let job_id = format!(
            "notify-{}-{}-{index}",
            notice.alert_id.replace('.', "-"),
            notice.transition
        );
        let body = match channel {
            Channel::Webhook { .. } => notice.json(),
            Channel::Email { .. } => notice.text(),
        };
        let now = Utc::now();
        let create = JobCommand::Create {
            job_id: job_id.clone(),
            owner_id: SYSTEM.to_owned(),
            spec: JobSpec {
                name: notice
                    .subject()
                    .chars()
                    .take(chronicle_scheduler::MAX_NAME)
                    .collect(),
                schedule: Schedule::Once { at: now },
                action: Action::Notify {
                    channel: channel.clone(),
                    subject: notice
                        .subject()
                        .chars()
                        .take(chronicle_scheduler::MAX_NAME)
                        .collect(),
                    body,
                },
                max_retries: self.retries,
                depends_on: Vec::new(),
                missed: MissedPolicy::RunOnce,
                overlap: OverlapPolicy::Skip,
                timeout_seconds: 10,
                backoff_seconds: 1,
            },
            now,
        };
        let ctx = CommandContext {
            correlation_id: envelope.correlation_id,
            causation_id: Some(envelope.event_id),
            actor: Some(SYSTEM.to_owned()),
            ..CommandContext::new()
        };
        match self.bus.execute::<Job>(&job_id, create, &(), &ctx).await {
            Ok(_) | Err(CommandError::Rejected(JobError::Exists)) => Ok(()),
            Err(CommandError::Rejected(refused)) => Err(HandlerError::rejected(refused)),
            Err(other) => Err(HandlerError::failed(other)),
        }
    }
}
