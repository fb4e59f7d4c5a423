//! Events of the commerce bounded context.

use serde::{Deserialize, Serialize};

/// Everything that can happen to one inventory item (aggregate type `inventory_item`, id =
/// its SKU). Quantities are whole units; money is integer cents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum InventoryEvent {
    /// The item was added to the catalogue with its opening stock.
    ItemCreated {
        sku: String,
        name: String,
        price_cents: i64,
        initial_stock: u64,
    },
    /// Units arrived and are now on hand.
    StockReceived { quantity: u64 },
    /// Units were set aside for `reservation_id` (an order, usually); they stay on hand but
    /// are no longer available.
    StockReserved {
        reservation_id: String,
        quantity: u64,
    },
    /// A reservation was given back: its units are available again.
    ReservationReleased {
        reservation_id: String,
        quantity: u64,
    },
    /// A reservation was fulfilled: its units left the warehouse.
    ReservationCommitted {
        reservation_id: String,
        quantity: u64,
    },
    /// Staff renamed the item.
    ItemRenamed { name: String },
    /// Staff changed the item's price: carts show it at once, orders placed from then on
    /// pay it, and an order already placed keeps the price it was placed at.
    ItemRepriced { price_cents: i64 },
    /// Staff changed the item's description (empty: none).
    ItemDescribed { description: String },
    /// Staff withdrew the item: it stays readable, cannot be put in a cart or ordered, and
    /// the reservations already made for it are honoured.
    ItemDiscontinued {},
}

event_types!(InventoryEvent:
    ItemCreated,
    StockReceived,
    StockReserved,
    ReservationReleased,
    ReservationCommitted,
    ItemRenamed,
    ItemRepriced,
    ItemDescribed,
    ItemDiscontinued,
);

/// One line of an order: the unit price is the item's price when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: u64,
    pub unit_price_cents: i64,
}

/// A coupon as applied to an order when it was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AppliedCoupon {
    pub code: String,
    pub percent_off: u8,
}

/// Who cancelled an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    Customer,
    /// The order saga, because the order was still unpaid at its payment deadline.
    PaymentTimeout,
}

/// Everything that can happen to an order (aggregate type `order`, id = a UUID v7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OrderEvent {
    /// The customer placed the order; it waits for the saga to reserve its stock.
    OrderPlaced {
        order_id: String,
        customer_id: String,
        lines: Vec<OrderLine>,
        coupon: Option<AppliedCoupon>,
        subtotal_cents: i64,
        discount_cents: i64,
        total_cents: i64,
    },
    /// Every line's stock is reserved (and the coupon, if any, redeemed).
    OrderReserved {},
    /// The order cannot be fulfilled; nothing stays reserved for it.
    OrderRejected {
        reason: String,
    },
    /// The customer asked to pay the order's total; the charge is made outside the
    /// aggregate, and its outcome is the next event.
    PaymentRequested {
        amount_cents: i64,
    },
    /// The payment provider declined the charge or did not answer: the order is reserved
    /// again and may be paid again.
    PaymentFailed {
        reason: String,
    },
    /// The payment provider took exactly the order's total.
    OrderPaid {
        payment_id: String,
        amount_cents: i64,
    },
    /// Money the provider took for an order that was cancelled (or was never paid)
    /// meanwhile: it is owed back, and the saga refunds it.
    LatePaymentCharged {
        payment_id: String,
        amount_cents: i64,
    },
    /// Money given back to the customer by the provider.
    PaymentRefunded {
        refund_id: String,
        amount_cents: i64,
    },
    OrderShipped {},
    /// The order was cancelled; its reservations are released by the saga. `refund_cents`
    /// is what was paid and is owed back.
    OrderCancelled {
        by: CancelledBy,
        refund_cents: i64,
    },
}

event_types!(OrderEvent:
    OrderPlaced,
    OrderReserved,
    OrderRejected,
    PaymentRequested,
    PaymentFailed,
    OrderPaid,
    LatePaymentCharged,
    PaymentRefunded,
    OrderShipped,
    OrderCancelled,
);

/// Everything that can happen to a coupon (aggregate type `coupon`, id = its code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CouponEvent {
    CouponCreated {
        code: String,
        percent_off: u8,
        max_redemptions: u32,
    },
    /// One redemption was taken by `order_id`.
    CouponRedeemed { order_id: String },
    /// The order that took a redemption was rejected or cancelled: the redemption is free
    /// again.
    RedemptionReleased { order_id: String },
}

event_types!(CouponEvent: CouponCreated, CouponRedeemed, RedemptionReleased);

/// Everything that can happen to a customer's cart (aggregate type `cart`, id = the
/// customer's user id: one cart per customer). It holds SKUs and quantities only: a cart
/// shows the items' current prices, read from the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CartEvent {
    /// The line of `sku` now holds `quantity` (added, or its quantity changed).
    LineSet { sku: String, quantity: u64 },
    /// The line of `sku` was taken out.
    LineRemoved { sku: String },
    /// Every line was taken out.
    CartEmptied {},
    /// The cart became the order `order_id` (appended in one transaction with the order's
    /// `OrderPlaced`), and is empty again.
    CheckedOut {
        order_id: String,
        lines: Vec<CartLine>,
    },
    /// The cart held `lines` lines and was left untouched for
    /// `CHRONICLE_CART_ABANDONED_AFTER`: counted as abandoned once, until it is touched
    /// again. Its lines stay.
    CartAbandoned { lines: u64 },
}

/// One line of a cart as it was checked out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CartLine {
    pub sku: String,
    pub quantity: u64,
}

event_types!(CartEvent: LineSet, LineRemoved, CartEmptied, CheckedOut, CartAbandoned);
