//! Random command sequences with extreme values against the commerce aggregates: no panic,
//! no broken invariant, and every event accepted can be projected (architecture.md invariant 7).

use chronicle_commerce::{
    AppliedCoupon, Canceller, Coupon, CouponCommand, InventoryCommand, InventoryItem, Order,
    OrderCommand, OrderLine,
};
use chronicle_schemas::{
    limits::{MAX_CENTS, MAX_QUANTITY, MAX_STOCK},
    testing::{execute, hostile_text, projectable},
};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    hostile_text(&["SKU-1"], 300)
}

fn unsigned() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        0..1_000u64,
        Just(MAX_QUANTITY),
        Just(MAX_QUANTITY + 1),
        Just(MAX_STOCK),
        Just(MAX_STOCK + 1),
        Just(i64::MAX as u64),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn signed() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(-1),
        0..10_000i64,
        Just(MAX_CENTS),
        Just(MAX_CENTS + 1),
        Just(i64::MAX),
        Just(i64::MIN),
        any::<i64>(),
    ]
}

fn reservation() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("r1".to_owned()),
        Just("r2".to_owned()),
        Just("r3".to_owned())
    ]
}

fn inventory_command() -> impl Strategy<Value = InventoryCommand> {
    prop_oneof![
        (text(), text(), signed(), unsigned()).prop_map(
            |(sku, name, price_cents, initial_stock)| {
                InventoryCommand::Create {
                    sku,
                    name,
                    price_cents,
                    initial_stock,
                }
            }
        ),
        // A valid creation now and then, so the other commands meet an item.
        (unsigned(), signed()).prop_map(|(initial_stock, price_cents)| InventoryCommand::Create {
            sku: "SKU-1".into(),
            name: "Widget".into(),
            price_cents: price_cents.rem_euclid(MAX_CENTS),
            initial_stock: initial_stock % (MAX_STOCK + 1),
        }),
        unsigned().prop_map(|quantity| InventoryCommand::Receive { quantity }),
        (reservation(), unsigned()).prop_map(|(reservation_id, quantity)| {
            InventoryCommand::Reserve {
                reservation_id,
                quantity,
            }
        }),
        reservation().prop_map(|reservation_id| InventoryCommand::Release { reservation_id }),
        reservation().prop_map(|reservation_id| InventoryCommand::Commit { reservation_id }),
        (
            proptest::option::of(text()),
            proptest::option::of(signed()),
            proptest::option::of(text()),
        )
            .prop_map(
                |(name, price_cents, description)| InventoryCommand::Change {
                    name,
                    price_cents,
                    description,
                }
            ),
        Just(InventoryCommand::Discontinue),
    ]
}

fn assert_projectable<E: serde::Serialize>(events: &[E]) -> Result<(), TestCaseError> {
    for event in events {
        let json = serde_json::to_value(event).expect("events serialize");
        prop_assert!(
            projectable(&json).is_ok(),
            "{json}: {:?}",
            projectable(&json)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn inventory_never_overflows_and_only_emits_projectable_events(
        commands in proptest::collection::vec(inventory_command(), 1..40)
    ) {
        let mut item = InventoryItem::default();
        let mut log = Vec::new();
        for command in commands {
            if let Ok(events) = execute(&mut item, command, &()) {
                assert_projectable(&events)?;
                log.extend(events);
            }
            prop_assert!(item.on_hand() <= MAX_STOCK);
            prop_assert!(item.reserved() <= item.on_hand());
            prop_assert_eq!(item.available(), item.on_hand() - item.reserved());
        }
        // The same events, applied again from nothing, give the same state.
        let mut replayed = InventoryItem::default();
        for event in log {
            cqrs_es::Aggregate::apply(&mut replayed, event);
        }
        prop_assert_eq!(replayed, item);
    }

    #[test]
    fn coupons_are_never_redeemed_past_their_maximum(
        code in text(),
        percent_off in any::<u8>(),
        max_redemptions in prop_oneof![Just(0u32), Just(1), 1..5u32, Just(u32::MAX)],
        orders in proptest::collection::vec((any::<bool>(), 0..8u8), 0..40),
    ) {
        let mut coupon = Coupon::default();
        let created = execute(&mut coupon, CouponCommand::Create { code, percent_off, max_redemptions }, &());
        if let Ok(events) = &created {
            assert_projectable(events)?;
        }
        for (redeem, order) in orders {
            let order_id = format!("order-{order}");
            let command = if redeem {
                CouponCommand::Redeem { order_id }
            } else {
                CouponCommand::Release { order_id }
            };
            if let Ok(events) = execute(&mut coupon, command, &()) {
                assert_projectable(&events)?;
            }
            prop_assert!(coupon.redemptions() <= coupon.max_redemptions());
        }
    }

    #[test]
    fn orders_never_overflow_their_totals(
        lines in proptest::collection::vec((text(), unsigned(), signed()), 0..6),
        percent_off in proptest::option::of(any::<u8>()),
        steps in proptest::collection::vec((0..9u8, text(), signed()), 0..16),
    ) {
        let mut order = Order::default();
        let place = OrderCommand::Place {
            order_id: "o1".into(),
            customer_id: "c1".into(),
            lines: lines
                .into_iter()
                .map(|(sku, quantity, unit_price_cents)| OrderLine { sku, quantity, unit_price_cents })
                .collect(),
            coupon: percent_off.map(|percent_off| AppliedCoupon { code: "C".into(), percent_off }),
        };
        if let Ok(events) = execute(&mut order, place, &()) {
            assert_projectable(&events)?;
            prop_assert!((0..=i64::MAX).contains(&order.total_cents()));
        }
        for (step, text, amount_cents) in steps {
            let command = match step {
                0 => OrderCommand::ConfirmReserved,
                1 => OrderCommand::Reject { reason: text },
                2 => OrderCommand::Pay { by: "c1".into(), amount_cents },
                3 => OrderCommand::Ship { by: "c1".into() },
                4 => OrderCommand::RecordCharge { payment_id: text, amount_cents },
                5 => OrderCommand::RecordLateCharge { payment_id: text, amount_cents },
                6 => OrderCommand::RecordPaymentFailure { reason: text },
                7 => OrderCommand::RecordRefund { refund_id: text, amount_cents },
                _ => OrderCommand::Cancel { by: Canceller::Customer("c1".into()) },
            };
            if let Ok(events) = execute(&mut order, command, &()) {
                assert_projectable(&events)?;
            }
            prop_assert!(order.total_cents() >= 0);
            prop_assert!(order.refunded_cents() <= order.charged_cents(), "never refunds more than it took");
        }
    }
}
