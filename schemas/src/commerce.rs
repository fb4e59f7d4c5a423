//! Events of the commerce bounded context.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// Everything that can happen to one inventory item (aggregate type `inventory_item`, id =
/// its SKU). Quantities are whole units; money is integer cents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl DomainEvent for InventoryEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ItemCreated { .. } => "ItemCreated",
            Self::StockReceived { .. } => "StockReceived",
            Self::StockReserved { .. } => "StockReserved",
            Self::ReservationReleased { .. } => "ReservationReleased",
            Self::ReservationCommitted { .. } => "ReservationCommitted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
