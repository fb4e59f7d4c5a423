//! A customer's cart: lines of SKUs and quantities, at most [`MAX_CART_LINES`] of them.
//!
//! It holds no prices: what a line costs is the item's price when the cart is read or
//! checked out (the API contract, "Catalog edits and the cart"). Whether a SKU exists and is still on
//! sale is the item's to say; the route asks it before it sets a line.

use std::collections::BTreeMap;

use chronicle_schemas::{
    commerce::{CartEvent, CartLine},
    limits::Invalid,
    AggregateKind,
};
use serde::{Deserialize, Serialize};

use crate::inventory::{check_quantity, check_sku};

/// Most lines a cart holds.
pub const MAX_CART_LINES: usize = 100;

/// What can be asked of a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CartCommand {
    /// The line of `sku` holds `quantity` (1 to 1,000,000) from now on.
    SetLine { sku: String, quantity: u64 },
    /// Take the line of `sku` out; a line that is not there changes nothing.
    RemoveLine { sku: String },
    /// Take every line out; an empty cart changes nothing.
    Empty,
    /// The cart becomes the order `order_id` and is empty again. Run together with the
    /// order's placement, in one transaction (`CommandExecutor::execute_together`).
    CheckOut { order_id: String },
    /// Count the cart as abandoned: sent by the cart sweeper for a cart with lines left
    /// untouched for `CHRONICLE_CART_ABANDONED_AFTER`, with the version it saw untouched
    /// as the expected version. An empty cart, or one already counted, changes nothing.
    MarkAbandoned,
}

/// Why a cart command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    #[error("a cart holds at most {MAX_CART_LINES} lines")]
    Full,
    #[error("the cart is empty: there is nothing to check out")]
    Empty,
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

chronicle_schemas::domain_rules!(CartError {
    Self::Full => Conflict("cart_full"),
    Self::Empty => Conflict("cart_empty"),
    Self::Invalid(invalid) => Invalid(invalid),
});

/// One customer's cart: quantity by SKU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    lines: BTreeMap<String, u64>,
    /// Counted as abandoned since it was last touched.
    #[serde(default)]
    abandoned: bool,
}

impl Cart {
    /// Quantity by SKU, in SKU order.
    pub fn lines(&self) -> &BTreeMap<String, u64> {
        &self.lines
    }

    fn decide(&self, command: CartCommand) -> Result<Vec<CartEvent>, CartError> {
        use CartCommand as C;
        use CartEvent as E;
        Ok(match command {
            C::SetLine { sku, quantity } => {
                check_sku(&sku)?;
                check_quantity("quantity", quantity)?;
                match self.lines.get(&sku) {
                    Some(held) if *held == quantity => vec![],
                    None if self.lines.len() >= MAX_CART_LINES => return Err(CartError::Full),
                    _ => vec![E::LineSet { sku, quantity }],
                }
            }
            C::RemoveLine { sku } => {
                if self.lines.contains_key(&sku) {
                    vec![E::LineRemoved { sku }]
                } else {
                    vec![]
                }
            }
            C::Empty => {
                if self.lines.is_empty() {
                    vec![]
                } else {
                    vec![E::CartEmptied {}]
                }
            }
            C::CheckOut { order_id } => {
                if self.lines.is_empty() {
                    return Err(CartError::Empty);
                }
                let lines = self
                    .lines
                    .iter()
                    .map(|(sku, quantity)| CartLine {
                        sku: sku.clone(),
                        quantity: *quantity,
                    })
                    .collect();
                vec![E::CheckedOut { order_id, lines }]
            }
            C::MarkAbandoned => {
                if self.lines.is_empty() || self.abandoned {
                    vec![]
                } else {
                    vec![E::CartAbandoned {
                        lines: self.lines.len() as u64,
                    }]
                }
            }
        })
    }
}

impl AggregateKind for Cart {
    const CONTEXT: &'static str = "commerce";
}

chronicle_schemas::decided_aggregate!(Cart: "cart", CartCommand => CartEvent, CartError);

impl Cart {
    fn apply_event(&mut self, event: CartEvent) {
        // Every change of the lines is a touch: the cart may be abandoned again later.
        self.abandoned = false;
        match event {
            CartEvent::LineSet { sku, quantity } => {
                self.lines.insert(sku, quantity);
            }
            CartEvent::LineRemoved { sku } => {
                self.lines.remove(&sku);
            }
            CartEvent::CartEmptied {} | CartEvent::CheckedOut { .. } => self.lines.clear(),
            CartEvent::CartAbandoned { .. } => self.abandoned = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use CartCommand as C;
    use CartEvent as E;

    type Given = TestFramework<Cart>;

    fn set(sku: &str, quantity: u64) -> C {
        C::SetLine {
            sku: sku.into(),
            quantity,
        }
    }

    fn line(sku: &str, quantity: u64) -> E {
        E::LineSet {
            sku: sku.into(),
            quantity,
        }
    }

    #[test]
    fn a_line_is_set_changed_and_only_recorded_when_it_differs() {
        Given::with(())
            .given_no_previous_events()
            .when(set("A-1", 2))
            .then_expect_events(vec![line("A-1", 2)]);
        Given::with(())
            .given(vec![line("A-1", 2)])
            .when(set("A-1", 5))
            .then_expect_events(vec![line("A-1", 5)]);
        Given::with(())
            .given(vec![line("A-1", 2)])
            .when(set("A-1", 2))
            .then_expect_events(vec![]);
    }

    #[test]
    fn quantities_and_skus_outside_the_limits_are_refused() {
        for (command, field) in [
            (set("A-1", 0), "quantity"),
            (set("A-1", 1_000_001), "quantity"),
            (set("A 1", 1), "sku"),
            (set("", 1), "sku"),
        ] {
            let refused = Given::with(())
                .given_no_previous_events()
                .when(command.clone())
                .inspect_result();
            match refused {
                Err(CartError::Invalid(invalid)) => assert_eq!(invalid.field, field),
                other => panic!("{command:?}: {other:?}"),
            }
        }
        Given::with(())
            .given_no_previous_events()
            .when(set("A-1", 1_000_000))
            .then_expect_events(vec![line("A-1", 1_000_000)]);
    }

    #[test]
    fn the_hundred_and_first_line_is_refused_but_a_held_one_still_changes() {
        let full: Vec<E> = (0..MAX_CART_LINES)
            .map(|i| line(&format!("S-{i}"), 1))
            .collect();
        Given::with(())
            .given(full.clone())
            .when(set("S-NEW", 1))
            .then_expect_error(CartError::Full);
        Given::with(())
            .given(full)
            .when(set("S-7", 3))
            .then_expect_events(vec![line("S-7", 3)]);
    }

    #[test]
    fn checking_out_records_the_lines_and_empties_the_cart_and_an_empty_cart_is_refused() {
        Given::with(())
            .given(vec![line("B-2", 1), line("A-1", 3)])
            .when(C::CheckOut {
                order_id: "o-1".into(),
            })
            .then_expect_events(vec![E::CheckedOut {
                order_id: "o-1".into(),
                lines: vec![
                    CartLine {
                        sku: "A-1".into(),
                        quantity: 3,
                    },
                    CartLine {
                        sku: "B-2".into(),
                        quantity: 1,
                    },
                ],
            }]);
        let checked_out = E::CheckedOut {
            order_id: "o-1".into(),
            lines: vec![CartLine {
                sku: "A-1".into(),
                quantity: 3,
            }],
        };
        Given::with(())
            .given(vec![line("A-1", 3), checked_out])
            .when(C::CheckOut {
                order_id: "o-2".into(),
            })
            .then_expect_error(CartError::Empty);
    }

    #[test]
    fn a_cart_with_lines_is_abandoned_once_until_it_is_touched_again() {
        let abandoned = E::CartAbandoned { lines: 2 };
        Given::with(())
            .given(vec![line("A-1", 2), line("B-2", 1)])
            .when(C::MarkAbandoned)
            .then_expect_events(vec![abandoned.clone()]);
        Given::with(())
            .given(vec![line("A-1", 2), line("B-2", 1), abandoned.clone()])
            .when(C::MarkAbandoned)
            .then_expect_events(vec![]);
        // Touched after it was counted: it may be abandoned again, with what it holds now.
        Given::with(())
            .given(vec![
                line("A-1", 2),
                line("B-2", 1),
                abandoned,
                E::LineRemoved { sku: "B-2".into() },
            ])
            .when(C::MarkAbandoned)
            .then_expect_events(vec![E::CartAbandoned { lines: 1 }]);
        // Nothing in it: nothing to abandon.
        Given::with(())
            .given_no_previous_events()
            .when(C::MarkAbandoned)
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![line("A-1", 2), E::CartEmptied {}])
            .when(C::MarkAbandoned)
            .then_expect_events(vec![]);
    }

    #[test]
    fn removing_or_emptying_what_is_not_there_changes_nothing() {
        Given::with(())
            .given(vec![line("A-1", 2)])
            .when(C::RemoveLine { sku: "B-2".into() })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![line("A-1", 2)])
            .when(C::RemoveLine { sku: "A-1".into() })
            .then_expect_events(vec![E::LineRemoved { sku: "A-1".into() }]);
        Given::with(())
            .given_no_previous_events()
            .when(C::Empty)
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![line("A-1", 2), line("B-2", 1)])
            .when(C::Empty)
            .then_expect_events(vec![E::CartEmptied {}]);
    }
}
