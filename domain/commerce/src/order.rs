use chronicle_schemas::limits;
use chronicle_schemas::limits::{DomainRule, Refusal};
use chronicle_schemas::{
    commerce::{AppliedCoupon, CancelledBy, OrderEvent, OrderLine},
    AggregateKind,
};
use cqrs_es::{event_sink::EventSink, Aggregate};
use serde::{Deserialize, Serialize};

use crate::payments::{OrderServices, PaymentFailure};

/// Where an order is in its life. `Shipped`, `Rejected` and `Cancelled` are final.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Not placed yet (the aggregate has no events).
    #[default]
    New,
    Pending,
    Reserved,
    Paid,
    Shipped,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    /// The status as API.md spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Pending => "pending",
            Self::Reserved => "reserved",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Shipped | Self::Rejected | Self::Cancelled)
    }
}

/// Who asks for a cancellation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Canceller {
    /// The customer, by user id (checked against the order's customer).
    Customer(String),
    /// The saga: the order was not paid by its deadline.
    PaymentTimeout,
}

/// What can be asked of an order. Commands a user sends carry `by`, the caller's user id;
/// only the order's customer may act on it. The saga's commands are idempotent: repeating one
/// that already took effect changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderCommand {
    /// Place the order with lines already priced (the item's price at placement) and, if
    /// any, the coupon to apply.
    Place {
        order_id: String,
        customer_id: String,
        lines: Vec<OrderLine>,
        coupon: Option<AppliedCoupon>,
    },
    /// (saga) every line's stock is reserved.
    ConfirmReserved,
    /// (saga) the order cannot be fulfilled.
    Reject {
        reason: String,
    },
    Pay {
        by: String,
        amount_cents: i64,
    },
    Ship {
        by: String,
    },
    Cancel {
        by: Canceller,
    },
}

/// Why an order command was refused. Each maps to a stable API `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("no such order")]
    NotFound,
    #[error("the order already exists")]
    OrderExists,
    #[error("an order needs at least one line")]
    NoLines,
    #[error("a line's SKU is 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'")]
    InvalidSku,
    #[error("SKU {0} appears on more than one line")]
    DuplicateSku(String),
    #[error("every line needs a quantity greater than zero")]
    InvalidQuantity,
    #[error("prices must not be negative")]
    InvalidPrice,
    #[error("a coupon takes 1 to 100 percent off")]
    InvalidCoupon,
    #[error("a rejection reason is 1 to 200 characters without control characters")]
    InvalidReason,
    #[error("only the order's customer may do this")]
    NotCustomer,
    #[error("cannot {action} an order that is {status}")]
    InvalidState {
        status: &'static str,
        action: &'static str,
    },
    #[error("the payment must be exactly {expected} cents, not {offered}")]
    WrongAmount { expected: i64, offered: i64 },
    #[error("{0}")]
    Payment(PaymentFailure),
}

impl OrderError {
    /// The stable snake_case code of the error, as API.md's problem+json `code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::OrderExists => "order_exists",
            Self::NoLines
            | Self::DuplicateSku(_)
            | Self::InvalidQuantity
            | Self::InvalidPrice
            | Self::InvalidSku
            | Self::InvalidReason
            | Self::InvalidCoupon => "validation_failed",
            Self::NotCustomer => "forbidden",
            Self::InvalidState { .. } => "invalid_state",
            Self::WrongAmount { .. } => "wrong_amount",
            Self::Payment(PaymentFailure::Declined(_)) => "payment_declined",
            Self::Payment(PaymentFailure::TimedOut) => "payment_timeout",
        }
    }
}

impl DomainRule for OrderError {
    fn rule_code(&self) -> &'static str {
        self.code()
    }
    fn refusal(&self) -> Refusal {
        match self {
            Self::NotFound => Refusal::NotFound,
            Self::NotCustomer => Refusal::Forbidden,
            Self::NoLines
            | Self::DuplicateSku(_)
            | Self::InvalidQuantity
            | Self::InvalidPrice
            | Self::InvalidSku
            | Self::InvalidReason
            | Self::InvalidCoupon => Refusal::Invalid,
            Self::Payment(PaymentFailure::TimedOut) => Refusal::TimedOut,
            Self::OrderExists
            | Self::InvalidState { .. }
            | Self::WrongAmount { .. }
            | Self::Payment(_) => Refusal::Conflict,
        }
    }
    fn invalid_fields(&self) -> Vec<chronicle_schemas::limits::Invalid> {
        use chronicle_schemas::limits::Invalid;
        match self {
            Self::NoLines
            | Self::DuplicateSku(_)
            | Self::InvalidQuantity
            | Self::InvalidPrice
            | Self::InvalidSku => {
                vec![Invalid::new("lines", self.to_string())]
            }
            Self::InvalidCoupon => vec![Invalid::new("coupon_code", self.to_string())],
            Self::InvalidReason => vec![Invalid::new("reason", self.to_string())],
            _ => Vec::new(),
        }
    }
}

/// One customer's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    order_id: String,
    customer_id: String,
    status: OrderStatus,
    lines: Vec<OrderLine>,
    coupon: Option<AppliedCoupon>,
    total_cents: i64,
    paid_cents: i64,
}

impl Order {
    pub fn exists(&self) -> bool {
        self.status != OrderStatus::New
    }
    pub fn status(&self) -> OrderStatus {
        self.status
    }
    pub fn customer_id(&self) -> &str {
        &self.customer_id
    }
    pub fn lines(&self) -> &[OrderLine] {
        &self.lines
    }
    pub fn coupon(&self) -> Option<&AppliedCoupon> {
        self.coupon.as_ref()
    }
    pub fn total_cents(&self) -> i64 {
        self.total_cents
    }

    fn invalid(&self, action: &'static str) -> OrderError {
        OrderError::InvalidState {
            status: self.status.as_str(),
            action,
        }
    }

    fn check_customer(&self, by: &str) -> Result<(), OrderError> {
        if by == self.customer_id {
            Ok(())
        } else {
            Err(OrderError::NotCustomer)
        }
    }

    /// Decides a command without side effects: the events, or the charge to make first.
    fn decide(&self, command: OrderCommand) -> Result<Decision, OrderError> {
        if let OrderCommand::Pay { by, amount_cents } = command {
            self.check_payment(&by, amount_cents)?;
            return Ok(Decision::Charge { amount_cents });
        }
        self.decide_events(command).map(Decision::Events)
    }

    fn decide_events(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderCommand as C;
        use OrderEvent as E;
        use OrderStatus as S;
        if !self.exists() && !matches!(command, C::Place { .. }) {
            return Err(OrderError::NotFound);
        }
        match command {
            C::Place {
                order_id,
                customer_id,
                lines,
                coupon,
            } => {
                if self.exists() {
                    return Err(OrderError::OrderExists);
                }
                let (subtotal_cents, discount_cents) = price(&lines, coupon.as_ref())?;
                Ok(vec![E::OrderPlaced {
                    order_id,
                    customer_id,
                    lines,
                    coupon,
                    subtotal_cents,
                    discount_cents,
                    total_cents: subtotal_cents - discount_cents,
                }])
            }
            C::ConfirmReserved => match self.status {
                S::Pending => Ok(vec![E::OrderReserved {}]),
                S::Reserved | S::Paid | S::Shipped => Ok(vec![]),
                _ => Err(self.invalid("confirm")),
            },
            C::Reject { reason } if limits::text("reason", &reason, 1, 200).is_err() => {
                Err(OrderError::InvalidReason)
            }
            C::Reject { reason } => match self.status {
                S::Pending => Ok(vec![E::OrderRejected { reason }]),
                S::Rejected => Ok(vec![]),
                _ => Err(self.invalid("reject")),
            },
            C::Pay { .. } => Err(self.invalid("pay")),
            C::Ship { by } => {
                self.check_customer(&by)?;
                match self.status {
                    S::Paid => Ok(vec![E::OrderShipped {}]),
                    _ => Err(self.invalid("ship")),
                }
            }
            C::Cancel {
                by: Canceller::Customer(by),
            } => {
                self.check_customer(&by)?;
                match self.status {
                    S::Pending | S::Reserved | S::Paid => Ok(vec![E::OrderCancelled {
                        by: CancelledBy::Customer,
                        refund_cents: self.paid_cents,
                    }]),
                    S::Cancelled => Ok(vec![]),
                    _ => Err(self.invalid("cancel")),
                }
            }
            C::Cancel {
                by: Canceller::PaymentTimeout,
            } => match self.status {
                S::Pending | S::Reserved => Ok(vec![E::OrderCancelled {
                    by: CancelledBy::PaymentTimeout,
                    refund_cents: 0,
                }]),
                S::Cancelled | S::Rejected => Ok(vec![]),
                _ => Err(self.invalid("time out")),
            },
        }
    }

    /// The checks before a charge: the customer, a reserved order, the exact total.
    fn check_payment(&self, by: &str, amount_cents: i64) -> Result<(), OrderError> {
        if !self.exists() {
            return Err(OrderError::NotFound);
        }
        self.check_customer(by)?;
        if self.status != OrderStatus::Reserved {
            return Err(self.invalid("pay"));
        }
        if amount_cents != self.total_cents {
            return Err(OrderError::WrongAmount {
                expected: self.total_cents,
                offered: amount_cents,
            });
        }
        Ok(())
    }
}

/// What a command comes to.
enum Decision {
    Events(Vec<OrderEvent>),
    /// Charge the order's total, then record the payment.
    Charge {
        amount_cents: i64,
    },
}

/// Most lines an order may have.
pub const MAX_LINES: usize = 100;

/// `(subtotal, discount)` of priced lines, after validating them. Every sum is checked:
/// an order whose total would not fit is refused, never wrapped.
fn price(lines: &[OrderLine], coupon: Option<&AppliedCoupon>) -> Result<(i64, i64), OrderError> {
    if lines.is_empty() || lines.len() > MAX_LINES {
        return Err(OrderError::NoLines);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut subtotal: i64 = 0;
    for line in lines {
        if crate::inventory::check_sku(&line.sku).is_err() {
            return Err(OrderError::InvalidSku);
        }
        if !seen.insert(line.sku.as_str()) {
            return Err(OrderError::DuplicateSku(line.sku.clone()));
        }
        if crate::inventory::check_quantity("quantity", line.quantity).is_err() {
            return Err(OrderError::InvalidQuantity);
        }
        if crate::inventory::check_price(line.unit_price_cents).is_err() {
            return Err(OrderError::InvalidPrice);
        }
        let quantity = i64::try_from(line.quantity).map_err(|_| OrderError::InvalidQuantity)?;
        subtotal = line
            .unit_price_cents
            .checked_mul(quantity)
            .and_then(|cost| subtotal.checked_add(cost))
            .ok_or(OrderError::InvalidPrice)?;
    }
    let discount = match coupon {
        None => 0,
        Some(c) if (1..=100).contains(&c.percent_off) => {
            // Rounded down: the customer never gets more off than the coupon says.
            (i128::from(subtotal) * i128::from(c.percent_off) / 100) as i64
        }
        Some(_) => return Err(OrderError::InvalidCoupon),
    };
    Ok((subtotal, discount))
}

impl AggregateKind for Order {
    const CONTEXT: &'static str = "commerce";
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    type Services = OrderServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = match self.decide(command)? {
            Decision::Events(events) => events,
            Decision::Charge { amount_cents } => {
                let receipt = services
                    .payments
                    .charge(&self.order_id, amount_cents)
                    .await
                    .map_err(OrderError::Payment)?;
                vec![OrderEvent::OrderPaid {
                    payment_id: receipt.payment_id,
                    amount_cents,
                }]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        use OrderEvent as E;
        match event {
            E::OrderPlaced {
                order_id,
                customer_id,
                lines,
                coupon,
                total_cents,
                ..
            } => {
                self.order_id = order_id;
                self.customer_id = customer_id;
                self.lines = lines;
                self.coupon = coupon;
                self.total_cents = total_cents;
                self.status = OrderStatus::Pending;
            }
            E::OrderReserved {} => self.status = OrderStatus::Reserved,
            E::OrderRejected { .. } => self.status = OrderStatus::Rejected,
            E::OrderPaid { amount_cents, .. } => {
                self.paid_cents = amount_cents;
                self.status = OrderStatus::Paid;
            }
            E::OrderShipped {} => self.status = OrderStatus::Shipped,
            E::OrderCancelled { .. } => self.status = OrderStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::payments::{PaymentProvider, Receipt};
    use cqrs_es::test::TestFramework;
    use OrderCommand as C;
    use OrderEvent as E;

    /// A provider that answers from a script and records what it was asked.
    #[derive(Debug, Default)]
    struct Scripted {
        fail: Option<PaymentFailure>,
        charged: Mutex<Vec<(String, i64)>>,
    }

    #[async_trait::async_trait]
    impl PaymentProvider for Scripted {
        async fn charge(&self, order_id: &str, amount: i64) -> Result<Receipt, PaymentFailure> {
            self.charged
                .lock()
                .expect("lock")
                .push((order_id.to_owned(), amount));
            match &self.fail {
                Some(failure) => Err(failure.clone()),
                None => Ok(Receipt {
                    payment_id: format!("pay-{order_id}"),
                }),
            }
        }
    }

    fn given(provider: Arc<Scripted>) -> TestFramework<Order> {
        TestFramework::with(OrderServices { payments: provider })
    }

    fn ok() -> TestFramework<Order> {
        given(Arc::default())
    }

    fn line(sku: &str, quantity: u64, price: i64) -> OrderLine {
        OrderLine {
            sku: sku.into(),
            quantity,
            unit_price_cents: price,
        }
    }

    fn placed() -> E {
        E::OrderPlaced {
            order_id: "o-1".into(),
            customer_id: "alice".into(),
            lines: vec![line("A", 2, 1000), line("B", 1, 550)],
            coupon: None,
            subtotal_cents: 2550,
            discount_cents: 0,
            total_cents: 2550,
        }
    }

    fn reserved() -> Vec<E> {
        vec![placed(), E::OrderReserved {}]
    }

    fn paid() -> Vec<E> {
        let mut events = reserved();
        events.push(E::OrderPaid {
            payment_id: "pay-o-1".into(),
            amount_cents: 2550,
        });
        events
    }

    fn place(lines: Vec<OrderLine>, coupon: Option<AppliedCoupon>) -> C {
        C::Place {
            order_id: "o-1".into(),
            customer_id: "alice".into(),
            lines,
            coupon,
        }
    }

    #[test]
    fn placing_prices_the_lines_and_totals_them() {
        ok().given_no_previous_events()
            .when(place(vec![line("A", 2, 1000), line("B", 1, 550)], None))
            .then_expect_events(vec![placed()]);
    }

    #[test]
    fn a_coupon_takes_its_percent_off_rounded_down() {
        ok().given_no_previous_events()
            .when(place(
                vec![line("A", 1, 999)],
                Some(AppliedCoupon {
                    code: "TEN".into(),
                    percent_off: 10,
                }),
            ))
            .then_expect_events(vec![E::OrderPlaced {
                order_id: "o-1".into(),
                customer_id: "alice".into(),
                lines: vec![line("A", 1, 999)],
                coupon: Some(AppliedCoupon {
                    code: "TEN".into(),
                    percent_off: 10,
                }),
                subtotal_cents: 999,
                discount_cents: 99,
                total_cents: 900,
            }]);
    }

    #[test]
    fn an_order_without_lines_or_with_a_repeated_sku_or_zero_quantity_is_refused() {
        ok().given_no_previous_events()
            .when(place(vec![], None))
            .then_expect_error(OrderError::NoLines);
        ok().given_no_previous_events()
            .when(place(vec![line("A", 1, 1), line("A", 2, 1)], None))
            .then_expect_error(OrderError::DuplicateSku("A".into()));
        ok().given_no_previous_events()
            .when(place(vec![line("A", 0, 1)], None))
            .then_expect_error(OrderError::InvalidQuantity);
        ok().given_no_previous_events()
            .when(place(
                vec![line("A", 1, 1)],
                Some(AppliedCoupon {
                    code: "X".into(),
                    percent_off: 0,
                }),
            ))
            .then_expect_error(OrderError::InvalidCoupon);
    }

    #[test]
    fn placing_twice_is_refused() {
        ok().given(vec![placed()])
            .when(place(vec![line("A", 1, 1)], None))
            .then_expect_error(OrderError::OrderExists);
    }

    #[test]
    fn commands_on_an_order_that_was_never_placed_are_not_found() {
        ok().given_no_previous_events()
            .when(C::ConfirmReserved)
            .then_expect_error(OrderError::NotFound);
        ok().given_no_previous_events()
            .when(C::Pay {
                by: "alice".into(),
                amount_cents: 1,
            })
            .then_expect_error(OrderError::NotFound);
    }

    #[test]
    fn the_saga_confirms_a_pending_order_once() {
        ok().given(vec![placed()])
            .when(C::ConfirmReserved)
            .then_expect_events(vec![E::OrderReserved {}]);
        ok().given(reserved())
            .when(C::ConfirmReserved)
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_cancelled_order_cannot_be_confirmed() {
        ok().given(vec![
            placed(),
            E::OrderCancelled {
                by: CancelledBy::Customer,
                refund_cents: 0,
            },
        ])
        .when(C::ConfirmReserved)
        .then_expect_error(OrderError::InvalidState {
            status: "cancelled",
            action: "confirm",
        });
    }

    #[test]
    fn rejection_happens_once_and_only_to_a_pending_order() {
        let rejected = E::OrderRejected {
            reason: "insufficient_stock".into(),
        };
        ok().given(vec![placed()])
            .when(C::Reject {
                reason: "insufficient_stock".into(),
            })
            .then_expect_events(vec![rejected.clone()]);
        ok().given(vec![placed(), rejected])
            .when(C::Reject {
                reason: "insufficient_stock".into(),
            })
            .then_expect_events(vec![]);
        ok().given(reserved())
            .when(C::Reject {
                reason: "insufficient_stock".into(),
            })
            .then_expect_error(OrderError::InvalidState {
                status: "reserved",
                action: "reject",
            });
    }

    #[test]
    fn paying_the_exact_total_charges_the_provider_once() {
        let provider = Arc::new(Scripted::default());
        given(provider.clone())
            .given(reserved())
            .when(C::Pay {
                by: "alice".into(),
                amount_cents: 2550,
            })
            .then_expect_events(vec![E::OrderPaid {
                payment_id: "pay-o-1".into(),
                amount_cents: 2550,
            }]);
        assert_eq!(
            *provider.charged.lock().expect("lock"),
            vec![("o-1".to_owned(), 2550)]
        );
    }

    #[test]
    fn a_wrong_amount_or_a_pending_order_is_refused_without_charging() {
        let provider = Arc::new(Scripted::default());
        given(provider.clone())
            .given(reserved())
            .when(C::Pay {
                by: "alice".into(),
                amount_cents: 2549,
            })
            .then_expect_error(OrderError::WrongAmount {
                expected: 2550,
                offered: 2549,
            });
        given(provider.clone())
            .given(vec![placed()])
            .when(C::Pay {
                by: "alice".into(),
                amount_cents: 2550,
            })
            .then_expect_error(OrderError::InvalidState {
                status: "pending",
                action: "pay",
            });
        given(provider.clone())
            .given(paid())
            .when(C::Pay {
                by: "alice".into(),
                amount_cents: 2550,
            })
            .then_expect_error(OrderError::InvalidState {
                status: "paid",
                action: "pay",
            });
        assert!(provider.charged.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_declined_or_timed_out_payment_leaves_the_order_reserved() {
        for failure in [
            PaymentFailure::Declined("card".into()),
            PaymentFailure::TimedOut,
        ] {
            given(Arc::new(Scripted {
                fail: Some(failure.clone()),
                ..Default::default()
            }))
            .given(reserved())
            .when(C::Pay {
                by: "alice".into(),
                amount_cents: 2550,
            })
            .then_expect_error(OrderError::Payment(failure));
        }
    }

    #[test]
    fn only_the_customer_pays_ships_or_cancels() {
        ok().given(reserved())
            .when(C::Pay {
                by: "mallory".into(),
                amount_cents: 2550,
            })
            .then_expect_error(OrderError::NotCustomer);
        ok().given(paid())
            .when(C::Ship {
                by: "mallory".into(),
            })
            .then_expect_error(OrderError::NotCustomer);
        ok().given(reserved())
            .when(C::Cancel {
                by: Canceller::Customer("mallory".into()),
            })
            .then_expect_error(OrderError::NotCustomer);
    }

    #[test]
    fn only_a_paid_order_ships() {
        ok().given(paid())
            .when(C::Ship { by: "alice".into() })
            .then_expect_events(vec![E::OrderShipped {}]);
        ok().given(reserved())
            .when(C::Ship { by: "alice".into() })
            .then_expect_error(OrderError::InvalidState {
                status: "reserved",
                action: "ship",
            });
    }

    #[test]
    fn cancelling_a_paid_order_owes_a_refund_and_a_shipped_one_cannot_be_cancelled() {
        ok().given(paid())
            .when(C::Cancel {
                by: Canceller::Customer("alice".into()),
            })
            .then_expect_events(vec![E::OrderCancelled {
                by: CancelledBy::Customer,
                refund_cents: 2550,
            }]);
        let mut shipped = paid();
        shipped.push(E::OrderShipped {});
        ok().given(shipped)
            .when(C::Cancel {
                by: Canceller::Customer("alice".into()),
            })
            .then_expect_error(OrderError::InvalidState {
                status: "shipped",
                action: "cancel",
            });
    }

    #[test]
    fn the_payment_deadline_cancels_only_unpaid_orders() {
        ok().given(reserved())
            .when(C::Cancel {
                by: Canceller::PaymentTimeout,
            })
            .then_expect_events(vec![E::OrderCancelled {
                by: CancelledBy::PaymentTimeout,
                refund_cents: 0,
            }]);
        ok().given(paid())
            .when(C::Cancel {
                by: Canceller::PaymentTimeout,
            })
            .then_expect_error(OrderError::InvalidState {
                status: "paid",
                action: "time out",
            });
    }
}
