//! The payment provider an order charges, as a trait: the domain decides when to charge and
//! what an outcome means; an adapter (simulated here, a real provider elsewhere) does the
//! charging.

use std::sync::Arc;

/// A successful charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub payment_id: String,
}

/// Why a charge did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentFailure {
    #[error("the payment was declined: {0}")]
    Declined(String),
    #[error("the payment provider did not answer in time")]
    TimedOut,
}

/// Charges money for an order.
///
/// Implementations must be idempotent per `order_id`: a command may be decided more than
/// once (a retry after a lost race), and charging the same order twice must return the first
/// receipt instead of taking the money again.
#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync + std::fmt::Debug {
    async fn charge(&self, order_id: &str, amount_cents: i64) -> Result<Receipt, PaymentFailure>;
}

/// What the [`Order`](crate::Order) aggregate needs from outside.
#[derive(Debug, Clone)]
pub struct OrderServices {
    pub payments: Arc<dyn PaymentProvider>,
}

impl OrderServices {
    /// For processes that never take payments (the order saga): any charge is declined.
    pub fn without_payments() -> Self {
        Self {
            payments: Arc::new(NoPayments),
        }
    }
}

#[derive(Debug)]
struct NoPayments;

#[async_trait::async_trait]
impl PaymentProvider for NoPayments {
    async fn charge(&self, _order_id: &str, _amount: i64) -> Result<Receipt, PaymentFailure> {
        Err(PaymentFailure::Declined(
            "this process takes no payments".to_owned(),
        ))
    }
}
