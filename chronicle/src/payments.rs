//! The simulated payment provider orders are charged and refunded through.
//!
//! It stands in for a real provider behind [`PaymentProvider`]: it succeeds, declines by a
//! configured rule, or hangs by another rule until the caller's timeout gives up. Its records
//! live in Postgres (`simulated_payments`), as a real provider's live on its side: every
//! process (gateways charging, the saga refunding) sees the same money. Like a real
//! provider's idempotency keys, a second charge for an order returns the first receipt and
//! takes nothing.

use std::{sync::Arc, time::Duration};

use chronicle_commerce::{Holding, OrderServices, PaymentFailure, PaymentProvider, Receipt};
use sqlx::PgPool;

/// When the simulated provider declines or hangs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRules {
    /// Charges above this many cents are declined (`CHRONICLE_PAYMENT_DECLINE_ABOVE_CENTS`).
    pub decline_above_cents: Option<i64>,
    /// Charges above this many cents never answer (`CHRONICLE_PAYMENT_HANG_ABOVE_CENTS`).
    pub hang_above_cents: Option<i64>,
    /// How long a charge may take before it counts as timed out.
    pub timeout: Duration,
}

impl Default for PaymentRules {
    fn default() -> Self {
        Self {
            decline_above_cents: None,
            hang_above_cents: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// The simulated provider.
#[derive(Debug)]
pub struct SimulatedPayments {
    rules: PaymentRules,
    pool: PgPool,
}

impl SimulatedPayments {
    pub fn new(pool: PgPool, rules: PaymentRules) -> Self {
        Self { rules, pool }
    }

    /// The order services of the processes using this provider.
    pub fn services(pool: PgPool, rules: PaymentRules) -> OrderServices {
        OrderServices {
            payments: Arc::new(Self::new(pool, rules)),
        }
    }

    async fn answer(&self, order_id: &str, amount_cents: i64) -> Result<Receipt, PaymentFailure> {
        if self
            .rules
            .hang_above_cents
            .is_some_and(|limit| amount_cents > limit)
        {
            std::future::pending::<()>().await;
        }
        if self
            .rules
            .decline_above_cents
            .is_some_and(|limit| amount_cents > limit)
        {
            return Err(PaymentFailure::Declined(
                "the amount is above the card's limit".to_owned(),
            ));
        }
        sqlx::query(
            "INSERT INTO simulated_payments (order_id, payment_id, charged_cents) \
             VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(format!("sim_{}", uuid::Uuid::now_v7().simple()))
        .bind(amount_cents)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        let payment_id: String =
            sqlx::query_scalar("SELECT payment_id FROM simulated_payments WHERE order_id = $1")
                .bind(order_id)
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(Receipt { payment_id })
    }
}

/// The provider's records cannot be reached: to the caller, the provider did not answer.
fn unavailable(error: sqlx::Error) -> PaymentFailure {
    tracing::warn!(error = %error, "the simulated payment provider's records cannot be reached");
    PaymentFailure::TimedOut
}

#[async_trait::async_trait]
impl PaymentProvider for SimulatedPayments {
    async fn charge(&self, order_id: &str, amount_cents: i64) -> Result<Receipt, PaymentFailure> {
        tokio::time::timeout(self.rules.timeout, self.answer(order_id, amount_cents))
            .await
            .unwrap_or(Err(PaymentFailure::TimedOut))
    }

    async fn refund(&self, order_id: &str) -> Result<Holding, PaymentFailure> {
        sqlx::query(
            "UPDATE simulated_payments SET refunded_cents = charged_cents, \
             refund_id = coalesce(refund_id, $2) WHERE order_id = $1",
        )
        .bind(order_id)
        .bind(format!("sim_refund_{}", uuid::Uuid::now_v7().simple()))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        self.holding(order_id).await
    }

    async fn holding(&self, order_id: &str) -> Result<Holding, PaymentFailure> {
        let row: Option<(String, i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT payment_id, charged_cents, refunded_cents, refund_id \
             FROM simulated_payments WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.map_or_else(
            Holding::default,
            |(payment_id, charged, refunded, refund_id)| Holding {
                payment_id: Some(payment_id),
                charged_cents: charged,
                refunded_cents: refunded,
                refund_id,
            },
        ))
    }
}
