use std::collections::BTreeMap;

use chronicle_schemas::{
    commerce::InventoryEvent,
    limits::{self, Invalid, MAX_QUANTITY, MAX_STOCK},
    AggregateKind,
};
use serde::{Deserialize, Serialize};

/// What can be asked of an inventory item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryCommand {
    Create {
        sku: String,
        name: String,
        price_cents: i64,
        initial_stock: u64,
    },
    Receive {
        quantity: u64,
    },
    /// Set `quantity` units aside for `reservation_id`. Repeating the same reservation is a
    /// no-op, so a saga can retry it safely.
    Reserve {
        reservation_id: String,
        quantity: u64,
    },
    /// Give a reservation back. Releasing one that does not exist or was already released
    /// is a no-op (idempotent for sagas); releasing a committed one is an error.
    Release {
        reservation_id: String,
    },
    /// The reserved units left the warehouse. Repeating it is a no-op.
    Commit {
        reservation_id: String,
    },
    /// Staff change any of the name, the price and the description; a field that is
    /// absent, or the same as now, is left as it is (nothing changed: no event).
    Change {
        name: Option<String>,
        price_cents: Option<i64>,
        description: Option<String>,
    },
    /// Staff withdraw the item for good.
    Discontinue,
}

/// Why an inventory command was refused. Each maps to a stable API `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("an item with this SKU already exists")]
    SkuExists,
    #[error("no item with this SKU exists")]
    NotFound,
    #[error("quantity must be greater than zero")]
    InvalidQuantity,
    #[error("price must not be negative")]
    InvalidPrice,
    #[error("only {available} units are available, {requested} were requested")]
    InsufficientStock { available: u64, requested: u64 },
    #[error("reservation {0} already holds a different quantity")]
    ReservationMismatch(String),
    #[error("reservation {0} does not exist")]
    UnknownReservation(String),
    #[error("reservation {0} was already committed")]
    ReservationCommitted(String),
    #[error("reservation {0} was already released")]
    ReservationReleased(String),
    #[error("item {0} is discontinued")]
    Discontinued(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("receiving {requested} more would take stock past {max} units (on hand: {on_hand})")]
    StockLimit {
        on_hand: u64,
        requested: u64,
        max: u64,
    },
}

chronicle_schemas::domain_rules!(InventoryError {
    Self::SkuExists => Conflict("sku_exists"),
    Self::NotFound => NotFound,
    Self::InvalidQuantity => Invalid("quantity"),
    Self::InvalidPrice => Invalid("price_cents"),
    Self::Invalid(invalid) => Invalid(invalid),
    Self::StockLimit { .. } => Conflict("stock_limit_exceeded"),
    Self::InsufficientStock { .. } => Conflict("insufficient_stock"),
    Self::ReservationMismatch(_) => Conflict("reservation_mismatch"),
    Self::UnknownReservation(_) => Conflict("unknown_reservation"),
    Self::ReservationCommitted(_) => Conflict("reservation_committed"),
    Self::ReservationReleased(_) => Conflict("reservation_released"),
    Self::Discontinued(_) => Conflict("item_discontinued"),
});

/// A SKU: the aggregate id and so one NATS subject token: 1 to 64 characters of `A-Z`,
/// `a-z`, `0-9`, `-` and `_`.
///
/// # Errors
/// [`Invalid`] for `sku`.
pub fn check_sku(sku: &str) -> Result<(), Invalid> {
    if (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(Invalid::new(
            "sku",
            "1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'",
        ))
    }
}

/// An item name: 1 to 200 characters, not blank, no control characters.
///
/// # Errors
/// [`Invalid`] for `name`.
pub fn check_item_name(name: &str) -> Result<(), Invalid> {
    limits::text("name", name, 1, 200)
}

/// Longest item description, in characters.
pub const MAX_DESCRIPTION: usize = 2_000;

/// An item description: at most 2,000 characters (empty: none), no control characters.
///
/// # Errors
/// [`Invalid`] for `description`.
pub fn check_description(description: &str) -> Result<(), Invalid> {
    limits::text("description", description, 0, MAX_DESCRIPTION)
}

/// A price: 0 to 10^12 cents.
///
/// # Errors
/// [`Invalid`] for `price_cents`.
pub fn check_price(price_cents: i64) -> Result<(), Invalid> {
    limits::cents("price_cents", price_cents)
}

/// An item's first stock: 0 to 10^12 units.
///
/// # Errors
/// [`Invalid`] for `initial_stock`.
pub fn check_initial_stock(initial_stock: impl Into<i128>) -> Result<(), Invalid> {
    limits::in_range("initial_stock", initial_stock.into(), 0, MAX_STOCK.into())
}

/// A quantity received or reserved: 1 to 1,000,000.
///
/// # Errors
/// [`Invalid`] for `field`.
pub fn check_quantity(field: &str, quantity: impl Into<i128>) -> Result<(), Invalid> {
    limits::in_range(field, quantity.into(), 1, MAX_QUANTITY.into())
}

/// How a reservation ended; kept so that a late retry of release or commit is answered
/// consistently instead of being applied twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Closed {
    Released,
    Committed,
}

/// One SKU's stock. `on_hand` counts units in the warehouse; `reserved` of them are promised
/// to open reservations; `available = on_hand - reserved` is what can still be reserved.
///
/// Maps are `BTreeMap` so a snapshot of the state serializes the same way every time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryItem {
    created: bool,
    sku: String,
    name: String,
    price_cents: i64,
    /// Empty until staff describe it (a snapshot from before descriptions reads as empty).
    #[serde(default)]
    description: String,
    #[serde(default)]
    discontinued: bool,
    on_hand: u64,
    reserved: u64,
    open: BTreeMap<String, u64>,
    /// How the most recent [`MAX_CLOSED`] reservations ended, so a late retry of their
    /// release or commit is answered as before. Older ones are forgotten: the state (and
    /// its snapshots) stays the same size however many orders an item has seen. A saga
    /// never re-reserves a settled order (it reserves only while the order is pending).
    closed: BTreeMap<String, Closed>,
    /// `closed`'s ids, oldest first.
    #[serde(default)]
    closed_order: std::collections::VecDeque<String>,
}

/// How many settled reservations an item remembers.
pub const MAX_CLOSED: usize = 1_000;

impl InventoryItem {
    pub fn exists(&self) -> bool {
        self.created
    }
    pub fn sku(&self) -> &str {
        &self.sku
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn price_cents(&self) -> i64 {
        self.price_cents
    }
    pub fn description(&self) -> &str {
        &self.description
    }
    /// Withdrawn: readable, but not to be put in a cart or ordered.
    pub fn is_discontinued(&self) -> bool {
        self.discontinued
    }
    pub fn on_hand(&self) -> u64 {
        self.on_hand
    }
    pub fn reserved(&self) -> u64 {
        self.reserved
    }
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// Remembers how `reservation_id` ended, forgetting the oldest beyond [`MAX_CLOSED`].
    fn close(&mut self, reservation_id: String, how: Closed) {
        if self.closed.insert(reservation_id.clone(), how).is_none() {
            self.closed_order.push_back(reservation_id);
        }
        while self.closed.len() > MAX_CLOSED {
            match self.closed_order.pop_front() {
                Some(oldest) => {
                    self.closed.remove(&oldest);
                }
                // A snapshot from before the order was kept: forget any.
                None => {
                    self.closed.pop_first();
                }
            }
        }
    }

    fn decide(&self, command: InventoryCommand) -> Result<Vec<InventoryEvent>, InventoryError> {
        use InventoryCommand as C;
        use InventoryEvent as E;
        if !self.created && !matches!(command, C::Create { .. }) {
            return Err(InventoryError::NotFound);
        }
        match command {
            C::Create {
                sku,
                name,
                price_cents,
                initial_stock,
            } => {
                if self.created {
                    return Err(InventoryError::SkuExists);
                }
                if check_price(price_cents).is_err() {
                    return Err(InventoryError::InvalidPrice);
                }
                check_sku(&sku)?;
                check_item_name(&name)?;
                check_initial_stock(initial_stock)?;
                Ok(vec![E::ItemCreated {
                    sku,
                    name,
                    price_cents,
                    initial_stock,
                }])
            }
            C::Receive { quantity } => {
                if check_quantity("quantity", quantity).is_err() {
                    return Err(InventoryError::InvalidQuantity);
                }
                match self.on_hand.checked_add(quantity) {
                    Some(total) if total <= MAX_STOCK => {}
                    _ => {
                        return Err(InventoryError::StockLimit {
                            on_hand: self.on_hand,
                            requested: quantity,
                            max: MAX_STOCK,
                        })
                    }
                }
                Ok(vec![E::StockReceived { quantity }])
            }
            C::Reserve {
                reservation_id,
                quantity,
            } => {
                if check_quantity("quantity", quantity).is_err() {
                    return Err(InventoryError::InvalidQuantity);
                }
                if let Some(held) = self.open.get(&reservation_id) {
                    // Made before the item was discontinued: honoured, and its retry too.
                    return if *held == quantity {
                        Ok(vec![])
                    } else {
                        Err(InventoryError::ReservationMismatch(reservation_id))
                    };
                }
                match self.closed.get(&reservation_id) {
                    Some(Closed::Committed) => {
                        return Err(InventoryError::ReservationCommitted(reservation_id))
                    }
                    Some(Closed::Released) => {
                        return Err(InventoryError::ReservationReleased(reservation_id))
                    }
                    None => {}
                }
                if self.discontinued {
                    return Err(InventoryError::Discontinued(self.sku.clone()));
                }
                if self.available() < quantity {
                    return Err(InventoryError::InsufficientStock {
                        available: self.available(),
                        requested: quantity,
                    });
                }
                Ok(vec![E::StockReserved {
                    reservation_id,
                    quantity,
                }])
            }
            C::Release { reservation_id } => match self.open.get(&reservation_id) {
                Some(&quantity) => Ok(vec![E::ReservationReleased {
                    reservation_id,
                    quantity,
                }]),
                None => match self.closed.get(&reservation_id) {
                    Some(Closed::Committed) => {
                        Err(InventoryError::ReservationCommitted(reservation_id))
                    }
                    Some(Closed::Released) | None => Ok(vec![]),
                },
            },
            C::Commit { reservation_id } => match self.open.get(&reservation_id) {
                Some(&quantity) => Ok(vec![E::ReservationCommitted {
                    reservation_id,
                    quantity,
                }]),
                None => match self.closed.get(&reservation_id) {
                    Some(Closed::Committed) => Ok(vec![]),
                    Some(Closed::Released) => {
                        Err(InventoryError::ReservationReleased(reservation_id))
                    }
                    None => Err(InventoryError::UnknownReservation(reservation_id)),
                },
            },
            C::Change {
                name,
                price_cents,
                description,
            } => {
                let mut events = Vec::new();
                if let Some(name) = name {
                    check_item_name(&name)?;
                    if name != self.name {
                        events.push(E::ItemRenamed { name });
                    }
                }
                if let Some(price_cents) = price_cents {
                    if check_price(price_cents).is_err() {
                        return Err(InventoryError::InvalidPrice);
                    }
                    if price_cents != self.price_cents {
                        events.push(E::ItemRepriced { price_cents });
                    }
                }
                if let Some(description) = description {
                    check_description(&description)?;
                    if description != self.description {
                        events.push(E::ItemDescribed { description });
                    }
                }
                Ok(events)
            }
            C::Discontinue => {
                if self.discontinued {
                    return Err(InventoryError::Discontinued(self.sku.clone()));
                }
                Ok(vec![E::ItemDiscontinued {}])
            }
        }
    }
}

impl AggregateKind for InventoryItem {
    const CONTEXT: &'static str = "commerce";
}

chronicle_schemas::decided_aggregate!(InventoryItem: "inventory_item", InventoryCommand => InventoryEvent, InventoryError);

impl InventoryItem {
    fn apply_event(&mut self, event: InventoryEvent) {
        use InventoryEvent as E;
        match event {
            E::ItemCreated {
                sku,
                name,
                price_cents,
                initial_stock,
            } => {
                self.created = true;
                self.sku = sku;
                self.name = name;
                self.price_cents = price_cents;
                self.on_hand = initial_stock;
            }
            E::StockReceived { quantity } => self.on_hand = self.on_hand.saturating_add(quantity),
            E::StockReserved {
                reservation_id,
                quantity,
            } => {
                self.reserved = self.reserved.saturating_add(quantity);
                self.open.insert(reservation_id, quantity);
            }
            E::ReservationReleased {
                reservation_id,
                quantity,
            } => {
                self.reserved = self.reserved.saturating_sub(quantity);
                self.open.remove(&reservation_id);
                self.close(reservation_id, Closed::Released);
            }
            E::ReservationCommitted {
                reservation_id,
                quantity,
            } => {
                self.reserved = self.reserved.saturating_sub(quantity);
                self.on_hand = self.on_hand.saturating_sub(quantity);
                self.open.remove(&reservation_id);
                self.close(reservation_id, Closed::Committed);
            }
            E::ItemRenamed { name } => self.name = name,
            E::ItemRepriced { price_cents } => self.price_cents = price_cents,
            E::ItemDescribed { description } => self.description = description,
            E::ItemDiscontinued {} => self.discontinued = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use cqrs_es::Aggregate as _;
    use InventoryCommand as C;
    use InventoryEvent as E;

    type Given = TestFramework<InventoryItem>;

    fn created(stock: u64) -> E {
        E::ItemCreated {
            sku: "SKU-1".into(),
            name: "Widget".into(),
            price_cents: 1250,
            initial_stock: stock,
        }
    }

    fn reserved(id: &str, quantity: u64) -> E {
        E::StockReserved {
            reservation_id: id.into(),
            quantity,
        }
    }

    #[test]
    fn creating_a_new_item_records_its_opening_stock() {
        Given::with(())
            .given_no_previous_events()
            .when(C::Create {
                sku: "SKU-1".into(),
                name: "Widget".into(),
                price_cents: 1250,
                initial_stock: 10,
            })
            .then_expect_events(vec![created(10)]);
    }

    #[test]
    fn creating_an_item_twice_is_refused_as_sku_exists() {
        Given::with(())
            .given(vec![created(1)])
            .when(C::Create {
                sku: "SKU-1".into(),
                name: "Other".into(),
                price_cents: 1,
                initial_stock: 1,
            })
            .then_expect_error(InventoryError::SkuExists);
    }

    #[test]
    fn a_negative_price_is_refused() {
        Given::with(())
            .given_no_previous_events()
            .when(C::Create {
                sku: "SKU-1".into(),
                name: "Widget".into(),
                price_cents: -1,
                initial_stock: 0,
            })
            .then_expect_error(InventoryError::InvalidPrice);
    }

    #[test]
    fn commands_on_an_item_that_does_not_exist_are_not_found() {
        Given::with(())
            .given_no_previous_events()
            .when(C::Receive { quantity: 1 })
            .then_expect_error(InventoryError::NotFound);
        Given::with(())
            .given_no_previous_events()
            .when(C::Reserve {
                reservation_id: "o1".into(),
                quantity: 1,
            })
            .then_expect_error(InventoryError::NotFound);
    }

    #[test]
    fn receiving_stock_adds_to_on_hand_and_zero_is_refused() {
        Given::with(())
            .given(vec![created(0)])
            .when(C::Receive { quantity: 5 })
            .then_expect_events(vec![E::StockReceived { quantity: 5 }]);
        Given::with(())
            .given(vec![created(0)])
            .when(C::Receive { quantity: 0 })
            .then_expect_error(InventoryError::InvalidQuantity);
    }

    #[test]
    fn reserving_within_available_stock_succeeds() {
        Given::with(())
            .given(vec![created(3)])
            .when(C::Reserve {
                reservation_id: "o1".into(),
                quantity: 3,
            })
            .then_expect_events(vec![reserved("o1", 3)]);
    }

    #[test]
    fn reserving_more_than_available_is_refused_so_stock_never_goes_negative() {
        Given::with(())
            .given(vec![created(5), reserved("o1", 4)])
            .when(C::Reserve {
                reservation_id: "o2".into(),
                quantity: 2,
            })
            .then_expect_error(InventoryError::InsufficientStock {
                available: 1,
                requested: 2,
            });
    }

    #[test]
    fn repeating_a_reservation_is_a_no_op_but_changing_its_quantity_is_refused() {
        Given::with(())
            .given(vec![created(5), reserved("o1", 2)])
            .when(C::Reserve {
                reservation_id: "o1".into(),
                quantity: 2,
            })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![created(5), reserved("o1", 2)])
            .when(C::Reserve {
                reservation_id: "o1".into(),
                quantity: 3,
            })
            .then_expect_error(InventoryError::ReservationMismatch("o1".into()));
    }

    #[test]
    fn releasing_gives_the_units_back_once() {
        let released = E::ReservationReleased {
            reservation_id: "o1".into(),
            quantity: 2,
        };
        Given::with(())
            .given(vec![created(5), reserved("o1", 2)])
            .when(C::Release {
                reservation_id: "o1".into(),
            })
            .then_expect_events(vec![released.clone()]);
        Given::with(())
            .given(vec![created(5), reserved("o1", 2), released])
            .when(C::Release {
                reservation_id: "o1".into(),
            })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![created(5)])
            .when(C::Release {
                reservation_id: "never".into(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_released_reservation_cannot_be_reserved_again_or_committed() {
        let given = vec![
            created(5),
            reserved("o1", 2),
            E::ReservationReleased {
                reservation_id: "o1".into(),
                quantity: 2,
            },
        ];
        Given::with(())
            .given(given.clone())
            .when(C::Reserve {
                reservation_id: "o1".into(),
                quantity: 2,
            })
            .then_expect_error(InventoryError::ReservationReleased("o1".into()));
        Given::with(())
            .given(given)
            .when(C::Commit {
                reservation_id: "o1".into(),
            })
            .then_expect_error(InventoryError::ReservationReleased("o1".into()));
    }

    #[test]
    fn committing_removes_the_units_once_and_cannot_then_be_released() {
        let committed = E::ReservationCommitted {
            reservation_id: "o1".into(),
            quantity: 2,
        };
        Given::with(())
            .given(vec![created(5), reserved("o1", 2)])
            .when(C::Commit {
                reservation_id: "o1".into(),
            })
            .then_expect_events(vec![committed.clone()]);
        Given::with(())
            .given(vec![created(5), reserved("o1", 2), committed.clone()])
            .when(C::Commit {
                reservation_id: "o1".into(),
            })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![created(5), reserved("o1", 2), committed])
            .when(C::Release {
                reservation_id: "o1".into(),
            })
            .then_expect_error(InventoryError::ReservationCommitted("o1".into()));
        Given::with(())
            .given(vec![created(5)])
            .when(C::Commit {
                reservation_id: "nope".into(),
            })
            .then_expect_error(InventoryError::UnknownReservation("nope".into()));
    }

    #[test]
    fn state_tracks_on_hand_reserved_and_available() {
        let mut item = InventoryItem::default();
        for event in [
            created(10),
            reserved("o1", 3),
            reserved("o2", 2),
            E::ReservationCommitted {
                reservation_id: "o1".into(),
                quantity: 3,
            },
            E::ReservationReleased {
                reservation_id: "o2".into(),
                quantity: 2,
            },
            E::StockReceived { quantity: 4 },
        ] {
            item.apply(event);
        }
        assert_eq!(
            (item.on_hand(), item.reserved(), item.available()),
            (11, 0, 11)
        );
    }

    #[test]
    fn an_item_remembers_only_its_most_recent_settled_reservations() {
        let mut item = InventoryItem::default();
        item.apply(created(10));
        for n in 0..(MAX_CLOSED + 500) {
            let id = format!("o{n}");
            item.apply(reserved(&id, 1));
            item.apply(E::ReservationReleased {
                reservation_id: id,
                quantity: 1,
            });
        }
        assert_eq!(item.closed.len(), MAX_CLOSED);
        assert_eq!(item.closed_order.len(), MAX_CLOSED);
        assert!(!item.closed.contains_key("o0"), "the oldest are forgotten");
        // The recent ones still answer retries as before.
        let recent = format!("o{}", MAX_CLOSED + 499);
        assert_eq!(
            item.decide(C::Commit {
                reservation_id: recent.clone()
            }),
            Err(InventoryError::ReservationReleased(recent.clone()))
        );
        assert_eq!(
            item.decide(C::Release {
                reservation_id: recent
            }),
            Ok(vec![])
        );
    }

    fn change(name: Option<&str>, price_cents: Option<i64>, description: Option<&str>) -> C {
        C::Change {
            name: name.map(str::to_owned),
            price_cents,
            description: description.map(str::to_owned),
        }
    }

    #[test]
    fn a_change_records_only_the_fields_that_differ() {
        Given::with(())
            .given(vec![created(1)])
            .when(change(Some("Widget"), Some(990), Some("Blue, 3 cm")))
            .then_expect_events(vec![
                E::ItemRepriced { price_cents: 990 },
                E::ItemDescribed {
                    description: "Blue, 3 cm".into(),
                },
            ]);
        Given::with(())
            .given(vec![created(1)])
            .when(change(Some("Widget"), Some(1250), None))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_change_outside_the_limits_is_refused_whole() {
        for bad in [
            change(Some("Gadget"), Some(-1), None),
            change(Some(" "), None, None),
            change(None, None, Some(&"x".repeat(MAX_DESCRIPTION + 1))),
            change(None, None, Some("nul \u{0} inside")),
        ] {
            let refused = Given::with(())
                .given(vec![created(1)])
                .when(bad.clone())
                .inspect_result();
            assert!(refused.is_err(), "{bad:?} was taken");
        }
        Given::with(())
            .given(vec![created(1)])
            .when(change(None, None, Some(&"x".repeat(MAX_DESCRIPTION))))
            .then_expect_events(vec![E::ItemDescribed {
                description: "x".repeat(MAX_DESCRIPTION),
            }]);
    }

    #[test]
    fn a_discontinued_item_takes_no_new_reservation_but_honours_the_ones_it_has() {
        let discontinued = vec![created(10), reserved("o-1", 2), E::ItemDiscontinued {}];
        Given::with(())
            .given(discontinued.clone())
            .when(C::Reserve {
                reservation_id: "o-2".into(),
                quantity: 1,
            })
            .then_expect_error(InventoryError::Discontinued("SKU-1".into()));
        // The reservation made before, retried, and then fulfilled.
        Given::with(())
            .given(discontinued.clone())
            .when(C::Reserve {
                reservation_id: "o-1".into(),
                quantity: 2,
            })
            .then_expect_events(vec![]);
        Given::with(())
            .given(discontinued.clone())
            .when(C::Commit {
                reservation_id: "o-1".into(),
            })
            .then_expect_events(vec![E::ReservationCommitted {
                reservation_id: "o-1".into(),
                quantity: 2,
            }]);
        Given::with(())
            .given(discontinued)
            .when(C::Discontinue)
            .then_expect_error(InventoryError::Discontinued("SKU-1".into()));
    }

    #[test]
    fn a_snapshot_from_before_descriptions_reads_as_undescribed_and_on_sale() {
        let mut item = InventoryItem::default();
        item.apply(created(3));
        let mut old = serde_json::to_value(&item).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("description");
        fields.remove("discontinued");
        let read: InventoryItem = serde_json::from_value(old).unwrap();
        assert_eq!(read, item);
        assert!(!read.is_discontinued() && read.description().is_empty());
    }
}
