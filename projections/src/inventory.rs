//! The `inventory_items` read model: one row per SKU with on hand, reserved and available
//! stock, and the version (aggregate sequence) it reflects.

use std::collections::HashMap;

use chronicle_commerce::{InventoryEvent, InventoryItem};
use chronicle_schemas::Envelope;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::{Projection, ProjectionError};

const AGGREGATE_TYPE: &str = InventoryItem::TYPE;

/// One row of the read model, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct InventoryView {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub version: i64,
    #[serde(skip)]
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub updated_at: DateTime<Utc>,
}

/// The inventory projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct InventoryProjection;

const DDL: &str = "CREATE TABLE IF NOT EXISTS inventory_items (
    sku         text PRIMARY KEY,
    name        text        NOT NULL,
    price_cents bigint      NOT NULL,
    on_hand     bigint      NOT NULL,
    reserved    bigint      NOT NULL,
    available   bigint GENERATED ALWAYS AS (on_hand - reserved) STORED,
    version     bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS inventory_items_available ON inventory_items (available, sku)";

#[derive(Debug, Clone)]
struct Row {
    name: String,
    price_cents: i64,
    on_hand: i64,
    reserved: i64,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Projection for InventoryProjection {
    fn name(&self) -> &'static str {
        "inventory"
    }

    fn context(&self) -> &'static str {
        chronicle_commands::contexts::COMMERCE
    }

    fn subjects(&self) -> Vec<String> {
        vec![format!(
            "events.{}.{AGGREGATE_TYPE}.>",
            <InventoryItem as chronicle_schemas::AggregateKind>::CONTEXT
        )]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["inventory_items"]
    }

    fn ddl(&self) -> &'static str {
        DDL
    }

    /// Folds the batch in memory per SKU, starting from the stored rows, then writes each
    /// touched row once: a catch-up batch of thousands of events costs two statements.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        let mut skus: Vec<&str> = events
            .iter()
            .filter(|e| e.aggregate_type == AGGREGATE_TYPE)
            .map(|e| e.aggregate_id.as_str())
            .collect();
        skus.sort_unstable();
        skus.dedup();
        if skus.is_empty() {
            return Ok(());
        }
        let stored: Vec<InventoryView> = sqlx::query_as(
                "SELECT sku, name, price_cents, on_hand, reserved, available, version, created_at, updated_at \
                 FROM inventory_items WHERE sku = ANY($1)",
            )
            .bind(&skus)
            .fetch_all(&mut *conn)
            .await
            .map_err(ProjectionError::db("reading inventory rows"))?;
        let mut rows: HashMap<String, Row> = stored
            .into_iter()
            .map(|v| {
                (
                    v.sku,
                    Row {
                        name: v.name,
                        price_cents: v.price_cents,
                        on_hand: v.on_hand,
                        reserved: v.reserved,
                        version: v.version,
                        created_at: v.created_at,
                        updated_at: v.updated_at,
                    },
                )
            })
            .collect();
        for envelope in events.iter().filter(|e| e.aggregate_type == AGGREGATE_TYPE) {
            let event: InventoryEvent = envelope.decode()?;
            let sequence = ProjectionError::bigint(envelope.sequence)?;
            if let InventoryEvent::ItemCreated {
                name,
                price_cents,
                initial_stock,
                ..
            } = &event
            {
                let on_hand = ProjectionError::bigint(*initial_stock)?;
                rows.entry(envelope.aggregate_id.clone())
                    .or_insert_with(|| Row {
                        name: name.clone(),
                        price_cents: *price_cents,
                        on_hand,
                        reserved: 0,
                        version: sequence,
                        created_at: envelope.recorded_at,
                        updated_at: envelope.recorded_at,
                    });
                continue;
            }
            let Some(row) = rows.get_mut(&envelope.aggregate_id) else {
                tracing::error!(
                    sku = envelope.aggregate_id,
                    sequence,
                    "event for an item the read model never saw created"
                );
                continue;
            };
            if sequence <= row.version {
                continue;
            }
            match event {
                InventoryEvent::ItemCreated { .. } => {}
                InventoryEvent::StockReceived { quantity } => {
                    row.on_hand = ProjectionError::counter(row.on_hand, quantity, false)?
                }
                InventoryEvent::StockReserved { quantity, .. } => {
                    row.reserved = ProjectionError::counter(row.reserved, quantity, false)?
                }
                InventoryEvent::ReservationReleased { quantity, .. } => {
                    row.reserved = ProjectionError::counter(row.reserved, quantity, true)?
                }
                InventoryEvent::ReservationCommitted { quantity, .. } => {
                    row.reserved = ProjectionError::counter(row.reserved, quantity, true)?;
                    row.on_hand = ProjectionError::counter(row.on_hand, quantity, true)?;
                }
            }
            row.version = sequence;
            row.updated_at = envelope.recorded_at;
        }
        let mut cols = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for (sku, row) in rows {
            cols.0.push(sku);
            cols.1.push(row.name);
            cols.2.push(row.price_cents);
            cols.3.push(row.on_hand);
            cols.4.push(row.reserved);
            cols.5.push(row.version);
            cols.6.push(row.created_at);
            cols.7.push(row.updated_at);
        }
        sqlx::query(
                "INSERT INTO inventory_items (sku, name, price_cents, on_hand, reserved, version, created_at, updated_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::timestamptz[], $8::timestamptz[]) \
                 ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price_cents = EXCLUDED.price_cents, \
                   on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved, version = EXCLUDED.version, \
                   created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at",
            )
            .bind(&cols.0)
            .bind(&cols.1)
            .bind(&cols.2)
            .bind(&cols.3)
            .bind(&cols.4)
            .bind(&cols.5)
            .bind(&cols.6)
            .bind(&cols.7)
            .execute(&mut *conn)
            .await
            .map_err(ProjectionError::db("writing inventory rows"))?;
        Ok(())
    }
}

/// One item by SKU.
///
/// # Errors
/// When the database fails.
pub async fn get(pool: &PgPool, sku: &str) -> Result<Option<InventoryView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sku, name, price_cents, on_hand, reserved, available, version, created_at, updated_at \
         FROM inventory_items WHERE sku = $1",
    )
    .bind(sku)
    .fetch_optional(pool)
    .await
}

/// A page of items in SKU order, after `after_sku`, optionally only those with fewer than
/// `low_stock_below` available. Fetches `limit` rows.
///
/// # Errors
/// When the database fails.
pub async fn list(
    pool: &PgPool,
    low_stock_below: Option<i64>,
    after_sku: Option<&str>,
    limit: i64,
) -> Result<Vec<InventoryView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sku, name, price_cents, on_hand, reserved, available, version, created_at, updated_at \
         FROM inventory_items \
         WHERE ($1::bigint IS NULL OR available < $1) AND ($2::text IS NULL OR sku > $2) \
         ORDER BY sku LIMIT $3",
    )
    .bind(low_stock_below)
    .bind(after_sku)
    .bind(limit)
    .fetch_all(pool)
    .await
}
