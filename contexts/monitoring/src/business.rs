//! The `business_metrics` read model: business series derived from the event log, per
//! minute (the API contract, Monitoring: orders placed, revenue, messages sent, bytes uploaded, job
//! runs failed, carts checked out and abandoned). A read model like any other, so replay rebuilds it byte for byte; queries
//! and alert rules read it as the metrics `business_*`.
//!
//! Each event counts in the minute it was recorded in. A batch's counts are summed in
//! memory and written with one statement.

use std::collections::BTreeMap;

use chronicle_schemas::{commerce::OrderEvent, files::FileEvent, Envelope};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgConnection;

use chronicle_projections::{Definition, Projection, ProjectionError};

/// The series this projection writes, by metric name.
pub const BUSINESS_SERIES: &[&str] = &[
    "business_orders_placed",
    "business_revenue_cents",
    "business_messages_sent",
    "business_bytes_uploaded",
    "business_job_runs_failed",
    "business_carts_checked_out",
    "business_carts_abandoned",
];

#[derive(Debug, Clone, Copy, Default)]
pub struct BusinessMetricsProjection;

const DDL: &str = "CREATE TABLE IF NOT EXISTS business_series (
    metric text        NOT NULL,
    minute timestamptz NOT NULL,
    value  numeric     NOT NULL,
    PRIMARY KEY (metric, minute)
)";

impl Projection for BusinessMetricsProjection {
    const DEFINITION: Definition =
        Definition::new("business_metrics", crate::NAME, &["business_series"], DDL).reading(&[
            ("commerce", "order"),
            ("commerce", "cart"),
            ("chat", "room"),
            ("files", "file"),
            ("scheduler", "job"),
        ]);

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        // (metric, minute) → amount, summed as i128: no batch of i64 amounts can overflow it.
        let mut counts: BTreeMap<(&'static str, DateTime<Utc>), i128> = BTreeMap::new();
        for envelope in events {
            let Some((metric, amount)) = measure(envelope)? else {
                continue;
            };
            let minute = envelope
                .recorded_at
                .duration_trunc(TimeDelta::minutes(1))
                .unwrap_or(envelope.recorded_at);
            *counts.entry((metric, minute)).or_default() += amount;
        }
        if counts.is_empty() {
            return Ok(());
        }
        let metrics: Vec<&str> = counts.keys().map(|k| k.0).collect();
        let minutes: Vec<DateTime<Utc>> = counts.keys().map(|k| k.1).collect();
        // numeric: sums of cents over years stay exact.
        let amounts: Vec<String> = counts.values().map(i128::to_string).collect();
        sqlx::query(
            "INSERT INTO business_series AS b (metric, minute, value) \
             SELECT m, t, v::numeric FROM UNNEST($1::text[], $2::timestamptz[], $3::text[]) AS u(m, t, v) \
             ON CONFLICT (metric, minute) DO UPDATE SET value = b.value + excluded.value",
        )
        .bind(&metrics)
        .bind(&minutes)
        .bind(&amounts)
        .execute(&mut *conn)
        .await
        .map_err(ProjectionError::db("adding to business series"))?;
        Ok(())
    }
}

/// What `envelope` adds to which series, if anything. Only the event types that count are
/// decoded.
fn measure(envelope: &Envelope) -> Result<Option<(&'static str, i128)>, ProjectionError> {
    Ok(
        match (
            envelope.aggregate_type.as_str(),
            envelope.event_type.as_str(),
        ) {
            ("order", "OrderPlaced") => Some(("business_orders_placed", 1)),
            ("order", "OrderPaid") => match envelope.decode::<OrderEvent>()? {
                OrderEvent::OrderPaid { amount_cents, .. } => {
                    Some(("business_revenue_cents", i128::from(amount_cents)))
                }
                _ => None,
            },
            ("cart", "CheckedOut") => Some(("business_carts_checked_out", 1)),
            ("cart", "CartAbandoned") => Some(("business_carts_abandoned", 1)),
            ("room", "MessageSent") => Some(("business_messages_sent", 1)),
            ("file", "FileStored") => match envelope.decode::<FileEvent>()? {
                FileEvent::FileStored { size, .. } => {
                    Some(("business_bytes_uploaded", i128::from(size)))
                }
                _ => None,
            },
            // A failure that will be retried is still a failed run.
            ("job", "RunFailed") => Some(("business_job_runs_failed", 1)),
            _ => None,
        },
    )
}
