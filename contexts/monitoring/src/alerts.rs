//! The `alerts` read model: alert rules as staff see them, and every alert with its state
//! (monitoring). Built from the rule aggregate's events.

use crate::{Rule, RuleEvent};
use chronicle_schemas::AggregateKind;
use chronicle_schemas::Envelope;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use chronicle_projections::{Definition, Projection, ProjectionError};

#[derive(Debug, Clone, Copy, Default)]
pub struct AlertsProjection;

const DDL: &str = "CREATE TABLE IF NOT EXISTS monitoring_rules (
    rule_id    text PRIMARY KEY,
    name       text        NOT NULL,
    spec       jsonb       NOT NULL,
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    deleted    boolean     NOT NULL DEFAULT false,
    version    bigint      NOT NULL
);
CREATE TABLE IF NOT EXISTS monitoring_alerts (
    alert_id        text PRIMARY KEY,
    rule_id         text             NOT NULL,
    state           text             NOT NULL,
    value           double precision,
    started_at      timestamptz      NOT NULL,
    fired_at        timestamptz,
    acknowledged_by text,
    acknowledged_at timestamptz,
    resolved_at     timestamptz
);
CREATE INDEX IF NOT EXISTS monitoring_alerts_state ON monitoring_alerts (state, started_at DESC);
CREATE INDEX IF NOT EXISTS monitoring_alerts_rule ON monitoring_alerts (rule_id, started_at DESC)";

impl Projection for AlertsProjection {
    const DEFINITION: Definition = Definition::new(
        "alerts",
        crate::NAME,
        &["monitoring_rules", "monitoring_alerts"],
        DDL,
    )
    .reading(&[(Rule::CONTEXT, Rule::TYPE)]);

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        // Rules change rarely and alerts a few times an hour: one statement per event.
        for envelope in events.iter().filter(|e| e.aggregate_type == Rule::TYPE) {
            apply_one(conn, envelope).await?;
        }
        Ok(())
    }
}

async fn apply_one(conn: &mut PgConnection, envelope: &Envelope) -> Result<(), ProjectionError> {
    let rule_id = &envelope.aggregate_id;
    let version = ProjectionError::bigint(envelope.sequence)?;
    let db = ProjectionError::db;
    let event = envelope.decode::<RuleEvent>()?;
    let is_alert_event = matches!(
        event,
        RuleEvent::AlertPending { .. }
            | RuleEvent::AlertFiring { .. }
            | RuleEvent::AlertAcknowledged { .. }
            | RuleEvent::AlertResolved { .. }
    );
    match event {
        RuleEvent::RuleCreated {
            spec,
            created_by,
            created_at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO monitoring_rules (rule_id, name, spec, created_by, created_at, updated_at, version) \
                 VALUES ($1, $2, $3, $4, $5, $5, $6) ON CONFLICT (rule_id) DO NOTHING",
            )
            .bind(rule_id)
            .bind(&spec.name)
            .bind(sqlx::types::Json(&spec))
            .bind(created_by)
            .bind(created_at)
            .bind(version)
            .execute(&mut *conn)
            .await
            .map_err(db("inserting a rule"))?;
        }
        RuleEvent::RuleChanged {
            spec, changed_at, ..
        } => {
            sqlx::query(
                "UPDATE monitoring_rules SET name = $2, spec = $3, updated_at = $4, version = $5 \
                 WHERE rule_id = $1",
            )
            .bind(rule_id)
            .bind(&spec.name)
            .bind(sqlx::types::Json(&spec))
            .bind(changed_at)
            .bind(version)
            .execute(&mut *conn)
            .await
            .map_err(db("changing a rule"))?;
        }
        RuleEvent::RuleDeleted { deleted_at, .. } => {
            sqlx::query(
                "UPDATE monitoring_rules SET deleted = true, updated_at = $2, version = $3 \
                 WHERE rule_id = $1",
            )
            .bind(rule_id)
            .bind(deleted_at)
            .bind(version)
            .execute(&mut *conn)
            .await
            .map_err(db("deleting a rule"))?;
        }
        RuleEvent::AlertPending {
            alert_id,
            value,
            at,
        } => {
            sqlx::query(
                "INSERT INTO monitoring_alerts (alert_id, rule_id, state, value, started_at) \
                 VALUES ($1, $2, 'pending', $3, $4) ON CONFLICT (alert_id) DO NOTHING",
            )
            .bind(alert_id)
            .bind(rule_id)
            .bind(value)
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(db("raising an alert"))?;
        }
        RuleEvent::AlertFiring {
            alert_id,
            value,
            at,
        } => {
            sqlx::query(
                "UPDATE monitoring_alerts SET state = 'firing', value = $2, fired_at = $3 \
                 WHERE alert_id = $1",
            )
            .bind(alert_id)
            .bind(value)
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(db("firing an alert"))?;
        }
        RuleEvent::AlertAcknowledged { alert_id, by, at } => {
            sqlx::query(
                "UPDATE monitoring_alerts SET state = 'acknowledged', acknowledged_by = $2, \
                 acknowledged_at = $3 WHERE alert_id = $1",
            )
            .bind(alert_id)
            .bind(by)
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(db("acknowledging an alert"))?;
        }
        RuleEvent::AlertResolved {
            alert_id,
            value,
            at,
            ..
        } => {
            sqlx::query(
                "UPDATE monitoring_alerts SET state = 'resolved', value = coalesce($2, value), \
                 resolved_at = $3 WHERE alert_id = $1",
            )
            .bind(alert_id)
            .bind(value)
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(db("resolving an alert"))?;
        }
    }
    if is_alert_event {
        // A rule's version is its aggregate's: alert events move it too, so an
        // acknowledgement's answered version is one a `min_version` read can wait for, and an
        // `If-Match` taken from the rules list matches the rule.
        sqlx::query("UPDATE monitoring_rules SET version = $2 WHERE rule_id = $1")
            .bind(rule_id)
            .bind(version)
            .execute(&mut *conn)
            .await
            .map_err(db("moving a rule's version"))?;
    }
    Ok(())
}

/// A rule as `GET /api/v1/monitoring/rules` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RuleView {
    #[serde(rename = "id")]
    pub rule_id: String,
    #[sqlx(json)]
    #[serde(flatten)]
    pub spec: crate::RuleSpec,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// Every rule not deleted, oldest first.
///
/// # Errors
/// When the database fails.
pub async fn rules(pool: &PgPool) -> Result<Vec<RuleView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT rule_id, spec, created_by, created_at, updated_at, version \
         FROM monitoring_rules WHERE NOT deleted ORDER BY created_at, rule_id",
    )
    .fetch_all(pool)
    .await
}

/// One rule, if it exists and is not deleted.
///
/// # Errors
/// When the database fails.
pub async fn rule(pool: &PgPool, rule_id: &str) -> Result<Option<RuleView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT rule_id, spec, created_by, created_at, updated_at, version \
         FROM monitoring_rules WHERE rule_id = $1 AND NOT deleted",
    )
    .bind(rule_id)
    .fetch_optional(pool)
    .await
}

/// An alert as `GET /api/v1/monitoring/alerts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AlertView {
    #[serde(rename = "id")]
    pub alert_id: String,
    pub rule_id: String,
    pub state: String,
    pub value: Option<f64>,
    pub started_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// The rule's name, metric and severity as they are now (absent once it is deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

/// Alerts, newest first, in `state` when given; at most `limit`.
///
/// # Errors
/// When the database fails.
pub async fn alerts(
    pool: &PgPool,
    state: Option<&str>,
    rule_id: Option<&str>,
    limit: i64,
) -> Result<Vec<AlertView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.alert_id, a.rule_id, a.state, a.value, a.started_at, a.fired_at, \
                a.acknowledged_by, a.resolved_at, r.name AS rule_name, \
                r.spec->>'metric' AS metric, r.spec->>'severity' AS severity \
         FROM monitoring_alerts a \
         LEFT JOIN monitoring_rules r ON r.rule_id = a.rule_id AND NOT r.deleted \
         WHERE ($1::text IS NULL OR a.state = $1) AND ($2::text IS NULL OR a.rule_id = $2) \
         ORDER BY a.started_at DESC, a.alert_id DESC LIMIT $3",
    )
    .bind(state)
    .bind(rule_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The version of rule `rule_id` this read model has reached (deleted or not), if it has
/// the rule at all.
///
/// # Errors
/// Database failures.
pub async fn rule_version(pool: &PgPool, rule_id: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM monitoring_rules WHERE rule_id = $1")
        .bind(rule_id)
        .fetch_optional(pool)
        .await
}
