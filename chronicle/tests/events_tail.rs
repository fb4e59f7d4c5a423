//! `chronicle events tail` against a real stream: it shows committed events in order from a
//! sequence, filtered by subject, skips nothing, and a message that is not an envelope does
//! not stop it.

mod common;

use std::process::Command;

use chronicle_commands::CommandContext;
use chronicle_commerce::{InventoryCommand, InventoryItem};
use chronicle_tests::{eventually, TestDb, TestNats};
use common::Running;
use serde_json::Value;

#[tokio::test]
async fn tail_prints_the_log_from_a_sequence_filtered_by_subject() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    // The relay, as a process, puts what the store commits into the stream.
    let relay = Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .arg("relay")
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats.url())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("the chronicle binary starts");
    let _relay = Running(Some(relay));
    let bus = db.executor().await;
    for sku in ["T-1", "T-2"] {
        bus.execute::<InventoryItem>(
            sku,
            InventoryCommand::Create {
                sku: sku.into(),
                name: format!("Item {sku}"),
                price_cents: 100,
                initial_stock: 5,
            },
            &(),
            &CommandContext::new(),
        )
        .await
        .unwrap();
    }
    bus.execute::<InventoryItem>(
        "T-1",
        InventoryCommand::Receive { quantity: 3 },
        &(),
        &CommandContext::new(),
    )
    .await
    .unwrap();
    // A message that is not an envelope, on a subject the filter takes.
    let js = async_nats::jetstream::new(nats.client().await);
    eventually(
        "the three events in the stream",
        std::time::Duration::from_secs(20),
        || async {
            let info = js.get_stream("EVENTS").await.ok()?.get_info().await.ok()?;
            (info.state.last_sequence >= 3).then_some(())
        },
    )
    .await;
    js.publish(
        "events.commerce.inventory_item.junk".to_owned(),
        "junk".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let tail = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_chronicle"))
            .args(["events", "tail"])
            .args(args)
            .env("NATS_URL", nats.url())
            .env("RUST_LOG", "warn")
            .output()
            .expect("chronicle events tail runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let json = tail(&["--from", "1", "--count", "4", "--json"]);
    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| l["stream_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let events: Vec<(&str, &str)> = lines[..3]
        .iter()
        .map(|l| {
            (
                l["envelope"]["aggregate_id"].as_str().unwrap(),
                l["envelope"]["event_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("T-1", "ItemCreated"),
            ("T-2", "ItemCreated"),
            ("T-1", "StockReceived")
        ]
    );
    assert!(lines[3]["error"]
        .as_str()
        .unwrap()
        .contains("not an event envelope"));

    // Text, one aggregate's subject, from the start.
    let text = tail(&[
        "--from",
        "1",
        "--count",
        "2",
        "--subject",
        "events.commerce.inventory_item.T-1",
    ]);
    let heads: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(heads.len(), 2, "{text}");
    assert!(
        heads[0].starts_with("#1 ") && heads[0].contains("ItemCreated v1 inventory_item/T-1#1"),
        "{text}"
    );
    assert!(
        heads[1].starts_with("#3 ") && heads[1].contains("StockReceived v1 inventory_item/T-1#2"),
        "{text}"
    );
    assert!(text.contains(r#"{"quantity":3}"#), "{text}");
}
