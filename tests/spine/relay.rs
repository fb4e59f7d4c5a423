//! Invariant 2: every committed event reaches JetStream exactly once, in per-aggregate
//! order, whatever crashes in between.

use std::collections::HashMap;

use chronicle_bus::{FaultAction, Faults};
use chronicle_schemas::Envelope;
use chronicle_tests::{TestDb, TestNats};

use crate::common::{bus, count, create_item, receive, start_relay, stream_contents, wait_relayed};

/// Asserts that `events` holds, for each aggregate, sequences 1..=n exactly once and in order.
fn assert_exactly_once_in_order(events: &[Envelope], expected: &HashMap<String, u64>) {
    let mut seen: HashMap<String, u64> = HashMap::new();
    for e in events {
        let last = seen.entry(e.aggregate_id.clone()).or_insert(0);
        assert_eq!(
            e.sequence,
            *last + 1,
            "{} out of order or duplicated",
            e.message_id()
        );
        *last = e.sequence;
    }
    assert_eq!(&seen, expected);
}

#[tokio::test]
async fn every_committed_event_reaches_jetstream_once_in_aggregate_order() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let pool = db.pool().await;
    let client = nats.client().await;
    let relay = start_relay(&pool, &client, Faults::default());
    let bus = bus(&pool);
    let mut expected = HashMap::new();
    let writers = (0..8).map(|i| {
        let bus = bus.clone();
        tokio::spawn(async move {
            let sku = format!("SKU-{i}");
            create_item(&bus, &sku, 0).await;
            for _ in 0..12 {
                receive(&bus, &sku, 1).await;
            }
        })
    });
    for w in futures::future::join_all(writers).await {
        w.unwrap();
    }
    for i in 0..8 {
        expected.insert(format!("SKU-{i}"), 13);
    }
    wait_relayed(&pool, &client, 8 * 13).await;
    let events = stream_contents(&client).await;
    assert_eq!(events.len(), 8 * 13);
    assert_exactly_once_in_order(&events, &expected);
    // The envelope carries what integrators rely on.
    let first = events.iter().find(|e| e.aggregate_id == "SKU-0").unwrap();
    assert_eq!(first.event_type, "ItemCreated");
    assert_eq!(first.context, "commerce");
    assert_eq!(first.payload["initial_stock"], 0);
    relay.stop().await;
}

#[tokio::test]
async fn a_relay_killed_between_publish_and_outbox_delete_duplicates_nothing_after_restart() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let pool = db.pool().await;
    let client = nats.client().await;
    let bus = bus(&pool);
    for i in 0..5 {
        create_item(&bus, &format!("SKU-{i}"), 1).await;
        receive(&bus, &format!("SKU-{i}"), 1).await;
    }
    let faults = Faults::default();
    faults.arm("relay.after_publish", FaultAction::Crash);
    let crashed = start_relay(&pool, &client, faults);
    let outcome = crashed.handle.await.unwrap();
    assert!(outcome.is_err(), "the relay stopped at the fault point");
    // The batch is in the stream, and its rows are still in the outbox.
    assert_eq!(stream_contents(&client).await.len(), 10);
    assert_eq!(count(&pool, "outbox").await, 10);

    // More commits while no relay runs, then a fresh relay.
    receive(&bus, "SKU-0", 1).await;
    let relay = start_relay(&pool, &client, Faults::default());
    wait_relayed(&pool, &client, 11).await;
    let events = stream_contents(&client).await;
    let mut expected: HashMap<String, u64> = (0..5).map(|i| (format!("SKU-{i}"), 2)).collect();
    expected.insert("SKU-0".into(), 3);
    assert_exactly_once_in_order(&events, &expected);
    relay.stop().await;
}

#[tokio::test]
async fn events_committed_while_nats_is_down_arrive_once_after_it_restarts() {
    let (db, mut nats) = (TestDb::new().await, TestNats::start());
    let pool = db.pool().await;
    let client = chronicle_bus::connect(&nats.url()).await.unwrap();
    let relay = start_relay(&pool, &client, Faults::default());
    let bus = bus(&pool);
    create_item(&bus, "SKU-1", 0).await;
    wait_relayed(&pool, &client, 1).await;

    nats.server.kill();
    for _ in 0..5 {
        receive(&bus, "SKU-1", 1).await;
    }
    assert_eq!(
        count(&pool, "outbox").await,
        5,
        "nothing is lost while NATS is away"
    );
    nats.server
        .restart()
        .expect("nats-server restarts on its port and store");

    wait_relayed(&pool, &client, 6).await;
    let events = stream_contents(&client).await;
    assert_exactly_once_in_order(&events, &HashMap::from([("SKU-1".to_string(), 6)]));
    relay.stop().await;
}

#[tokio::test]
async fn two_relays_running_at_once_still_publish_each_event_once() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let pool = db.pool().await;
    let client = nats.client().await;
    let first = start_relay(&pool, &client, Faults::default());
    let second = start_relay(&pool, &client, Faults::default());
    let bus = bus(&pool);
    for i in 0..4 {
        create_item(&bus, &format!("SKU-{i}"), 0).await;
        for _ in 0..5 {
            receive(&bus, &format!("SKU-{i}"), 1).await;
        }
    }
    wait_relayed(&pool, &client, 24).await;
    // Stopping the active one hands over to the standby.
    first.stop().await;
    receive(&bus, "SKU-0", 1).await;
    wait_relayed(&pool, &client, 25).await;
    let events = stream_contents(&client).await;
    let mut expected: HashMap<String, u64> = (0..4).map(|i| (format!("SKU-{i}"), 6)).collect();
    expected.insert("SKU-0".into(), 7);
    assert_exactly_once_in_order(&events, &expected);
    second.stop().await;
}
