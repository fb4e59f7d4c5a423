//! The `orders` read model: one row per order with its lines, totals, status and the
//! history of its statuses with times, for the customer's views.

use chronicle_commerce::{CancelledBy, Order, OrderEvent};
use chronicle_schemas::{AggregateKind, Envelope};
use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::{Definition, Projection, ProjectionError};
use chronicle_commands::contexts;

/// An order as `GET /api/v1/orders/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct OrderView {
    pub id: String,
    pub customer_id: String,
    pub status: String,
    /// `[{"sku","quantity","unit_price_cents"}]`
    pub lines: serde_json::Value,
    pub coupon_code: Option<String>,
    pub subtotal_cents: i64,
    pub discount_cents: i64,
    pub total_cents: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// `[{"status","at"}]`, oldest first.
    pub history: serde_json::Value,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct OrdersProjection;

const DDL: &str = "CREATE TABLE IF NOT EXISTS orders (
    id             text PRIMARY KEY,
    customer_id    text        NOT NULL,
    status         text        NOT NULL,
    lines          jsonb       NOT NULL,
    coupon_code    text,
    subtotal_cents bigint      NOT NULL,
    discount_cents bigint      NOT NULL,
    total_cents    bigint      NOT NULL,
    reason         text,
    payment_id     text,
    history        jsonb       NOT NULL,
    placed_at      timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    version        bigint      NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id, id DESC)";

const COLUMNS: &str = "id, customer_id, status, lines, coupon_code, subtotal_cents, \
    discount_cents, total_cents, reason, payment_id, history, placed_at, updated_at, version";

/// A history entry's time: RFC 3339 UTC with microseconds, as Postgres keeps it.
fn at(envelope: &Envelope) -> String {
    envelope
        .recorded_at
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Projection for OrdersProjection {
    const DEFINITION: Definition = Definition::new("orders", contexts::COMMERCE, &["orders"], DDL)
        .reading(&[(Order::CONTEXT, Order::TYPE)]);

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        // A handful of events per order: one statement each, guarded by the version so a
        // replayed event changes nothing.
        for envelope in events.iter().filter(|e| e.aggregate_type == Order::TYPE) {
            let sequence = ProjectionError::bigint(envelope.sequence)?;
            let (status, reason, payment_id) = match envelope.decode::<OrderEvent>()? {
                OrderEvent::OrderPlaced {
                    customer_id,
                    lines,
                    coupon,
                    subtotal_cents,
                    discount_cents,
                    total_cents,
                    ..
                } => {
                    let lines = serde_json::to_value(&lines).map_err(|source| {
                        ProjectionError::Decode(chronicle_schemas::DecodeError {
                            event_type: "OrderPlaced lines".into(),
                            source,
                        })
                    })?;
                    sqlx::query(
                        "INSERT INTO orders (id, customer_id, status, lines, coupon_code, subtotal_cents, \
                           discount_cents, total_cents, history, placed_at, updated_at, version) \
                         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, \
                           jsonb_build_array(jsonb_build_object('status', 'pending', 'at', $8::text)), $9, $9, $10) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&envelope.aggregate_id)
                    .bind(customer_id)
                    .bind(lines)
                    .bind(coupon.map(|c| c.code))
                    .bind(subtotal_cents)
                    .bind(discount_cents)
                    .bind(total_cents)
                    .bind(at(envelope))
                    .bind(envelope.recorded_at)
                    .bind(sequence)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("inserting an order"))?;
                    continue;
                }
                // Money moves that leave the status as it is: the version follows.
                OrderEvent::LatePaymentCharged { .. } | OrderEvent::PaymentRefunded { .. } => {
                    sqlx::query(
                        "UPDATE orders SET updated_at = $2, version = $3 WHERE id = $1 AND version < $3",
                    )
                    .bind(&envelope.aggregate_id)
                    .bind(envelope.recorded_at)
                    .bind(sequence)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("updating an order"))?;
                    continue;
                }
                OrderEvent::PaymentRequested { .. } => ("paying", None, None),
                OrderEvent::PaymentFailed { reason } => ("reserved", Some(reason), None),
                OrderEvent::OrderReserved {} => ("reserved", None, None),
                OrderEvent::OrderRejected { reason } => ("rejected", Some(reason), None),
                OrderEvent::OrderPaid { payment_id, .. } => ("paid", None, Some(payment_id)),
                OrderEvent::OrderShipped {} => ("shipped", None, None),
                OrderEvent::OrderCancelled { by, .. } => (
                    "cancelled",
                    Some(
                        match by {
                            CancelledBy::Customer => "cancelled_by_customer",
                            CancelledBy::PaymentTimeout => "payment_timeout",
                        }
                        .to_owned(),
                    ),
                    None,
                ),
            };
            sqlx::query(
                "UPDATE orders SET status = $2, reason = COALESCE($3, reason), \
                   payment_id = COALESCE($4, payment_id), \
                   history = history || jsonb_build_array(jsonb_build_object('status', $2, 'at', $5::text)), \
                   updated_at = $6, version = $7 \
                 WHERE id = $1 AND version < $7",
            )
            .bind(&envelope.aggregate_id)
            .bind(status)
            .bind(reason)
            .bind(payment_id)
            .bind(at(envelope))
            .bind(envelope.recorded_at)
            .bind(sequence)
            .execute(&mut *conn)
            .await
            .map_err(ProjectionError::db("updating an order"))?;
        }
        Ok(())
    }
}

/// The customer of order `id`, if this read model has the order.
///
/// # Errors
/// When the database fails.
pub async fn customer_of(pool: &PgPool, id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT customer_id FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// One order by id.
///
/// # Errors
/// When the database fails.
pub async fn get(pool: &PgPool, id: &str) -> Result<Option<OrderView>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// A page of `customer_id`'s orders, newest first (ids are UUID v7), older than
/// `before_id`, optionally only those in `status`. Fetches `limit` rows.
///
/// # Errors
/// When the database fails.
pub async fn list(
    pool: &PgPool,
    customer_id: &str,
    status: Option<&str>,
    before_id: Option<&str>,
    limit: i64,
) -> Result<Vec<OrderView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM orders \
         WHERE customer_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(customer_id)
    .bind(status)
    .bind(before_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}
