//! An alert rule and the alerts it raises, as one aggregate: the rule decides every
//! transition of its alerts, so each happens once however many alert engines evaluate it
//! (a second engine's `Evaluate` finds the transition made and decides nothing).

use chronicle_schemas::{limits::Invalid, AggregateKind};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::events::{AlertState, RuleEvent, RuleSpec};

use crate::check_spec_limits;

/// What can be asked of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleCommand {
    /// Staff create a rule (the gateway checked its webhook hosts).
    Create {
        rule_id: String,
        spec: RuleSpec,
        by: String,
        now: DateTime<Utc>,
    },
    /// A new spec: an open alert is resolved (its condition is gone), the next evaluation
    /// starts afresh.
    Change {
        spec: RuleSpec,
        by: String,
        now: DateTime<Utc>,
    },
    Delete {
        by: String,
        now: DateTime<Utc>,
    },
    /// An alert engine measured `value` (`None`: no samples in the window) at `at`.
    Evaluate {
        value: Option<f64>,
        at: DateTime<Utc>,
    },
    Acknowledge {
        alert_id: String,
        by: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("no such rule")]
    NotFound,
    #[error("no such alert")]
    NoSuchAlert,
    #[error("the rule already exists")]
    Exists,
    #[error("invalid {0}")]
    Invalid(#[from] Invalid),
    /// Only a firing alert can be acknowledged.
    #[error("the alert is {0}, not firing")]
    NotFiring(&'static str),
}

chronicle_schemas::domain_rules!(RuleError {
    Self::NotFound | Self::NoSuchAlert => NotFound,
    Self::Exists => Conflict("rule_exists"),
    Self::Invalid(invalid) => Invalid(invalid),
    Self::NotFiring(_) => Conflict("alert_not_firing"),
});

/// The rule's open alert (pending, firing or acknowledged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAlert {
    pub id: String,
    pub state: AlertState,
    /// When the condition started to hold.
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    rule_id: String,
    spec: Option<RuleSpec>,
    deleted: bool,
    /// Alerts raised so far: the next one is `<rule id>.<alerts + 1>`.
    alerts: u64,
    open: Option<OpenAlert>,
    /// The time of the last transition: an evaluation older than it (a slower engine's) is
    /// out of date and decides nothing.
    last_transition: Option<DateTime<Utc>>,
}

impl Rule {
    pub fn exists(&self) -> bool {
        self.spec.is_some() && !self.deleted
    }

    pub fn spec(&self) -> Option<&RuleSpec> {
        self.spec.as_ref().filter(|_| !self.deleted)
    }

    /// The spec as it last was, deleted or not: what a notification about the rule's last
    /// alert describes.
    pub fn last_spec(&self) -> Option<&RuleSpec> {
        self.spec.as_ref()
    }

    pub fn open_alert(&self) -> Option<&OpenAlert> {
        self.open.as_ref()
    }

    /// The events `command` leads to, or why it is refused. Pure: no clock, no I/O.
    ///
    /// # Errors
    /// See [`RuleError`].
    pub fn decide(&self, command: RuleCommand) -> Result<Vec<RuleEvent>, RuleError> {
        match command {
            RuleCommand::Create {
                rule_id,
                spec,
                by,
                now,
            } => {
                if self.spec.is_some() {
                    return Err(RuleError::Exists);
                }
                if !crate::valid_id(&rule_id) {
                    return Err(Invalid::new("id", "a rule id").into());
                }
                check_spec_limits(&spec)?;
                Ok(vec![RuleEvent::RuleCreated {
                    rule_id,
                    spec,
                    created_by: by,
                    created_at: now,
                }])
            }
            RuleCommand::Change { spec, by, now } => {
                if !self.exists() {
                    return Err(RuleError::NotFound);
                }
                check_spec_limits(&spec)?;
                let mut events = self.resolve_open(None, now);
                events.push(RuleEvent::RuleChanged {
                    spec,
                    changed_by: by,
                    changed_at: now,
                });
                Ok(events)
            }
            RuleCommand::Delete { by, now } => {
                if !self.exists() {
                    return Err(RuleError::NotFound);
                }
                let mut events = self.resolve_open(None, now);
                events.push(RuleEvent::RuleDeleted {
                    deleted_by: by,
                    deleted_at: now,
                });
                Ok(events)
            }
            RuleCommand::Evaluate { value, at } => self.evaluate(value, at),
            RuleCommand::Acknowledge { alert_id, by, at } => {
                if !self.exists() {
                    return Err(RuleError::NotFound);
                }
                match &self.open {
                    Some(open) if open.id == alert_id => match open.state {
                        AlertState::Firing => {
                            Ok(vec![RuleEvent::AlertAcknowledged { alert_id, by, at }])
                        }
                        // Twice is what was asked: nothing more to record.
                        AlertState::Acknowledged => Ok(Vec::new()),
                        other => Err(RuleError::NotFiring(other.as_str())),
                    },
                    _ if self.was_raised(&alert_id) => {
                        Err(RuleError::NotFiring(AlertState::Resolved.as_str()))
                    }
                    _ => Err(RuleError::NoSuchAlert),
                }
            }
        }
    }

    fn evaluate(&self, value: Option<f64>, at: DateTime<Utc>) -> Result<Vec<RuleEvent>, RuleError> {
        let Some(spec) = self.spec() else {
            return Err(RuleError::NotFound);
        };
        if self.last_transition.is_some_and(|last| at <= last) {
            return Ok(Vec::new());
        }
        let value = value.filter(|v| v.is_finite());
        let holds = value.is_some_and(|v| spec.op.holds(v, spec.threshold));
        let for_duration = Duration::seconds(i64::from(spec.for_seconds));
        Ok(match (&self.open, value) {
            (None, Some(value)) if holds => {
                let alert_id = format!("{}.{}", self.rule_id, self.alerts + 1);
                let mut events = vec![RuleEvent::AlertPending {
                    alert_id: alert_id.clone(),
                    value,
                    at,
                }];
                if spec.for_seconds == 0 {
                    events.push(RuleEvent::AlertFiring {
                        alert_id,
                        value,
                        at,
                    });
                }
                events
            }
            (Some(open), Some(value))
                if holds
                    && open.state == AlertState::Pending
                    && at - open.since >= for_duration =>
            {
                vec![RuleEvent::AlertFiring {
                    alert_id: open.id.clone(),
                    value,
                    at,
                }]
            }
            (Some(_), _) if !holds => self.resolve_open(value, at),
            _ => Vec::new(),
        })
    }

    /// The open alert resolved at `at`, if there is one.
    fn resolve_open(&self, value: Option<f64>, at: DateTime<Utc>) -> Vec<RuleEvent> {
        self.open
            .iter()
            .map(|open| RuleEvent::AlertResolved {
                alert_id: open.id.clone(),
                value,
                fired: open.state != AlertState::Pending,
                at,
            })
            .collect()
    }

    /// Whether `alert_id` names one of this rule's alerts, open or past.
    fn was_raised(&self, alert_id: &str) -> bool {
        alert_id
            .strip_prefix(&self.rule_id)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 1 && n <= self.alerts)
    }

    fn apply_event(&mut self, event: RuleEvent) {
        match event {
            RuleEvent::RuleCreated { rule_id, spec, .. } => {
                self.rule_id = rule_id;
                self.spec = Some(spec);
            }
            RuleEvent::RuleChanged { spec, .. } => self.spec = Some(spec),
            RuleEvent::RuleDeleted { .. } => self.deleted = true,
            RuleEvent::AlertPending { alert_id, at, .. } => {
                self.alerts += 1;
                self.open = Some(OpenAlert {
                    id: alert_id,
                    state: AlertState::Pending,
                    since: at,
                });
                self.last_transition = Some(at);
            }
            RuleEvent::AlertFiring { at, .. } => {
                if let Some(open) = &mut self.open {
                    open.state = AlertState::Firing;
                }
                self.last_transition = Some(at);
            }
            RuleEvent::AlertAcknowledged { .. } => {
                if let Some(open) = &mut self.open {
                    open.state = AlertState::Acknowledged;
                }
            }
            RuleEvent::AlertResolved { at, .. } => {
                self.open = None;
                self.last_transition = Some(at);
            }
        }
    }
}

impl AggregateKind for Rule {
    const CONTEXT: &'static str = crate::NAME;
}

chronicle_schemas::decided_aggregate!(Rule: "rule", RuleCommand => RuleEvent, RuleError);
