//! W1 commands: 1,000 inventory items, each receiving 20 commands (receive or reserve),
//! each loading its aggregate, deciding and appending one event with optimistic
//! concurrency. Chronicle runs with the outbox and the relay, and a run ends when
//! JetStream has acknowledged the last event (the outbox is empty).

use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use chronicle_bus::{Relay, RelayConfig};
use chronicle_commands::{CommandContext, CommandExecutor, EventStore, ExecutorConfig};
use chronicle_commerce::{InventoryCommand, InventoryItem};
use cqrs_es::AggregateError;
use sqlx::PgPool;

use crate::{report::Measurement, servers::Servers};

const ITEMS: usize = 1_000;
const PER_ITEM: usize = 20;
const TOTAL: usize = ITEMS * PER_ITEM;

fn sku(item: usize) -> String {
    format!("W1-{item:04}")
}

/// Command `k` of the run. Consecutive commands go to different items (item-major order
/// would make every worker queue on one aggregate); within an item, receives and reserves
/// alternate, so stock never runs out and never goes negative.
fn command(k: usize) -> (String, InventoryCommand) {
    let (item, round) = (k % ITEMS, k / ITEMS);
    let command = if round % 2 == 0 {
        InventoryCommand::Receive { quantity: 1 }
    } else {
        InventoryCommand::Reserve {
            reservation_id: format!("r{round}"),
            quantity: 1,
        }
    };
    (sku(item), command)
}

fn create(item: usize) -> InventoryCommand {
    InventoryCommand::Create {
        sku: sku(item),
        name: format!("Item {item}"),
        price_cents: 100,
        initial_stock: 10,
    }
}

/// Runs `op(0..total)` on `concurrency` workers; returns each op's latency.
pub async fn drive<F, Fut>(concurrency: usize, total: usize, op: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..concurrency).map(|_| {
        let (op, next) = (op.clone(), next.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return anyhow::Ok(latencies);
                }
                let started = Instant::now();
                op(k).await?;
                latencies.push(started.elapsed());
            }
        })
    });
    let mut all = Vec::with_capacity(total);
    for worker in futures::future::join_all(workers).await {
        all.extend(worker.context("a worker panicked")??);
    }
    Ok(all)
}

async fn outbox_empty(pool: &PgPool) -> anyhow::Result<()> {
    loop {
        let pending: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox)")
            .fetch_one(pool)
            .await?;
        if !pending {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn chronicle(
    servers: &Servers,
    concurrency: usize,
    mut config: ExecutorConfig,
    label: &'static str,
) -> anyhow::Result<Measurement> {
    // BENCH_GROUPS_IN_FLIGHT overrides how many commit groups may be in flight at once.
    if let Some(n) = std::env::var("BENCH_GROUPS_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.groups_in_flight = n;
    }
    let fresh = servers.fresh().await?;
    let bus = CommandExecutor::with_config(EventStore::new(fresh.pool.clone()), config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut relay_config = RelayConfig::default();
    // BENCH_RELAY_LINGER_MS overrides the relay's linger, to measure its effect.
    if let Some(ms) = std::env::var("BENCH_RELAY_LINGER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        relay_config.linger = Duration::from_millis(ms);
    }
    let relay = tokio::spawn(
        Relay::new(fresh.pool.clone(), fresh.nats.clone(), relay_config).run(async {
            let _ = stopped.await;
        }),
    );
    let setup = bus.clone();
    drive(16, ITEMS, move |i| {
        let bus = setup.clone();
        async move {
            bus.execute::<InventoryItem>(&sku(i), create(i), &(), &CommandContext::new())
                .await?;
            Ok(())
        }
    })
    .await?;
    outbox_empty(&fresh.pool).await?;

    let started = Instant::now();
    let run = bus.clone();
    let latencies = drive(concurrency, TOTAL, move |k| {
        let bus = run.clone();
        async move {
            let (id, command) = command(k);
            bus.execute::<InventoryItem>(&id, command, &(), &CommandContext::new())
                .await?;
            Ok(())
        }
    })
    .await?;
    outbox_empty(&fresh.pool).await?;
    let elapsed = started.elapsed();
    let _ = stop.send(());
    relay.await??;

    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&fresh.pool)
        .await?;
    anyhow::ensure!(
        events as usize == ITEMS + TOTAL,
        "expected {} events, found {events}",
        ITEMS + TOTAL
    );
    Ok(
        Measurement::new("chronicle", "W1", concurrency, TOTAL as u64, elapsed)
            .label(label)
            .latencies(latencies),
    )
}

async fn baseline(servers: &Servers, concurrency: usize) -> anyhow::Result<Measurement> {
    let fresh = servers.fresh().await?;
    let cqrs = Arc::new(postgres_es::postgres_cqrs::<InventoryItem>(
        fresh.pool.clone(),
        vec![],
        (),
    ));
    let setup = cqrs.clone();
    drive(16, ITEMS, move |i| {
        let cqrs = setup.clone();
        async move { execute_with_retry(&cqrs, &sku(i), create(i)).await }
    })
    .await?;
    let started = Instant::now();
    let run = cqrs.clone();
    let latencies = drive(concurrency, TOTAL, move |k| {
        let cqrs = run.clone();
        async move {
            let (id, command) = command(k);
            execute_with_retry(&cqrs, &id, command).await
        }
    })
    .await?;
    let elapsed = started.elapsed();
    Ok(
        Measurement::new("baseline-cqrs-es", "W1", concurrency, TOTAL as u64, elapsed)
            .label("load-from-postgres")
            .latencies(latencies),
    )
}

/// The baseline retries a lost optimistic-concurrency race, as Chronicle does.
async fn execute_with_retry(
    cqrs: &postgres_es::PostgresCqrs<InventoryItem>,
    id: &str,
    command: InventoryCommand,
) -> anyhow::Result<()> {
    for _ in 0..10 {
        match cqrs.execute(id, command.clone()).await {
            Ok(()) => return Ok(()),
            Err(AggregateError::AggregateConflict) => continue,
            Err(e) => return Err(anyhow::anyhow!("baseline command failed: {e}")),
        }
    }
    anyhow::bail!("baseline command kept conflicting")
}

/// W1 at concurrency 1 and 16: the baseline, Chronicle loading every aggregate from
/// Postgres, and Chronicle with its aggregate cache and snapshots.
///
/// `only` keeps the runs whose `system/label` contains it (`chronicle/cache`), and
/// `concurrency` picks one level instead of both.
pub async fn run(
    servers: &Servers,
    only: Option<&str>,
    concurrency: Option<usize>,
) -> anyhow::Result<()> {
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    for concurrency in concurrency.map_or(vec![1, 16], |c| vec![c]) {
        eprintln!("bench: W1 at concurrency {concurrency}");
        if wanted("baseline-cqrs-es/load-from-postgres") {
            baseline(servers, concurrency).await?.print();
        }
        if wanted("chronicle/load-from-postgres") {
            chronicle(
                servers,
                concurrency,
                ExecutorConfig::uncached(),
                "load-from-postgres",
            )
            .await?
            .print();
        }
        if wanted("chronicle/cache+snapshots") {
            chronicle(
                servers,
                concurrency,
                ExecutorConfig::default(),
                "cache+snapshots",
            )
            .await?
            .print();
        }
    }
    Ok(())
}
