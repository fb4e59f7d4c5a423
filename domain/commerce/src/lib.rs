//! The commerce bounded context: inventory (and, later, orders, payments, coupons).
//!
//! # Layout
//!
//! - [`InventoryItem`]: one SKU's stock. Decides receive / reserve / release / commit
//!   commands and keeps the rule that stock is never negative.
//!
//! Aggregates here are pure: state + command → events or an error. They know nothing of
//! HTTP, SQL or NATS; the `commands` crate loads, runs and stores them.

mod inventory;

pub use chronicle_schemas::commerce::InventoryEvent;
pub use inventory::{InventoryCommand, InventoryError, InventoryItem};
