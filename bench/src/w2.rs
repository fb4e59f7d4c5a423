//! W2 replay: read every event in log order and fold it into a projection, (a) in memory
//! and (b) into the real `inventory` read model by the replay engine, from each source
//! `chronicle replay` reads (the JetStream log and the commerce context's event store), at
//! two sizes.
//!
//! The events are written with SQL into the commerce store and its outbox, as commits write
//! them, and the relay publishes the outbox, so the run also measures how fast the relay
//! drains a backlog.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use chronicle_bus::{Relay, RelayConfig};
use chronicle_commerce::InventoryEvent;
use chronicle_projections::{inventory::InventoryProjection, ReplayFrom};
use chronicle_schemas::Envelope;
use futures::StreamExt;

use crate::{report::Measurement, servers::Servers};

const ITEMS: u64 = 1_000;
/// Events per replay transaction: `chronicle replay`'s default.
const REPLAY_BATCH: usize = 50_000;

pub async fn run(servers: &Servers, large: u64) -> anyhow::Result<()> {
    for events in [20_000, large] {
        let per_item = (events / ITEMS).max(1);
        let total = per_item * ITEMS;
        eprintln!("bench: W2 with {total} events");
        let fresh = servers.fresh().await?;
        // The commerce context's store, as `chronicle up` reaches it: its own schema first on
        // the path (the event store, the outbox, the relay's position, the read model).
        let db = chronicle_commands::Databases::new(
            fresh.pool.clone(),
            &[chronicle_commands::contexts::COMMERCE],
            8,
            |_, options| options,
        );
        let pool = db.of(chronicle_commands::contexts::COMMERCE).clone();
        // Each event twice, as a commit writes it: in the store (`events`, in postgres-es's
        // layout) and in the outbox (the envelope the relay publishes). Commit times are a
        // microsecond apart, in the outbox's order.
        sqlx::query(
            "WITH src AS ( \
               SELECT 'W2-' || lpad(item::text, 4, '0') AS id, seq, \
                      CASE WHEN seq = 1 THEN 'ItemCreated' ELSE 'StockReceived' END AS t, \
                      gen_random_uuid() AS e, gen_random_uuid() AS c, \
                      to_char((now() + ((seq - 1) * $1 + item) * interval '1 microsecond') AT TIME ZONE 'UTC', \
                              'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS at, \
                      CASE WHEN seq = 1 \
                        THEN json_build_object('sku', 'W2-' || lpad(item::text, 4, '0'), \
                               'name', 'Item ' || item, 'price_cents', 100, 'initial_stock', 0) \
                        ELSE json_build_object('quantity', 1) END AS p \
               FROM generate_series(1, $2::bigint) AS seq, generate_series(1, $1::bigint) AS item), \
             stored AS ( \
               INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
               SELECT 'inventory_item', id, seq, t, '1', json_build_object(t, p), \
                      json_build_object('event_id', e, 'recorded_at', at, 'correlation_id', c) \
               FROM src) \
             INSERT INTO outbox (subject, message_id, event_type, event_version, aggregate_sequence, correlation_id, envelope) \
             SELECT 'events.commerce.inventory_item.' || id, 'inventory_item:' || id || ':' || seq, t, '1', seq, c, \
               convert_to(json_build_object( \
                 'event_id', e, 'event_type', t, 'event_version', '1', 'context', 'commerce', \
                 'aggregate_type', 'inventory_item', 'aggregate_id', id, 'sequence', seq, \
                 'recorded_at', at, 'correlation_id', c, 'payload', p)::text, 'UTF8') \
             FROM src ORDER BY seq, id",
        )
        .bind(ITEMS as i64)
        .bind(per_item as i64)
        .execute(&pool)
        .await
        .context("writing the store and the outbox backlog")?;

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let started = Instant::now();
        // BENCH_RELAY_BATCH_MAX shrinks the relay's batches, to measure what a batch costs.
        let batch_max = std::env::var("BENCH_RELAY_BATCH_MAX")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(RelayConfig::default().batch_max);
        let config = RelayConfig {
            batch_max,
            ..RelayConfig::default()
        };
        let relay = tokio::spawn(
            Relay::new(pool.clone(), fresh.nats.clone(), config).run(async {
                let _ = stopped.await;
            }),
        );
        loop {
            let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox)")
                .fetch_one(&pool)
                .await?;
            if !left {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Measurement::new("chronicle", "relay-drain", 1, total, started.elapsed())
            .label("outbox-to-jetstream")
            .print();
        let _ = stop.send(());
        relay.await??;

        if std::env::var("BENCH_W2_READ_CEILING").is_ok() {
            read_ceiling(&fresh.nats_url, total).await?;
        }
        let started = Instant::now();
        let folded = fold_in_memory(&fresh.nats, total).await?;
        Measurement::new("chronicle", "W2", 1, total, started.elapsed())
            .label("in-memory-fold")
            .print();
        anyhow::ensure!(
            folded.len() as u64 == ITEMS,
            "folded {} items",
            folded.len()
        );
        anyhow::ensure!(
            folded
                .values()
                .all(|(on_hand, _)| *on_hand == per_item as i64 - 1),
            "the fold lost events"
        );

        // BENCH_REPLAY_BATCH overrides the events per replay transaction.
        let batch = std::env::var("BENCH_REPLAY_BATCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(REPLAY_BATCH);
        for source in [ReplayFrom::Log, ReplayFrom::Store] {
            let started = Instant::now();
            let progress = |done: u64, all: u64| {
                if done % 100_000 < batch as u64 || done == all {
                    eprint!("\rbench: replay from {source:?} {done}/{all}");
                }
            };
            let stats = match source {
                ReplayFrom::Log => {
                    chronicle_projections::replay(
                        &InventoryProjection,
                        &pool,
                        &fresh.nats,
                        batch,
                        progress,
                    )
                    .await?
                }
                ReplayFrom::Store => {
                    chronicle_projections::replay_from_store(
                        &InventoryProjection,
                        &db,
                        &fresh.nats,
                        batch,
                        progress,
                    )
                    .await?
                }
            };
            eprintln!();
            Measurement::new("chronicle", "W2", 1, stats.events, started.elapsed())
                .label(match source {
                    ReplayFrom::Log => "replay-into-postgres",
                    ReplayFrom::Store => "replay-from-store",
                })
                .print();
            anyhow::ensure!(stats.events == total, "replayed {} events", stats.events);
            let wrong: i64 =
                sqlx::query_scalar("SELECT count(*) FROM inventory_items WHERE on_hand <> $1")
                    .bind(per_item as i64 - 1)
                    .fetch_one(&pool)
                    .await?;
            anyhow::ensure!(wrong == 0, "{wrong} read-model rows are wrong after replay");
        }
    }
    Ok(())
}

/// Reads the whole stream in order and folds `(on_hand, version)` per SKU.
async fn fold_in_memory(
    client: &async_nats::Client,
    total: u64,
) -> anyhow::Result<HashMap<String, (i64, u64)>> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(chronicle_bus::EVENTS_STREAM).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut state: HashMap<String, (i64, u64)> = HashMap::new();
    let mut seen = 0;
    while seen < total {
        let message = messages.next().await.context("the stream ended early")??;
        let envelope: Envelope = serde_json::from_slice(&message.payload)?;
        let entry = state.entry(envelope.aggregate_id.clone()).or_default();
        match envelope.decode::<InventoryEvent>()? {
            InventoryEvent::ItemCreated { initial_stock, .. } => entry.0 = initial_stock as i64,
            InventoryEvent::StockReceived { quantity } => entry.0 += quantity as i64,
            InventoryEvent::ReservationCommitted { quantity, .. } => entry.0 -= quantity as i64,
            // Reservations and catalog edits leave the stock on hand as it is.
            InventoryEvent::StockReserved { .. }
            | InventoryEvent::ReservationReleased { .. }
            | InventoryEvent::ItemRenamed { .. }
            | InventoryEvent::ItemRepriced { .. }
            | InventoryEvent::ItemDescribed { .. }
            | InventoryEvent::ItemDiscontinued {} => {}
        }
        entry.1 = envelope.sequence;
        seen += 1;
    }
    Ok(state)
}

/// How fast this machine reads the stream back, for the W2 figures' context
/// (`BENCH_W2_READ_CEILING=1`): the ordered consumer that replay uses, plain pull consumers
/// with larger batches, several pull consumers over ranges side by side (decoding the
/// envelopes), and batched direct gets (nats-server 2.11's `{"seq", "batch"}`), each alone
/// on a quiet system.
async fn read_ceiling(url: &str, total: u64) -> anyhow::Result<()> {
    let client = chronicle_bus::connect(url).await?;
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(chronicle_bus::EVENTS_STREAM).await?;
    let started = Instant::now();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut seen = 0u64;
    let mut bytes = 0usize;
    while seen < total {
        let m = messages.next().await.context("ended")??;
        bytes += m.payload.len();
        seen += 1;
    }
    Measurement::new("chronicle", "W2-read", 1, total, started.elapsed())
        .label("ordered-no-decode")
        .print();
    eprintln!("bytes {bytes}");
    drop(messages);
    for batch in [2_000usize, 10_000] {
        let started = Instant::now();
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: jetstream::consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .messages()
            .await?;
        let mut seen = 0u64;
        while seen < total {
            let m = messages.next().await.context("ended")??;
            std::hint::black_box(m.payload.len());
            seen += 1;
        }
        Measurement::new("chronicle", "W2-read", 1, total, started.elapsed())
            .label(format!("pull-{batch}-no-decode").leak())
            .print();
    }
    for parts in [2u64, 4] {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for part in 0..parts {
            let url = url.to_owned();
            let from = part * total / parts + 1;
            let to = (part + 1) * total / parts;
            tasks.push(tokio::spawn(async move {
                let client = chronicle_bus::connect(&url).await?;
                let js = jetstream::new(client);
                let stream = js.get_stream(chronicle_bus::EVENTS_STREAM).await?;
                let consumer = stream
                    .create_consumer(jetstream::consumer::pull::Config {
                        deliver_policy: DeliverPolicy::ByStartSequence {
                            start_sequence: from,
                        },
                        ack_policy: jetstream::consumer::AckPolicy::None,
                        inactive_threshold: Duration::from_secs(30),
                        ..Default::default()
                    })
                    .await?;
                let mut messages = consumer
                    .stream()
                    .max_messages_per_batch(5_000)
                    .messages()
                    .await?;
                let mut n = 0u64;
                for _ in from..=to {
                    let m = messages.next().await.context("ended")??;
                    let e: Envelope = serde_json::from_slice(&m.payload)?;
                    std::hint::black_box(e);
                    n += 1;
                }
                anyhow::Ok(n)
            }));
        }
        print_read(tasks, started, format!("parallel-{parts}-decode")).await?;
    }
    for (parts, chunk) in [(1u64, 10_000u64), (2, 10_000), (4, 5_000)] {
        let started = Instant::now();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..parts {
            let url = url.to_owned();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let client = chronicle_bus::connect(&url).await?;
                let mut n = 0u64;
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let from = k * chunk + 1;
                    if from > total {
                        break;
                    }
                    let inbox = client.new_inbox();
                    let mut sub = client.subscribe(inbox.clone()).await?;
                    client
                        .publish_with_reply(
                            "$JS.API.DIRECT.GET.EVENTS",
                            inbox,
                            format!("{{\"seq\":{from},\"batch\":{chunk}}}").into(),
                        )
                        .await?;
                    loop {
                        let m = sub.next().await.context("ended")?;
                        if let Some(status) = m.status {
                            if status.as_u16() == 204 {
                                break;
                            }
                            anyhow::bail!("status {status:?} {:?}", m.description);
                        }
                        let e: Envelope = serde_json::from_slice(&m.payload)?;
                        std::hint::black_box(e);
                        n += 1;
                    }
                }
                anyhow::Ok(n)
            }));
        }
        print_read(
            tasks,
            started,
            format!("direct-batch-{parts}x{chunk}-decode"),
        )
        .await?;
    }
    Ok(())
}

/// Waits for the readers and prints the events they read together as one `W2-read` line.
async fn print_read(
    readers: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>,
    started: Instant,
    label: String,
) -> anyhow::Result<()> {
    let mut n = 0;
    for reader in readers {
        n += reader.await??;
    }
    Measurement::new("chronicle", "W2-read", 1, n, started.elapsed())
        .label(label.leak())
        .print();
    Ok(())
}
