//! The commerce bounded context: inventory, orders, payments and coupons.
//!
//! # Layout
//!
//! - [`InventoryItem`]: one SKU's stock. Decides receive / reserve / release / commit
//!   commands and keeps the rule that stock is never negative. Reservations are keyed (by
//!   order id), so the saga can repeat any of them safely.
//! - [`Order`]: one customer's order, `pending → reserved → paid → shipped`, or `rejected` /
//!   `cancelled`; nothing leaves a final state. Payment goes through a [`PaymentProvider`].
//! - [`Coupon`]: a percent-off code, never redeemed more often than its maximum.
//! - [`Cart`]: one customer's cart, SKUs and quantities (at most 100 lines), priced when
//!   it is read.
//!
//! Aggregates here are pure: state + command → events or an error. They know nothing of
//! HTTP, SQL or NATS; the `commands` crate loads, runs and stores them.

mod cart;
mod coupon;
mod inventory;
mod order;
mod payments;

pub use cart::{Cart, CartCommand, CartError, MAX_CART_LINES};
pub use chronicle_schemas::commerce::{
    AppliedCoupon, CancelledBy, CartEvent, CartLine, CouponEvent, InventoryEvent, OrderEvent,
    OrderLine,
};
pub use coupon::{Coupon, CouponCommand, CouponError};
pub use inventory::{
    check_description, check_initial_stock, check_item_name, check_price, check_quantity,
    check_sku, InventoryCommand, InventoryError, InventoryItem, MAX_DESCRIPTION,
};
pub use order::{Canceller, Order, OrderCommand, OrderError, OrderStatus, MAX_LINES};
pub use payments::{Holding, OrderServices, PaymentFailure, PaymentProvider, Receipt};
