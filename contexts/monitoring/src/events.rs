//! Events of the monitoring context: alert rules and the alerts they raise.
//!
//! Samples are not events (the API contract, Monitoring): they go to a time-series table with
//! retention. What is worth a history is here: who asked to be told about what, and every
//! transition of every alert (pending, firing, acknowledged, resolved), which is what
//! notifications are sent for. A rule's channels hold a webhook URL or an email address,
//! never a credential.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use chronicle_schemas::scheduler::Channel;

/// How the samples of a rule's window are reduced to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Avg,
    Min,
    Max,
    Sum,
    /// Increase per second of a counter (resets counted from zero).
    Rate,
    /// The 99th percentile of the samples.
    P99,
}

/// How a rule's value is compared with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Comparison {
    #[serde(rename = ">")]
    Above,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<=")]
    AtMost,
}

impl Comparison {
    /// Whether `value` meets the condition against `threshold`.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Above => value > threshold,
            Self::Below => value < threshold,
            Self::AtLeast => value >= threshold,
            Self::AtMost => value <= threshold,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Self::Above => ">",
            Self::Below => "<",
            Self::AtLeast => ">=",
            Self::AtMost => "<=",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// What a rule watches and when it alerts: `agg` of `metric` (the series whose labels
/// include `labels`) over the last `window_seconds`, compared with `threshold`; an alert
/// fires once the condition has held for `for_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RuleSpec {
    pub name: String,
    pub metric: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub agg: Aggregation,
    pub window_seconds: u32,
    pub op: Comparison,
    pub threshold: f64,
    pub for_seconds: u32,
    pub severity: Severity,
    #[serde(default)]
    pub channels: Vec<Channel>,
}

/// The states of an alert, in the order it passes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Pending,
    Firing,
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
        }
    }
}

/// What happened to a rule and its alerts. An alert's id is `<rule id>.<n>`, `n` counting
/// the rule's alerts from 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RuleEvent {
    RuleCreated {
        rule_id: String,
        spec: RuleSpec,
        created_by: String,
        created_at: DateTime<Utc>,
    },
    RuleChanged {
        spec: RuleSpec,
        changed_by: String,
        changed_at: DateTime<Utc>,
    },
    RuleDeleted {
        deleted_by: String,
        deleted_at: DateTime<Utc>,
    },
    /// The condition started to hold (`value` is what was measured).
    AlertPending {
        alert_id: String,
        value: f64,
        at: DateTime<Utc>,
    },
    /// The condition held for `for_seconds`: people are told.
    AlertFiring {
        alert_id: String,
        value: f64,
        at: DateTime<Utc>,
    },
    /// Someone took it on: no more notifications until it resolves and fires again.
    AlertAcknowledged {
        alert_id: String,
        by: String,
        at: DateTime<Utc>,
    },
    /// The condition no longer holds (or the rule was changed or deleted). `value` is the
    /// last measured value, absent when there was no data. `fired` tells whether it had
    /// fired (an alert resolved while pending was never notified).
    AlertResolved {
        alert_id: String,
        value: Option<f64>,
        fired: bool,
        at: DateTime<Utc>,
    },
}

chronicle_schemas::event_types!(RuleEvent:
    RuleCreated,
    RuleChanged,
    RuleDeleted,
    AlertPending,
    AlertFiring,
    AlertAcknowledged,
    AlertResolved,
);

impl chronicle_schemas::examples::Examples for RuleEvent {
    fn examples() -> Vec<Self> {
        use chronicle_schemas::examples::at;
        let rule = "0193f6ad-8c9d-7fb0-9a88-9b0c1d2e3f01";
        let alert = format!("{rule}.1");
        let spec = RuleSpec {
            name: "slow checkout".to_owned(),
            metric: "http_request_duration_seconds".to_owned(),
            labels: BTreeMap::from([("route".to_owned(), "/api/v1/cart/checkout".to_owned())]),
            agg: Aggregation::P99,
            window_seconds: 300,
            op: Comparison::Above,
            threshold: 0.5,
            for_seconds: 120,
            severity: Severity::Warning,
            channels: vec![Channel::Webhook {
                url: "http://hooks.internal:9000/alerts".to_owned(),
            }],
        };
        vec![
            Self::RuleCreated {
                rule_id: rule.to_owned(),
                spec: spec.clone(),
                created_by: "0193f6a2-7c1e-7d40-9a51-3f2b8c0d1e01".to_owned(),
                created_at: at(0),
            },
            Self::RuleChanged {
                spec: RuleSpec {
                    threshold: 0.75,
                    channels: vec![Channel::Email {
                        to: "oncall@example.com".to_owned(),
                    }],
                    ..spec
                },
                changed_by: "0193f6a2-7c1e-7d40-9a51-3f2b8c0d1e01".to_owned(),
                changed_at: at(60),
            },
            Self::RuleDeleted {
                deleted_by: "0193f6a2-7c1e-7d40-9a51-3f2b8c0d1e01".to_owned(),
                deleted_at: at(3_600),
            },
            Self::AlertPending {
                alert_id: alert.clone(),
                value: 0.82,
                at: at(600),
            },
            Self::AlertFiring {
                alert_id: alert.clone(),
                value: 0.91,
                at: at(720),
            },
            Self::AlertAcknowledged {
                alert_id: alert.clone(),
                by: "0193f6a2-7c1e-7d40-9a51-3f2b8c0d1e02".to_owned(),
                at: at(780),
            },
            Self::AlertResolved {
                alert_id: alert,
                value: Some(0.31),
                fired: true,
                at: at(1_200),
            },
        ]
    }
}
