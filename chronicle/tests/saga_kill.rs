//! The order saga as a real process, killed (SIGABRT) between reserving an order's first and
//! second line, then started again: the order settles exactly once (issue 5). By then it has
//! committed in two contexts: the payment deadline's job in the scheduler's store, the first
//! reservation in commerce's. So the same kill is made with commerce on a PostgreSQL cluster
//! of its own (issue 34): no transaction spans the two databases, and the restarted saga
//! repeats both commands harmlessly (the job's id is the order's, the reservation's too).

use std::{
    os::unix::process::ExitStatusExt,
    process::{Child, Command, Stdio},
    time::Duration,
};

use chronicle_commands::CommandContext;
use chronicle_commerce::{InventoryCommand, InventoryItem, Order, OrderCommand, OrderLine};
use chronicle_tests::{eventually, TestDb, TestNats, TestPostgres};
use sqlx::PgPool;

fn saga(db: &TestDb, nats: &TestNats, commerce: Option<&str>, failpoints: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(["saga", "orders"])
        .env("DATABASE_URL", &db.url)
        .envs(commerce.map(|url| ("CHRONICLE_COMMERCE_DATABASE_URL", url)))
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
    killed_between_two_lines(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_commerce_on_a_database_of_its_own_the_saga_killed_between_two_commits_settles_once() {
    let commerce = TestPostgres::start_empty().await;
    killed_between_two_lines(Some(&commerce)).await;
}

/// The kill, with commerce's schema on `commerce` when given.
async fn killed_between_two_lines(commerce: Option<&TestPostgres>) {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let main = db.pool().await;
    let stores: std::collections::BTreeMap<&'static str, sqlx::postgres::PgConnectOptions> =
        commerce
            .map(|c| {
                (
                    chronicle_commands::contexts::COMMERCE,
                    c.url.parse().unwrap(),
                )
            })
            .into_iter()
            .collect();
    chronicle::contexts::migrate_stores(&main, &stores, None)
        .await
        .unwrap();
    // Each context's pool as its own role, commerce's on its own database when split.
    let databases = chronicle_commands::Databases::new(
        main.clone(),
        &chronicle::contexts::names(),
        10,
        move |context, options| {
            stores
                .get(context)
                .cloned()
                .unwrap_or_else(|| options.username(&chronicle_tests::context_role(context)))
        },
    );
    let pool = match commerce {
        Some(c) => PgPool::connect(&c.url).await.unwrap(),
        None => main.clone(),
    };
    let client = nats.client().await;
    chronicle_bus::ensure_events_stream(&async_nats::jetstream::new(client.clone()))
        .await
        .unwrap();
    // The commerce outbox's relay (inventory and orders are commerce's).
    let relay = chronicle_bus::Relay::new(
        databases.of(chronicle_commands::contexts::COMMERCE).clone(),
        client,
        chronicle_bus::RelayConfig {
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let relay = tokio::spawn(relay.run(std::future::pending()));
    let bus = chronicle_commands::CommandExecutor::for_contexts(
        &databases,
        &chronicle_bus::Faults::default(),
        Default::default(),
    );
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

    let commerce_url = commerce.map(|c| c.url.as_str());
    let mut doomed = saga(&db, &nats, commerce_url, "saga.between_lines=abort");
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

    // Both commits before the kill are there: the deadline's job (the scheduler's store) and
    // the first reservation (commerce's).
    let deadline = chronicle_sagas::deadline_job(&order_id);
    let created = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM scheduler.events \
             WHERE aggregate_type = 'job' AND aggregate_id = $1 AND event_type = 'JobCreated'",
        )
        .bind(&deadline)
        .fetch_one(&main)
        .await
        .unwrap()
    };
    assert_eq!(
        created().await,
        1,
        "the deadline's job was made before the kill"
    );

    let mut restarted = saga(&db, &nats, commerce_url, "");
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
    assert_eq!(
        created().await,
        1,
        "the deadline's job made once, its command repeated"
    );
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
