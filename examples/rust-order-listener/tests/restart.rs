//! The integration examples, Rust and Python, against a real nats-server: each follows the
//! order events on its own durable consumer, is killed at the worst moment (its work done,
//! the ack not sent), restarted, and in the end has handled every order event exactly once,
//! in stream order, and nothing else.

use std::{
    path::Path,
    process::{Child, Command},
    time::Duration,
};

use async_nats::jetstream;
use chronicle_tests::{eventually, TestNats};
use serde_json::json;

/// A child process killed when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Publishes `n` order events (as the relay would) and one event of another context.
async fn publish(js: &jetstream::Context, from: u64, n: u64) {
    for i in from..from + n {
        let order = format!("order-{}", i / 2);
        let envelope = json!({
            "event_id": uuid::Uuid::now_v7(), "event_type": "OrderPlaced", "event_version": "1",
            "context": "commerce", "aggregate_type": "order", "aggregate_id": order,
            "sequence": i % 2 + 1, "recorded_at": "2026-12-02T12:00:00Z",
            "correlation_id": uuid::Uuid::now_v7(), "payload": {"total_cents": i * 100},
        });
        js.publish(
            format!("events.commerce.order.{order}"),
            serde_json::to_vec(&envelope).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    js.publish("events.identity.user.u1".to_owned(), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("handled.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn settled(js: &jetstream::Context, durable: &str) {
    eventually(
        &format!("{durable} to have acknowledged everything"),
        Duration::from_secs(30),
        || async {
            let mut consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config> =
                js.get_consumer_from_stream(durable, "EVENTS").await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
}

async fn survives_a_crash_between_work_and_ack(command: impl Fn(&Path) -> Command, durable: &str) {
    let nats = TestNats::start();
    let client = nats.client().await;
    let js = jetstream::new(client);
    chronicle_bus::ensure_events_stream(&js).await.unwrap();
    publish(&js, 0, 5).await;
    // Junk on an order subject: not an envelope, skipped once.
    js.publish("events.commerce.order.junk".to_owned(), "junk".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let state = tempfile::tempdir().unwrap();

    // Killed after the third event's work, before its ack.
    let mut first = command(state.path());
    first
        .env("NATS_URL", nats.url())
        .env("ORDER_LISTENER_CRASH_AFTER", "3");
    let mut child = first.spawn().expect("the listener starts");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(17), "it crashed where it was told to");
    assert_eq!(lines(state.path()).len(), 3);

    // More events while it is down, then a restart.
    publish(&js, 5, 3).await;
    let mut again = command(state.path());
    again.env("NATS_URL", nats.url());
    let _running = Running(again.spawn().expect("the listener starts again"));
    for _ in 0..300 {
        if lines(state.path()).len() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lines(state.path()).len() >= 8,
        "handled: {:?}",
        lines(state.path())
    );
    // Past the redelivery of the message whose ack the crash lost.
    settled(&js, durable).await;
    let handled = lines(state.path());
    let seqs: Vec<u64> = handled
        .iter()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    // Stream: orders 1-5, a user event (6), junk (7), orders 8-10, a user event (11).
    assert_eq!(seqs, [1, 2, 3, 4, 5, 8, 9, 10], "{handled:?}");
    assert_eq!(handled[0], "1 OrderPlaced v1 order-0#1 total_cents=0");
    assert_eq!(handled[7], "10 OrderPlaced v1 order-3#2 total_cents=700");
}

#[tokio::test]
async fn the_rust_listener_handles_each_order_event_once_across_a_crash() {
    survives_a_crash_between_work_and_ack(
        |dir| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_order-listener"));
            command.arg(dir);
            command
        },
        "order-listener",
    )
    .await;
}

#[tokio::test]
async fn the_python_listener_handles_each_order_event_once_across_a_crash() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/order_listener.py");
    survives_a_crash_between_work_and_ack(
        move |dir| {
            let mut command = Command::new("python3");
            command.arg(&script).arg(dir);
            command
        },
        "order-listener-py",
    )
    .await;
}
