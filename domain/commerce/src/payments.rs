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

/// What a provider holds for one order: the charge (if any) and how much of it went back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    pub payment_id: Option<String>,
    pub charged_cents: i64,
    pub refunded_cents: i64,
    /// The id of the (last) refund, when anything was refunded.
    pub refund_id: Option<String>,
}

/// Charges and refunds money for orders. The provider's own records are the truth about
/// money: the order's events follow them (the order saga reconciles the two).
///
/// Implementations must be idempotent per `order_id` (the provider's idempotency key): a
/// second charge for an order returns the first receipt and takes nothing, even after a
/// refund; a refund gives back what is still held and nothing more.
#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync + std::fmt::Debug {
    async fn charge(&self, order_id: &str, amount_cents: i64) -> Result<Receipt, PaymentFailure>;
    /// Gives back everything still held for `order_id`.
    async fn refund(&self, order_id: &str) -> Result<Holding, PaymentFailure>;
    /// What is held for `order_id`.
    async fn holding(&self, order_id: &str) -> Result<Holding, PaymentFailure>;
}

/// What the [`Order`](crate::Order) aggregate needs from outside.
#[derive(Debug, Clone)]
pub struct OrderServices {
    pub payments: Arc<dyn PaymentProvider>,
}

impl OrderServices {
    /// For processes that never take payments: any charge is declined, nothing is held.
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
    async fn refund(&self, _order_id: &str) -> Result<Holding, PaymentFailure> {
        Ok(Holding::default())
    }
    async fn holding(&self, _order_id: &str) -> Result<Holding, PaymentFailure> {
        Ok(Holding::default())
    }
}
