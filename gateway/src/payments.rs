//! The simulated payment provider the gateway charges orders through.
//!
//! It stands in for a real provider behind [`PaymentProvider`]: it succeeds, declines by a
//! configured rule, or hangs by another rule until the caller's timeout gives up. Like a real
//! provider's idempotency keys, a second charge for the same order returns the first receipt.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chronicle_commerce::{OrderServices, PaymentFailure, PaymentProvider, Receipt};

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
    /// Receipts by order id: what makes a repeated charge return the first one.
    charged: Mutex<HashMap<String, Receipt>>,
}

impl SimulatedPayments {
    pub fn new(rules: PaymentRules) -> Self {
        Self {
            rules,
            charged: Mutex::new(HashMap::new()),
        }
    }

    /// The order services of a gateway using this provider.
    pub fn services(rules: PaymentRules) -> OrderServices {
        OrderServices {
            payments: Arc::new(Self::new(rules)),
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
        let mut charged = self
            .charged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(charged
            .entry(order_id.to_owned())
            .or_insert_with(|| Receipt {
                payment_id: format!("sim_{}", uuid::Uuid::now_v7().simple()),
            })
            .clone())
    }
}

#[async_trait::async_trait]
impl PaymentProvider for SimulatedPayments {
    async fn charge(&self, order_id: &str, amount_cents: i64) -> Result<Receipt, PaymentFailure> {
        tokio::time::timeout(self.rules.timeout, self.answer(order_id, amount_cents))
            .await
            .unwrap_or(Err(PaymentFailure::TimedOut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(rules: PaymentRules) -> SimulatedPayments {
        SimulatedPayments::new(rules)
    }

    #[tokio::test]
    async fn a_charge_succeeds_and_repeating_it_returns_the_first_receipt() {
        let p = provider(PaymentRules::default());
        let first = p.charge("o-1", 100).await.expect("charged");
        assert_eq!(p.charge("o-1", 100).await, Ok(first.clone()));
        assert_ne!(p.charge("o-2", 100).await.expect("charged"), first);
    }

    #[tokio::test]
    async fn charges_above_the_decline_rule_are_declined() {
        let p = provider(PaymentRules {
            decline_above_cents: Some(1_000),
            ..Default::default()
        });
        assert!(p.charge("o-1", 1_000).await.is_ok());
        assert!(matches!(
            p.charge("o-2", 1_001).await,
            Err(PaymentFailure::Declined(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_charge_times_out() {
        let p = provider(PaymentRules {
            hang_above_cents: Some(0),
            timeout: Duration::from_secs(3),
            ..Default::default()
        });
        assert_eq!(p.charge("o-1", 1).await, Err(PaymentFailure::TimedOut));
    }
}
