//! The `carts` read model: each customer's cart lines (SKU and quantity) and the version
//! they reflect, and which carts hold lines nobody has counted abandoned yet (`waiting`,
//! what the cart sweeper looks through). A cart is read with its items' current name, price, availability and
//! whether they are discontinued, from the `inventory` read model beside it in the commerce
//! schema: a price change shows in every cart at once.

use chronicle_commerce::{Cart, CartEvent};
use chronicle_schemas::AggregateKind;
use chronicle_schemas::Envelope;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::{Definition, Projection, ProjectionError};
use chronicle_commands::contexts;

/// The carts projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct CartsProjection;

/// The tables, and `waiting` on a table from before it (filled from the lines). Every
/// projector and gateway start runs this, so the `ALTER TABLE` runs only when it is missing.
const DDL: &str = "CREATE TABLE IF NOT EXISTS carts (
    cart_id    text PRIMARY KEY,
    version    bigint      NOT NULL,
    updated_at timestamptz NOT NULL,
    waiting    boolean     NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS cart_lines (
    cart_id  text   NOT NULL,
    sku      text   NOT NULL,
    quantity bigint NOT NULL,
    PRIMARY KEY (cart_id, sku)
);
DO $ddl$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'carts' AND column_name = 'waiting') THEN
        ALTER TABLE carts ADD COLUMN waiting boolean NOT NULL DEFAULT false;
        UPDATE carts c SET waiting = EXISTS (SELECT 1 FROM cart_lines l WHERE l.cart_id = c.cart_id);
    END IF;
END $ddl$;
CREATE INDEX IF NOT EXISTS carts_waiting ON carts (updated_at, cart_id) WHERE waiting";

impl Projection for CartsProjection {
    const DEFINITION: Definition =
        Definition::new("carts", contexts::COMMERCE, &["carts", "cart_lines"], DDL)
            .reading(&[(Cart::CONTEXT, Cart::TYPE)]);

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        for envelope in events.iter().filter(|e| e.aggregate_type == Cart::TYPE) {
            let event: CartEvent = envelope.decode()?;
            let cart = envelope.aggregate_id.as_str();
            // The cart's version moves first, and only forwards: an event it already
            // reflects changes nothing.
            let moved = sqlx::query(
                "INSERT INTO carts (cart_id, version, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (cart_id) DO UPDATE SET version = EXCLUDED.version, \
                   updated_at = EXCLUDED.updated_at WHERE carts.version < EXCLUDED.version",
            )
            .bind(cart)
            .bind(ProjectionError::bigint(envelope.sequence)?)
            .bind(envelope.recorded_at)
            .execute(&mut *conn)
            .await
            .map_err(ProjectionError::db("moving a cart's version"))?;
            if moved.rows_affected() == 0 {
                continue;
            }
            let abandoned = matches!(event, CartEvent::CartAbandoned { .. });
            let line = match event {
                CartEvent::LineSet { sku, quantity } => Some(
                    sqlx::query(
                        "INSERT INTO cart_lines (cart_id, sku, quantity) VALUES ($1, $2, $3) \
                         ON CONFLICT (cart_id, sku) DO UPDATE SET quantity = EXCLUDED.quantity",
                    )
                    .bind(cart)
                    .bind(sku)
                    .bind(ProjectionError::bigint(quantity)?),
                ),
                CartEvent::LineRemoved { sku } => Some(
                    sqlx::query("DELETE FROM cart_lines WHERE cart_id = $1 AND sku = $2")
                        .bind(cart)
                        .bind(sku),
                ),
                CartEvent::CartEmptied {} | CartEvent::CheckedOut { .. } => {
                    Some(sqlx::query("DELETE FROM cart_lines WHERE cart_id = $1").bind(cart))
                }
                CartEvent::CartAbandoned { .. } => None,
            };
            if let Some(line) = line {
                line.execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("changing a cart's lines"))?;
            }
            // A touched cart with lines waits to be checked out (or abandoned); an abandoned
            // one waits no more until it is touched again.
            sqlx::query(
                "UPDATE carts SET waiting = NOT $2 \
                   AND EXISTS (SELECT 1 FROM cart_lines WHERE cart_id = $1) \
                 WHERE cart_id = $1",
            )
            .bind(cart)
            .bind(abandoned)
            .execute(&mut *conn)
            .await
            .map_err(ProjectionError::db("marking whether a cart waits"))?;
        }
        Ok(())
    }
}

/// One line of a cart as `GET /api/v1/cart` shows it, priced now. The item's fields are
/// `None` while the catalog has not caught up with an item added a moment ago.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct CartLineView {
    pub sku: String,
    pub name: Option<String>,
    pub quantity: i64,
    pub unit_price_cents: Option<i64>,
    pub line_total_cents: Option<i64>,
    pub available: Option<i64>,
    pub discontinued: Option<bool>,
}

/// A cart, priced now (the default: one never used, empty at version 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CartView {
    pub lines: Vec<CartLineView>,
    /// The sum of the priced lines.
    pub total_cents: i64,
    /// The cart's version (0: never used).
    pub version: i64,
}

/// The cart of `cart_id` (a customer's user id), priced at the items' current prices; an
/// empty cart at version 0 when it was never used.
///
/// # Errors
/// When the database fails.
pub async fn get(pool: &PgPool, cart_id: &str) -> Result<CartView, sqlx::Error> {
    let version: Option<i64> = sqlx::query_scalar("SELECT version FROM carts WHERE cart_id = $1")
        .bind(cart_id)
        .fetch_optional(pool)
        .await?;
    let lines: Vec<CartLineView> = sqlx::query_as(
        "SELECT l.sku, i.name, l.quantity, i.price_cents AS unit_price_cents, \
                i.price_cents * l.quantity AS line_total_cents, i.available, i.discontinued \
         FROM cart_lines l LEFT JOIN inventory_items i ON i.sku = l.sku \
         WHERE l.cart_id = $1 ORDER BY l.sku",
    )
    .bind(cart_id)
    .fetch_all(pool)
    .await?;
    // At most 100 lines of at most 10^18 each: saturating, never a panic.
    let total_cents = lines
        .iter()
        .filter_map(|l| l.line_total_cents)
        .fold(0i64, i64::saturating_add);
    Ok(CartView {
        lines,
        total_cents,
        version: version.unwrap_or(0),
    })
}

/// A cart waiting with lines: its id and the version it was last touched at.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IdleCart {
    pub cart_id: String,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// Up to `limit` carts with lines, last touched before `before` and not counted abandoned
/// since, after the cart `after` (its `updated_at` and id) in the order of when they were
/// last touched: a sweep pages through them all with the last one it got.
///
/// # Errors
/// When the database fails.
pub async fn idle(
    pool: &PgPool,
    before: DateTime<Utc>,
    after: Option<(DateTime<Utc>, &str)>,
    limit: i64,
) -> Result<Vec<IdleCart>, sqlx::Error> {
    let (after_at, after_id) = after.map_or((None, ""), |(at, id)| (Some(at), id));
    sqlx::query_as(
        "SELECT cart_id, version, updated_at FROM carts \
         WHERE waiting AND updated_at < $1 \
           AND ($2::timestamptz IS NULL OR (updated_at, cart_id) > ($2, $3)) \
         ORDER BY updated_at, cart_id LIMIT $4",
    )
    .bind(before)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}
