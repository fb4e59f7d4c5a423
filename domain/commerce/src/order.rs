use chronicle_schemas::limits;
use chronicle_schemas::{
    commerce::{AppliedCoupon, CancelledBy, OrderEvent, OrderLine},
    AggregateKind,
};
use cqrs_es::{event_sink::EventSink, Aggregate};
use serde::{Deserialize, Serialize};

use crate::payments::PaymentFailure;

/// Where an order is in its life. `Shipped`, `Rejected` and `Cancelled` are final.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Not placed yet (the aggregate has no events).
    #[default]
    New,
    Pending,
    Reserved,
    /// A payment was requested; its outcome is not recorded yet.
    Paying,
    Paid,
    Shipped,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    /// The status as the API contract spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Pending => "pending",
            Self::Reserved => "reserved",
            Self::Paying => "paying",
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
    /// The customer asks to pay the total (the charge itself is made outside the aggregate,
    /// by the caller, with the order id as the provider's idempotency key). Repeating it
    /// while paying or once paid changes nothing.
    Pay {
        by: String,
        amount_cents: i64,
    },
    /// The provider took the total for this order: it is paid. Refused when the order can
    /// no longer be paid (cancelled meanwhile): then [`RecordLateCharge`](Self::RecordLateCharge).
    RecordCharge {
        payment_id: String,
        amount_cents: i64,
    },
    /// The provider took money for an order that can no longer be paid: recorded as owed
    /// back (the saga refunds it). Repeating it for the same payment changes nothing.
    RecordLateCharge {
        payment_id: String,
        amount_cents: i64,
    },
    /// The charge was declined or did not answer: the order is reserved again.
    RecordPaymentFailure {
        reason: String,
    },
    /// The provider gave `amount_cents` back.
    RecordRefund {
        refund_id: String,
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

chronicle_schemas::domain_rules!(OrderError {
    Self::NotFound => NotFound,
    Self::OrderExists => Conflict("order_exists"),
    Self::NoLines
    | Self::DuplicateSku(_)
    | Self::InvalidQuantity
    | Self::InvalidPrice
    | Self::InvalidSku => Invalid("lines"),
    Self::InvalidCoupon => Invalid("coupon_code"),
    Self::InvalidReason => Invalid("reason"),
    Self::NotCustomer => Forbidden,
    Self::InvalidState { .. } => Conflict("invalid_state"),
    Self::WrongAmount { .. } => Conflict("wrong_amount"),
    Self::Payment(PaymentFailure::Declined(_)) => Conflict("payment_declined"),
    Self::Payment(PaymentFailure::TimedOut) => TimedOut("payment_timeout"),
});

/// One customer's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    order_id: String,
    customer_id: String,
    status: OrderStatus,
    lines: Vec<OrderLine>,
    coupon: Option<AppliedCoupon>,
    total_cents: i64,
    /// Money the provider took for this order, and what of it went back.
    #[serde(default, alias = "paid_cents")]
    charged_cents: i64,
    #[serde(default)]
    refunded_cents: i64,
    #[serde(default)]
    payment_id: Option<String>,
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
    /// Money the provider took for this order.
    pub fn charged_cents(&self) -> i64 {
        self.charged_cents
    }
    /// Money given back.
    pub fn refunded_cents(&self) -> i64 {
        self.refunded_cents
    }
    /// What is owed back: everything held once the order is cancelled or rejected.
    pub fn refund_owed_cents(&self) -> i64 {
        match self.status {
            OrderStatus::Cancelled | OrderStatus::Rejected => self.held_cents(),
            _ => 0,
        }
    }
    fn held_cents(&self) -> i64 {
        self.charged_cents.saturating_sub(self.refunded_cents)
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
            C::Pay { by, amount_cents } => {
                self.check_customer(&by)?;
                if !matches!(self.status, S::Reserved | S::Paying | S::Paid) {
                    return Err(self.invalid("pay"));
                }
                if amount_cents != self.total_cents {
                    return Err(OrderError::WrongAmount {
                        expected: self.total_cents,
                        offered: amount_cents,
                    });
                }
                match self.status {
                    S::Reserved => Ok(vec![E::PaymentRequested { amount_cents }]),
                    _ => Ok(vec![]),
                }
            }
            C::RecordCharge {
                payment_id,
                amount_cents,
            } => {
                check_payment_record(&payment_id, amount_cents, || {
                    self.invalid("record a charge")
                })?;
                match self.status {
                    S::Paid if self.payment_id.as_deref() == Some(payment_id.as_str()) => {
                        Ok(vec![])
                    }
                    S::Pending | S::Reserved | S::Paying if amount_cents == self.total_cents => {
                        Ok(vec![E::OrderPaid {
                            payment_id,
                            amount_cents,
                        }])
                    }
                    _ => Err(self.invalid("record a charge")),
                }
            }
            C::RecordLateCharge {
                payment_id,
                amount_cents,
            } => {
                check_payment_record(&payment_id, amount_cents, || {
                    self.invalid("record a late charge")
                })?;
                if self.payment_id.as_deref() == Some(payment_id.as_str()) {
                    return Ok(vec![]);
                }
                match self.status {
                    S::Paid | S::Shipped | S::Cancelled | S::Rejected => {
                        Ok(vec![E::LatePaymentCharged {
                            payment_id,
                            amount_cents,
                        }])
                    }
                    _ => Err(self.invalid("record a late charge")),
                }
            }
            C::RecordPaymentFailure { reason } => match self.status {
                S::Paying => Ok(vec![E::PaymentFailed {
                    reason: reason
                        .chars()
                        .filter(|c| limits::is_allowed_char(*c))
                        .take(200)
                        .collect(),
                }]),
                _ => Ok(vec![]),
            },
            C::RecordRefund {
                refund_id,
                amount_cents,
            } => {
                if amount_cents == 0 {
                    return Ok(vec![]);
                }
                if amount_cents < 0
                    || amount_cents > self.held_cents()
                    || limits::text("refund_id", &refund_id, 1, 200).is_err()
                {
                    return Err(self.invalid("record a refund"));
                }
                Ok(vec![E::PaymentRefunded {
                    refund_id,
                    amount_cents,
                }])
            }
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
                    S::Pending | S::Reserved | S::Paying | S::Paid => Ok(vec![E::OrderCancelled {
                        by: CancelledBy::Customer,
                        refund_cents: self.held_cents(),
                    }]),
                    S::Cancelled => Ok(vec![]),
                    _ => Err(self.invalid("cancel")),
                }
            }
            C::Cancel {
                by: Canceller::PaymentTimeout,
            } => match self.status {
                S::Pending | S::Reserved | S::Paying => Ok(vec![E::OrderCancelled {
                    by: CancelledBy::PaymentTimeout,
                    refund_cents: self.held_cents(),
                }]),
                S::Cancelled | S::Rejected => Ok(vec![]),
                _ => Err(self.invalid("time out")),
            },
        }
    }
}

/// A payment id and amount as a provider reports them: text, and a positive amount.
fn check_payment_record(
    payment_id: &str,
    amount_cents: i64,
    invalid: impl FnOnce() -> OrderError,
) -> Result<(), OrderError> {
    if amount_cents <= 0 || limits::text("payment_id", payment_id, 1, 200).is_err() {
        Err(invalid())
    } else {
        Ok(())
    }
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
    /// Nothing: the charge is made outside the aggregate (by the caller of `Pay`), and its
    /// outcome comes back as a command.
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = self.decide_events(command)?;
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
            E::PaymentRequested { .. } => self.status = OrderStatus::Paying,
            E::PaymentFailed { .. } => self.status = OrderStatus::Reserved,
            E::OrderPaid {
                payment_id,
                amount_cents,
            } => {
                self.charged_cents = self.charged_cents.saturating_add(amount_cents);
                self.payment_id = Some(payment_id);
                self.status = OrderStatus::Paid;
            }
            E::LatePaymentCharged {
                payment_id,
                amount_cents,
            } => {
                self.charged_cents = self.charged_cents.saturating_add(amount_cents);
                self.payment_id.get_or_insert(payment_id);
            }
            E::PaymentRefunded { amount_cents, .. } => {
                self.refunded_cents = self.refunded_cents.saturating_add(amount_cents);
            }
            E::OrderShipped {} => self.status = OrderStatus::Shipped,
            E::OrderCancelled { .. } => self.status = OrderStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use OrderCommand as C;
    use OrderEvent as E;

    fn ok() -> TestFramework<Order> {
        TestFramework::with(())
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

    fn paying() -> Vec<E> {
        let mut events = reserved();
        events.push(E::PaymentRequested { amount_cents: 2550 });
        events
    }

    fn paid() -> Vec<E> {
        let mut events = paying();
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
    fn paying_records_the_request_then_the_charge() {
        let pay = || C::Pay {
            by: "alice".into(),
            amount_cents: 2550,
        };
        ok().given(reserved())
            .when(pay())
            .then_expect_events(vec![E::PaymentRequested { amount_cents: 2550 }]);
        // A retry while paying or once paid asks for nothing more.
        ok().given(paying()).when(pay()).then_expect_events(vec![]);
        ok().given(paid()).when(pay()).then_expect_events(vec![]);
        let charged = || C::RecordCharge {
            payment_id: "pay-o-1".into(),
            amount_cents: 2550,
        };
        ok().given(paying())
            .when(charged())
            .then_expect_events(vec![E::OrderPaid {
                payment_id: "pay-o-1".into(),
                amount_cents: 2550,
            }]);
        ok().given(paid())
            .when(charged())
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_wrong_amount_or_a_pending_order_is_refused() {
        ok().given(reserved())
            .when(C::Pay {
                by: "alice".into(),
                amount_cents: 2549,
            })
            .then_expect_error(OrderError::WrongAmount {
                expected: 2550,
                offered: 2549,
            });
        ok().given(vec![placed()])
            .when(C::Pay {
                by: "alice".into(),
                amount_cents: 2550,
            })
            .then_expect_error(OrderError::InvalidState {
                status: "pending",
                action: "pay",
            });
    }

    #[test]
    fn a_failed_charge_leaves_the_order_reserved_to_be_paid_again() {
        ok().given(paying())
            .when(C::RecordPaymentFailure {
                reason: "declined\u{0}".into(),
            })
            .then_expect_events(vec![E::PaymentFailed {
                reason: "declined".into(),
            }]);
        let mut failed = paying();
        failed.push(E::PaymentFailed {
            reason: "declined".into(),
        });
        ok().given(failed)
            .when(C::Pay {
                by: "alice".into(),
                amount_cents: 2550,
            })
            .then_expect_events(vec![E::PaymentRequested { amount_cents: 2550 }]);
    }

    #[test]
    fn a_charge_landing_on_a_cancelled_order_is_recorded_as_owed_and_refunded() {
        let mut cancelled = paying();
        cancelled.push(E::OrderCancelled {
            by: CancelledBy::PaymentTimeout,
            refund_cents: 0,
        });
        ok().given(cancelled.clone())
            .when(C::RecordCharge {
                payment_id: "pay-o-1".into(),
                amount_cents: 2550,
            })
            .then_expect_error(OrderError::InvalidState {
                status: "cancelled",
                action: "record a charge",
            });
        let late = E::LatePaymentCharged {
            payment_id: "pay-o-1".into(),
            amount_cents: 2550,
        };
        ok().given(cancelled.clone())
            .when(C::RecordLateCharge {
                payment_id: "pay-o-1".into(),
                amount_cents: 2550,
            })
            .then_expect_events(vec![late.clone()]);
        cancelled.push(late);
        let mut order = Order::default();
        for event in cancelled.clone() {
            order.apply(event);
        }
        assert_eq!(order.refund_owed_cents(), 2550);
        // Recorded once per payment; refunds never exceed what is held.
        ok().given(cancelled.clone())
            .when(C::RecordLateCharge {
                payment_id: "pay-o-1".into(),
                amount_cents: 2550,
            })
            .then_expect_events(vec![]);
        ok().given(cancelled.clone())
            .when(C::RecordRefund {
                refund_id: "r-1".into(),
                amount_cents: 2551,
            })
            .then_expect_error(OrderError::InvalidState {
                status: "cancelled",
                action: "record a refund",
            });
        ok().given(cancelled)
            .when(C::RecordRefund {
                refund_id: "r-1".into(),
                amount_cents: 2550,
            })
            .then_expect_events(vec![E::PaymentRefunded {
                refund_id: "r-1".into(),
                amount_cents: 2550,
            }]);
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
        ok().given(paying())
            .when(C::Cancel {
                by: Canceller::PaymentTimeout,
            })
            .then_expect_events(vec![E::OrderCancelled {
                by: CancelledBy::PaymentTimeout,
                refund_cents: 0,
            }]);
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
