//! The order saga as a real process, killed (SIGABRT) between reserving an order's first and
//! second line, then started again: the order settles exactly once (issue 5).

use std::{
    os::unix::process::ExitStatusExt,
    process::{Child, Command, Stdio},
    time::Duration,
};

use chronicle_commands::CommandContext;
use chronicle_commerce::{InventoryCommand, InventoryItem, Order, OrderCommand, OrderLine};
use chronicle_tests::{eventually, TestDb, TestNats};
use sqlx::PgPool;

fn saga(db: &TestDb, nats: &TestNats, failpoints: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(["saga", "orders"])
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats.url())
        .env("CHRONICLE_FAILPOINTS", failpoints)
        // The event the killed process held comes back to the next one after this.
        .env("CHRONICLE_SAGA_ACK_WAIT", "1s")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the chronicle binary starts")
}

async fn event_types(pool: &PgPool, aggregate_type: &str, id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM commerce.events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_process_killed_between_two_lines_settles_the_order_once_after_restart() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let pool = db.pool().await;
    let client = nats.client().await;
    chronicle_bus::ensure_events_stream(&async_nats::jetstream::new(client.clone()))
        .await
        .unwrap();
    // The commerce outbox's relay (inventory and orders are commerce's).
    let relay = chronicle_bus::Relay::new(
        db.context_pool(chronicle_commands::contexts::COMMERCE)
            .await,
        client,
        chronicle_bus::RelayConfig {
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let relay = tokio::spawn(relay.run(std::future::pending()));
    let bus = db.executor().await;
    let ctx = CommandContext::new();
    for sku in ["A", "B"] {
        bus.execute::<InventoryItem>(
            sku,
            InventoryCommand::Create {
                sku: sku.into(),
                name: sku.into(),
                price_cents: 100,
                initial_stock: 10,
            },
            &(),
            &ctx,
        )
        .await
        .unwrap();
    }
    let order_id = uuid::Uuid::now_v7().to_string();
    let line = |sku: &str, quantity| OrderLine {
        sku: sku.into(),
        quantity,
        unit_price_cents: 100,
    };
    bus.execute::<Order>(
        &order_id,
        OrderCommand::Place {
            order_id: order_id.clone(),
            customer_id: "alice".into(),
            lines: vec![line("A", 2), line("B", 3)],
            coupon: None,
        },
        &(),
        &ctx,
    )
    .await
    .unwrap();

    let mut doomed = saga(&db, &nats, "saga.between_lines=abort");
    let status = tokio::task::spawn_blocking(move || doomed.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(libc_sigabrt()),
        "killed at the fault point: {status}"
    );
    assert_eq!(
        event_types(&pool, "inventory_item", "A").await,
        ["ItemCreated", "StockReserved"]
    );
    assert_eq!(
        event_types(&pool, "inventory_item", "B").await,
        ["ItemCreated"]
    );
    assert_eq!(
        event_types(&pool, "order", &order_id).await,
        ["OrderPlaced"]
    );

    let mut restarted = saga(&db, &nats, "");
    eventually("the order to settle", Duration::from_secs(60), || async {
        (event_types(&pool, "order", &order_id).await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        event_types(&pool, "order", &order_id).await,
        ["OrderPlaced", "OrderReserved"]
    );
    for sku in ["A", "B"] {
        assert_eq!(
            event_types(&pool, "inventory_item", sku).await,
            ["ItemCreated", "StockReserved"],
            "{sku} reserved exactly once"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(restarted.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || restarted.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the saga stops cleanly on SIGTERM: {status}"
    );
    relay.abort();
}

fn libc_sigabrt() -> i32 {
    nix::sys::signal::Signal::SIGABRT as i32
}
