//! W3 long stream: one aggregate with 10,000 events; the time to load it and handle one
//! command, without and with a snapshot, and through plain cqrs-es + postgres-es.

use std::time::{Duration, Instant};

use chronicle_commands::EventStore;
use chronicle_commerce::{InventoryCommand, InventoryItem};
use cqrs_es::{
    event_sink::EventSink, persist::PersistedEventStore, Aggregate, AggregateContext,
    EventStore as _,
};
use postgres_es::PostgresEventRepository;

use crate::{report::Measurement, servers::Servers};

const EVENTS: i64 = 10_000;
const SAMPLES: usize = 50;
const ID: &str = "W3-LONG";

async fn handle_one(mut state: InventoryItem) -> anyhow::Result<()> {
    let sink = EventSink::default();
    state
        .handle(InventoryCommand::Receive { quantity: 1 }, &(), &sink)
        .await?;
    anyhow::ensure!(
        sink.collect().await.len() == 1,
        "the command decided one event"
    );
    Ok(())
}

async fn sample<F, Fut>(mut once: F) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    once().await?; // warm the connection and the page cache
    let started = Instant::now();
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        once().await?;
        samples.push(t.elapsed());
    }
    Ok((samples, started.elapsed()))
}

pub async fn run(servers: &Servers) -> anyhow::Result<()> {
    eprintln!("bench: W3, one aggregate with {EVENTS} events");
    let fresh = servers.fresh().await?;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'inventory_item', $1, seq, \
                CASE WHEN seq = 1 THEN 'ItemCreated' ELSE 'StockReceived' END, '1', \
                CASE WHEN seq = 1 \
                  THEN json_build_object('ItemCreated', json_build_object('sku', $1, 'name', 'Long', 'price_cents', 1, 'initial_stock', 0)) \
                  ELSE json_build_object('StockReceived', json_build_object('quantity', 1)) END, \
                json_build_object('event_id', gen_random_uuid(), 'recorded_at', '2026-01-01T00:00:00Z', \
                                  'correlation_id', gen_random_uuid()) \
         FROM generate_series(1, $2::bigint) AS seq",
    )
    .bind(ID)
    .bind(EVENTS)
    .execute(&fresh.pool)
    .await?;
    let store = EventStore::new(fresh.pool.clone());

    let (samples, elapsed) = sample(|| async {
        let loaded = store.load::<InventoryItem>(ID).await?;
        anyhow::ensure!(
            loaded.version == EVENTS as u64,
            "loaded version {}",
            loaded.version
        );
        handle_one(loaded.state).await
    })
    .await?;
    Measurement::new("chronicle", "W3", 1, SAMPLES as u64, elapsed)
        .label("no-snapshots")
        .latencies(samples)
        .print();

    let full = store.load::<InventoryItem>(ID).await?;
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
         VALUES ('inventory_item', $1, $2, $2, $3)",
    )
    .bind(ID)
    .bind(EVENTS)
    .bind(serde_json::to_value(&full.state)?)
    .execute(&fresh.pool)
    .await?;
    let (samples, elapsed) = sample(|| async {
        let loaded = store.load_from_snapshot::<InventoryItem>(ID).await?;
        anyhow::ensure!(
            loaded.version == EVENTS as u64 && loaded.state == full.state,
            "snapshot load differs"
        );
        handle_one(loaded.state).await
    })
    .await?;
    Measurement::new("chronicle", "W3", 1, SAMPLES as u64, elapsed)
        .label("snapshots")
        .latencies(samples)
        .print();

    let baseline = PersistedEventStore::<PostgresEventRepository, InventoryItem>::new_event_store(
        PostgresEventRepository::new(fresh.pool.clone()),
    );
    let (samples, elapsed) = sample(|| async {
        let mut context = baseline
            .load_aggregate(ID)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        handle_one(context.aggregate().clone()).await
    })
    .await?;
    Measurement::new("baseline-cqrs-es", "W3", 1, SAMPLES as u64, elapsed)
        .label("no-snapshots")
        .latencies(samples)
        .print();
    Ok(())
}
