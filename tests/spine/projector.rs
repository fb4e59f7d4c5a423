//! Invariants 4 and 5: exactly-once effects in read models, and replay equivalence.

use std::time::Duration;

use chronicle_bus::{FaultAction, Faults};
use chronicle_commands::{CommandContext, CommandExecutor};
use chronicle_commerce::{InventoryCommand, InventoryItem};
use chronicle_projections::{inventory::InventoryProjection, replay};
use chronicle_tests::{eventually, TestDb, TestNats};
use sqlx::PgPool;

use crate::common::{
    bus, create_item, receive, start_inventory_projector, start_relay, stop_subscriber,
    wait_relayed, RunningSubscriber,
};

fn start_projector(
    pool: &PgPool,
    client: &async_nats::Client,
    faults: Faults,
) -> RunningSubscriber {
    start_inventory_projector(pool, client, |p| p.with_faults(faults))
}

/// A deterministic mix of receives, reserves, releases and commits over `items` SKUs.
async fn workload(bus: &CommandExecutor, items: usize, rounds: usize) {
    for i in 0..items {
        create_item(bus, &format!("SKU-{i:03}"), 5).await;
    }
    for r in 0..rounds {
        for i in 0..items {
            let sku = format!("SKU-{i:03}");
            let reservation = format!("r{r}");
            let commands = [
                InventoryCommand::Receive { quantity: 2 },
                InventoryCommand::Reserve {
                    reservation_id: reservation.clone(),
                    quantity: 3,
                },
                if r % 2 == 0 {
                    InventoryCommand::Commit {
                        reservation_id: reservation,
                    }
                } else {
                    InventoryCommand::Release {
                        reservation_id: reservation,
                    }
                },
            ];
            for c in commands {
                bus.execute::<InventoryItem>(&sku, c, &(), &CommandContext::new())
                    .await
                    .unwrap();
            }
        }
    }
}

/// Every read-model row, as JSON text in SKU order: what "byte for byte" compares.
async fn rows(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT row_to_json(i)::text FROM commerce.inventory_items i ORDER BY sku")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Waits until the read model reflects every aggregate's current version.
async fn caught_up(pool: &PgPool, bus: &CommandExecutor, items: usize) {
    eventually(
        "the projector to catch up",
        Duration::from_secs(30),
        || async {
            for i in 0..items {
                let sku = format!("SKU-{i:03}");
                let loaded = bus
                    .store_for::<InventoryItem>()
                    .load::<InventoryItem>(&sku)
                    .await
                    .unwrap();
                let row = chronicle_projections::inventory::get(pool, &sku)
                    .await
                    .unwrap()?;
                if row.version != loaded.version as i64 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

async fn assert_matches_aggregates(pool: &PgPool, bus: &CommandExecutor, items: usize) {
    for i in 0..items {
        let sku = format!("SKU-{i:03}");
        let agg = bus
            .store_for::<InventoryItem>()
            .load::<InventoryItem>(&sku)
            .await
            .unwrap();
        let row = chronicle_projections::inventory::get(pool, &sku)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (row.on_hand, row.reserved, row.available, row.version),
            (
                agg.state.on_hand() as i64,
                agg.state.reserved() as i64,
                agg.state.available() as i64,
                agg.version as i64
            ),
            "{sku}"
        );
    }
}

#[tokio::test]
async fn the_projector_builds_the_inventory_read_model_from_the_stream() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let pool = db
        .context_pool(chronicle_commands::contexts::COMMERCE)
        .await;
    let client = nats.client().await;
    let relay = start_relay(&pool, &client, Faults::default());
    let projector = start_projector(&pool, &client, Faults::default());
    let bus = bus(&pool);
    workload(&bus, 5, 3).await;
    caught_up(&pool, &bus, 5).await;
    assert_matches_aggregates(&pool, &bus, 5).await;
    stop_subscriber(projector).await;
    relay.stop().await;
}

async fn crash_and_restart_counts_nothing_twice(point: &str) {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let pool = db
        .context_pool(chronicle_commands::contexts::COMMERCE)
        .await;
    let client = nats.client().await;
    let bus = bus(&pool);
    let relay = start_relay(&pool, &client, Faults::default());
    // A backlog, so the projector's first batch holds many events.
    workload(&bus, 20, 2).await;
    wait_relayed(&pool, &client, 20 * 7).await;

    let faults = Faults::default();
    faults.arm(point, FaultAction::Crash);
    let (crashed, _stop) = start_projector(&pool, &client, faults);
    assert!(
        crashed.await.unwrap().is_err(),
        "the projector stopped at {point}"
    );

    let projector = start_projector(&pool, &client, Faults::default());
    caught_up(&pool, &bus, 20).await;
    assert_matches_aggregates(&pool, &bus, 20).await;
    // And it keeps going with new events.
    receive(&bus, "SKU-000", 4).await;
    caught_up(&pool, &bus, 20).await;
    assert_matches_aggregates(&pool, &bus, 20).await;
    stop_subscriber(projector).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_projector_killed_mid_batch_before_commit_restarts_without_double_counting() {
    crash_and_restart_counts_nothing_twice("projector.before_commit").await;
}

#[tokio::test]
async fn a_projector_killed_after_commit_before_ack_restarts_without_double_counting() {
    crash_and_restart_counts_nothing_twice("projector.after_commit").await;
}

#[tokio::test]
async fn replaying_the_log_rebuilds_the_same_rows_byte_for_byte_while_the_projector_runs() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let pool = db
        .context_pool(chronicle_commands::contexts::COMMERCE)
        .await;
    let client = nats.client().await;
    let bus = bus(&pool);
    let relay = start_relay(&pool, &client, Faults::default());
    let projector = start_projector(&pool, &client, Faults::default());
    workload(&bus, 10, 3).await;
    caught_up(&pool, &bus, 10).await;
    let live = rows(&pool).await;
    assert_eq!(live.len(), 10);

    // Damage the read model; replay must not care what is there.
    sqlx::query("UPDATE commerce.inventory_items SET on_hand = -1")
        .execute(&pool)
        .await
        .unwrap();
    let mut calls = 0;
    let stats = replay(&InventoryProjection, &pool, &client, 7, |done, total| {
        calls += 1;
        assert!(done <= total);
    })
    .await
    .unwrap();
    assert_eq!(stats.events, 10 * 10);
    assert!(calls > 1, "progress is reported per batch");
    assert_eq!(rows(&pool).await, live);

    // The live projector carries on on top of the swapped-in tables.
    receive(&bus, "SKU-003", 1).await;
    caught_up(&pool, &bus, 10).await;
    assert_matches_aggregates(&pool, &bus, 10).await;
    stop_subscriber(projector).await;
    relay.stop().await;
}
