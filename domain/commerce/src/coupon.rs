use std::collections::BTreeSet;

use chronicle_schemas::{commerce::CouponEvent, AggregateKind};
use serde::{Deserialize, Serialize};

/// What can be asked of a coupon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CouponCommand {
    Create {
        code: String,
        percent_off: u8,
        max_redemptions: u32,
    },
    /// Take one redemption for `order_id`. Repeating it for the same order is a no-op.
    Redeem { order_id: String },
    /// Give back `order_id`'s redemption (its order was rejected or cancelled). A no-op when
    /// the order holds none.
    Release { order_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    #[error("a coupon with this code already exists")]
    CouponExists,
    #[error("no coupon with this code exists")]
    NotFound,
    #[error("a coupon code is 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'")]
    InvalidCode,
    #[error("a coupon takes 1 to 100 percent off")]
    InvalidPercent,
    #[error("a coupon allows at least one redemption")]
    InvalidMaxRedemptions,
    #[error("the coupon has no redemptions left")]
    Exhausted,
}

chronicle_schemas::domain_rules!(CouponError {
    Self::CouponExists => Conflict("coupon_exists"),
    Self::NotFound => NotFound,
    Self::InvalidCode => Invalid("code"),
    Self::InvalidPercent => Invalid("percent_off"),
    Self::InvalidMaxRedemptions => Invalid("max_redemptions"),
    Self::Exhausted => Conflict("coupon_exhausted"),
});

/// A discount code that may be redeemed at most `max_redemptions` times, once per order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    created: bool,
    code: String,
    percent_off: u8,
    max_redemptions: u32,
    redeemed_by: BTreeSet<String>,
}

impl Coupon {
    pub fn exists(&self) -> bool {
        self.created
    }
    pub fn code(&self) -> &str {
        &self.code
    }
    pub fn percent_off(&self) -> u8 {
        self.percent_off
    }
    pub fn max_redemptions(&self) -> u32 {
        self.max_redemptions
    }
    pub fn redemptions(&self) -> u32 {
        self.redeemed_by.len() as u32
    }
    pub fn is_exhausted(&self) -> bool {
        self.redemptions() >= self.max_redemptions
    }

    fn decide(&self, command: CouponCommand) -> Result<Vec<CouponEvent>, CouponError> {
        use CouponCommand as C;
        use CouponEvent as E;
        if !self.created && !matches!(command, C::Create { .. }) {
            return Err(CouponError::NotFound);
        }
        match command {
            C::Create {
                code,
                percent_off,
                max_redemptions,
            } => {
                if self.created {
                    return Err(CouponError::CouponExists);
                }
                if !(1..=100).contains(&percent_off) {
                    return Err(CouponError::InvalidPercent);
                }
                if max_redemptions == 0 {
                    return Err(CouponError::InvalidMaxRedemptions);
                }
                if crate::inventory::check_sku(&code).is_err() {
                    return Err(CouponError::InvalidCode);
                }
                Ok(vec![E::CouponCreated {
                    code,
                    percent_off,
                    max_redemptions,
                }])
            }
            C::Redeem { order_id } => {
                if self.redeemed_by.contains(&order_id) {
                    Ok(vec![])
                } else if self.is_exhausted() {
                    Err(CouponError::Exhausted)
                } else {
                    Ok(vec![E::CouponRedeemed { order_id }])
                }
            }
            C::Release { order_id } => Ok(if self.redeemed_by.contains(&order_id) {
                vec![E::RedemptionReleased { order_id }]
            } else {
                vec![]
            }),
        }
    }
}

impl AggregateKind for Coupon {
    const CONTEXT: &'static str = "commerce";
}

chronicle_schemas::decided_aggregate!(Coupon: "coupon", CouponCommand => CouponEvent, CouponError);

impl Coupon {
    fn apply_event(&mut self, event: CouponEvent) {
        match event {
            CouponEvent::CouponCreated {
                code,
                percent_off,
                max_redemptions,
            } => {
                self.created = true;
                self.code = code;
                self.percent_off = percent_off;
                self.max_redemptions = max_redemptions;
            }
            CouponEvent::CouponRedeemed { order_id } => {
                self.redeemed_by.insert(order_id);
            }
            CouponEvent::RedemptionReleased { order_id } => {
                self.redeemed_by.remove(&order_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use CouponCommand as C;
    use CouponEvent as E;

    type Given = TestFramework<Coupon>;

    fn created(max: u32) -> E {
        E::CouponCreated {
            code: "SPRING".into(),
            percent_off: 15,
            max_redemptions: max,
        }
    }

    fn redeemed(order: &str) -> E {
        E::CouponRedeemed {
            order_id: order.into(),
        }
    }

    #[test]
    fn a_coupon_is_created_once_with_sane_terms() {
        Given::with(())
            .given_no_previous_events()
            .when(C::Create {
                code: "SPRING".into(),
                percent_off: 15,
                max_redemptions: 3,
            })
            .then_expect_events(vec![created(3)]);
        Given::with(())
            .given(vec![created(3)])
            .when(C::Create {
                code: "SPRING".into(),
                percent_off: 15,
                max_redemptions: 3,
            })
            .then_expect_error(CouponError::CouponExists);
        Given::with(())
            .given_no_previous_events()
            .when(C::Create {
                code: "X".into(),
                percent_off: 101,
                max_redemptions: 3,
            })
            .then_expect_error(CouponError::InvalidPercent);
        Given::with(())
            .given_no_previous_events()
            .when(C::Create {
                code: "X".into(),
                percent_off: 5,
                max_redemptions: 0,
            })
            .then_expect_error(CouponError::InvalidMaxRedemptions);
    }

    #[test]
    fn redemptions_stop_at_the_maximum() {
        Given::with(())
            .given(vec![created(2), redeemed("o-1")])
            .when(C::Redeem {
                order_id: "o-2".into(),
            })
            .then_expect_events(vec![redeemed("o-2")]);
        Given::with(())
            .given(vec![created(2), redeemed("o-1"), redeemed("o-2")])
            .when(C::Redeem {
                order_id: "o-3".into(),
            })
            .then_expect_error(CouponError::Exhausted);
    }

    #[test]
    fn redeeming_again_for_the_same_order_changes_nothing_even_when_exhausted() {
        Given::with(())
            .given(vec![created(1), redeemed("o-1")])
            .when(C::Redeem {
                order_id: "o-1".into(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_released_redemption_can_be_taken_by_another_order_and_release_is_idempotent() {
        let released = E::RedemptionReleased {
            order_id: "o-1".into(),
        };
        Given::with(())
            .given(vec![created(1), redeemed("o-1")])
            .when(C::Release {
                order_id: "o-1".into(),
            })
            .then_expect_events(vec![released.clone()]);
        Given::with(())
            .given(vec![created(1), redeemed("o-1"), released.clone()])
            .when(C::Release {
                order_id: "o-1".into(),
            })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![created(1), redeemed("o-1"), released])
            .when(C::Redeem {
                order_id: "o-2".into(),
            })
            .then_expect_events(vec![redeemed("o-2")]);
    }

    #[test]
    fn an_unknown_coupon_is_not_found() {
        Given::with(())
            .given_no_previous_events()
            .when(C::Redeem {
                order_id: "o-1".into(),
            })
            .then_expect_error(CouponError::NotFound);
    }
}
