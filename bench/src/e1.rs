//! E1 (docs/benchmarks.md): commands through the gateway's HTTP API, and the E1 reference.
//!
//! Chronicle runs as its own process (`chronicle up` on the bench's servers: `cargo build
//! --release -p chronicle` first). The load is a mix of order placements (each one also
//! drives the order saga: a reservation on the item, then the order marked reserved) and
//! stock receipts, over 64 keep-alive connections.
//!
//! Each run measures, on a fresh database and stream:
//!
//! 1. **reference**: the same generator against an axum route in this process that does
//!    exactly one `INSERT` per request, in its own transaction, on the same Postgres:
//!    the cost of HTTP plus one durable write on these cores. Closed loop (each connection
//!    sends its next request when the last is answered): its capacity.
//! 2. **chronicle capacity**: the same closed loop against the gateway, printed with its
//!    ratio to the reference.
//! 3. **chronicle open loop**: requests leave at a fixed rate whatever the earlier ones are
//!    doing, and each latency counts from the moment its request was due, so a stall is not
//!    hidden by back-pressure. One in `probe_every` commands is followed by a read of its
//!    read model with `?min_version=` (woken by the projector's commit): the projection lag,
//!    from the command's 2xx to the read model showing its version. The RSS of the `chronicle
//!    up` process (the gateway and every other role in one process) idle, at its peak under
//!    the load, and after it, is reported with it (`up_rss_kib_*`), and how many orders the
//!    saga had not decided yet when the last command was answered, and how long it took
//!    to decide them. A third line breaks the open loop's time down by stage (HTTP, decide
//!    and commit, relay, each subscriber's delivery and apply, the fresh read's wait; see
//!    [`crate::breakdown`]), with the order saga's time from an order's placement to its
//!    reservation, from the two events' publish times in the log.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool};

use crate::{
    breakdown::Scrape,
    process::{rss_kib, settled_rss_kib, start_with, user, PeakRss},
    report::Measurement,
    servers::Servers,
};

/// Keep-alive connections of the generator (docs/benchmarks.md).
const CONNECTIONS: usize = 64;
/// Inventory items the load spreads over.
const ITEMS: usize = 1_000;
/// Customers placing the orders (each request takes one in turn).
const CUSTOMERS: usize = 64;

fn sku(item: usize) -> String {
    format!("E1-{item:04}")
}

/// The knobs of one E1 set.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Open-loop arrival rate, commands per second.
    pub rate: u64,
    /// Length of each phase.
    pub seconds: u64,
    /// Share of order placements in the mix, in percent (the rest are stock receipts).
    pub orders_percent: u64,
    /// One command in this many is followed by a `min_version` read (the lag probe).
    pub probe_every: u64,
}

/// Request `k` of a phase: an order placement or a receipt, spread over the items.
fn is_order(k: u64, orders_percent: u64) -> bool {
    // A fixed interleaving (not random): every run sends the same mix in the same order.
    (k * orders_percent) / 100 != ((k + 1) * orders_percent) / 100
}

/// What the generator needs of the system under load: one request per call.
type Request =
    Arc<dyn Fn(u64) -> futures::future::BoxFuture<'static, anyhow::Result<Sent>> + Send + Sync>;

/// What a command's answer tells the lag probe: where to read it back, from which version.
struct Sent {
    read_back: Option<ReadBack>,
}

/// A read model to read back: its URL, the version to wait for, the token that may read it.
struct ReadBack {
    url: String,
    version: u64,
    token: Arc<str>,
}

/// Closed loop: `connections` workers each send their next request when the last one is
/// answered, `total` requests in all. Latencies per request.
async fn closed_loop(
    send: &Request,
    connections: usize,
    total: u64,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let send = send.clone();
    let started = Instant::now();
    let latencies = crate::w1::drive(connections, total as usize, move |k| {
        let send = send.clone();
        async move {
            send(k as u64).await?;
            Ok(())
        }
    })
    .await?;
    Ok((latencies, started.elapsed()))
}

/// What an open-loop phase measured.
struct OpenLoop {
    latencies: Vec<Duration>,
    lags: Vec<Duration>,
    stale: u64,
    errors: u64,
    elapsed: Duration,
}

/// Open loop: request `n` is due at `n / rate` and leaves then, or as soon as one of the
/// `connections` is free; its latency counts from when it was due.
async fn open_loop<P, PF>(send: &Request, options: Options, probe: P) -> anyhow::Result<OpenLoop>
where
    P: Fn(ReadBack) -> PF + Send + Sync + 'static,
    PF: Future<Output = anyhow::Result<bool>> + Send + 'static,
{
    let probe = Arc::new(probe);
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    let errors = Arc::new(AtomicU64::new(0));
    let total = options.rate * options.seconds;
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = started + Duration::from_micros(n * 1_000_000 / options.rate);
        tokio::time::sleep_until(due).await;
        let (send, permits, errors, probe) =
            (send.clone(), permits.clone(), errors.clone(), probe.clone());
        let probing = n % options.probe_every == 0;
        tasks.push(tokio::spawn(async move {
            let permit = permits.acquire_owned().await.expect("never closed");
            let answer = send(n).await;
            drop(permit);
            let latency = due.elapsed();
            match answer {
                Ok(Sent {
                    read_back: Some(back),
                }) if probing => {
                    // The probe reads on connections of its own, after the command's.
                    let answered = Instant::now();
                    let fresh = probe(back).await?;
                    Ok((Some(latency), Some((answered.elapsed(), fresh))))
                }
                Ok(_) => Ok((Some(latency), None)),
                Err(e) => {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("bench: E1 first failed command: {e:#}");
                    }
                    anyhow::Ok((None, None))
                }
            }
        }));
    }
    let (mut latencies, mut lags, mut stale) = (Vec::with_capacity(tasks.len()), Vec::new(), 0);
    let mut last_answer = Duration::ZERO;
    for (n, task) in tasks.into_iter().enumerate() {
        let (latency, lag) = task.await??;
        if let Some(latency) = latency {
            // When command n was answered: it was due at n / rate.
            let due = Duration::from_micros(n as u64 * 1_000_000 / options.rate);
            last_answer = last_answer.max(due + latency);
            latencies.push(latency);
        }
        if let Some((lag, fresh)) = lag {
            lags.push(lag);
            stale += u64::from(!fresh);
        }
    }
    // The commands' span, without the last probes' reads.
    let elapsed = last_answer;
    Ok(OpenLoop {
        latencies,
        lags,
        stale,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
    })
}

/// An HTTP client holding at most `connections` keep-alive connections.
fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .build()?)
}

/// The E1 reference: `POST /e1` inserts one row in its own transaction.
async fn reference_server(db_url: &str) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let pool = PgPoolOptions::new()
        .max_connections(32)
        .connect(db_url)
        .await?;
    sqlx::query(
        "CREATE TABLE e1_reference (id bigserial PRIMARY KEY, sku text NOT NULL, \
         quantity bigint NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    async fn insert(
        State(pool): State<PgPool>,
        Json(body): Json<Value>,
    ) -> Result<Json<Value>, StatusCode> {
        let sku = body["sku"]
            .as_str()
            .ok_or(StatusCode::UNPROCESSABLE_ENTITY)?;
        let quantity = body["quantity"]
            .as_i64()
            .ok_or(StatusCode::UNPROCESSABLE_ENTITY)?;
        let (id,): (i64,) =
            sqlx::query_as("INSERT INTO e1_reference (sku, quantity) VALUES ($1, $2) RETURNING id")
                .bind(sku)
                .bind(quantity)
                .fetch_one(&pool)
                .await
                .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
        Ok(Json(json!({"id": id})))
    }
    let app = Router::new().route("/e1", post(insert)).with_state(pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, server))
}

fn reference_send(http: reqwest::Client, base: String) -> Request {
    Arc::new(move |k| {
        let (http, base) = (http.clone(), base.clone());
        Box::pin(async move {
            let answer = http
                .post(format!("{base}/e1"))
                .json(&json!({"sku": sku(k as usize % ITEMS), "quantity": 1}))
                .send()
                .await?;
            anyhow::ensure!(
                answer.status().is_success(),
                "reference answered {}",
                answer.status()
            );
            Ok(Sent { read_back: None })
        })
    })
}

/// Chronicle's mix: an order for one unit of an item from a customer, or a receipt of one
/// unit by staff.
fn chronicle_send(
    http: reqwest::Client,
    base: String,
    staff: String,
    customers: Arc<Vec<Arc<str>>>,
    orders_percent: u64,
) -> Request {
    let base: Arc<str> = base.into();
    let staff: Arc<str> = staff.into();
    Arc::new(move |k| {
        let (http, base, staff, customers) =
            (http.clone(), base.clone(), staff.clone(), customers.clone());
        Box::pin(async move {
            let item = sku((k as usize * 7919) % ITEMS);
            let (request, read, token) = if is_order(k, orders_percent) {
                let token = customers[k as usize % customers.len()].clone();
                (
                    http.post(format!("{base}/api/v1/orders"))
                        .bearer_auth(&*token)
                        .json(&json!({"lines": [{"sku": item, "quantity": 1}]})),
                    None,
                    token,
                )
            } else {
                (
                    http.post(format!("{base}/api/v1/inventory/items/{item}/receive"))
                        .bearer_auth(&*staff)
                        .json(&json!({"quantity": 1})),
                    Some(format!("{base}/api/v1/inventory/items/{item}")),
                    staff,
                )
            };
            let answer = request.send().await?;
            let status = answer.status();
            let body: Value = answer.json().await.unwrap_or_default();
            anyhow::ensure!(status.is_success(), "{status}: {body}");
            let version = body["version"].as_u64().context("a version")?;
            let url = match read {
                Some(url) => url,
                None => format!(
                    "{base}/api/v1/orders/{}",
                    body["id"].as_str().context("an order id")?
                ),
            };
            Ok(Sent {
                read_back: Some(ReadBack {
                    url,
                    version,
                    token,
                }),
            })
        })
    })
}

/// Waits until every relayed event is applied: the outbox empty and the last read back.
async fn settle(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Every context's outbox.
        let outboxes: Vec<String> = chronicle::contexts::names()
            .iter()
            .map(|c| format!("(SELECT count(*) FROM {c}.outbox)"))
            .collect();
        let left: i64 = sqlx::query_scalar(&format!("SELECT {}", outboxes.join(" + ")))
            .fetch_one(pool)
            .await?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the outbox did not drain ({left} rows)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The projectors and the saga read the stream behind the relay.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

/// Runs one E1 set and prints its lines.
///
/// # Errors
/// When a server or Chronicle cannot be started, or the setup fails.
pub async fn run(servers: &Servers, options: Options) -> anyhow::Result<()> {
    let fresh = servers.fresh().await?;
    let total = options.rate * options.seconds;

    eprintln!("bench: E1 reference, {total} inserts over {CONNECTIONS} connections");
    let (reference_base, reference) = reference_server(&fresh.db_url).await?;
    let send = reference_send(client(CONNECTIONS)?, reference_base);
    closed_loop(&send, CONNECTIONS, total.min(2_000)).await?; // warm the connections
    let (latencies, elapsed) = closed_loop(&send, CONNECTIONS, total).await?;
    let limit = Measurement::new("reference", "E1", CONNECTIONS, total, elapsed)
        .label("insert-per-request")
        .latencies(latencies);
    limit.print();
    reference.abort();

    let (chronicle, base) = start_with(
        &fresh.db_url,
        &fresh.nats_url,
        "up",
        &[("CHRONICLE_STAFF_USERS", "e1_staff")],
    )?;
    let pid = chronicle.0.id();
    let http = client(CONNECTIONS)?;
    let (_, staff) = user(&http, &base, "e1_staff".into()).await?;
    let mut customers = Vec::with_capacity(CUSTOMERS);
    for i in 0..CUSTOMERS {
        customers.push(Arc::from(
            user(&http, &base, format!("e1_customer_{i}")).await?.1,
        ));
    }
    eprintln!("bench: E1 creating {ITEMS} items");
    let create = {
        let (http, base, staff) = (http.clone(), base.clone(), staff.clone());
        move |i: usize| {
            let (http, base, staff) = (http.clone(), base.clone(), staff.clone());
            async move {
                let answer = http
                    .post(format!("{base}/api/v1/inventory/items"))
                    .bearer_auth(staff)
                    .json(&json!({"sku": sku(i), "name": format!("E1 item {i}"),
                        "price_cents": 100, "initial_stock": 1_000_000_000_u64}))
                    .send()
                    .await?;
                anyhow::ensure!(
                    answer.status().is_success(),
                    "creating an item: {}",
                    answer.status()
                );
                Ok(())
            }
        }
    };
    crate::w1::drive(16, ITEMS, create).await?;
    settle(&fresh.pool).await?;
    let idle_rss = settled_rss_kib(pid).await?;

    let send = chronicle_send(
        http.clone(),
        base.clone(),
        staff,
        Arc::new(customers),
        options.orders_percent,
    );
    eprintln!("bench: E1 chronicle capacity, {total} commands over {CONNECTIONS} connections");
    let peak = PeakRss::start(pid)?;
    let (latencies, elapsed) = closed_loop(&send, CONNECTIONS, total).await?;
    let capacity = Measurement::new("chronicle", "E1", CONNECTIONS, total, elapsed)
        .label("capacity")
        .latencies(latencies);
    let mut line = serde_json::to_value(&capacity)?;
    line["orders_percent"] = json!(options.orders_percent);
    line["ratio_to_reference"] =
        json!((capacity.ops_per_s / limit.ops_per_s * 100.0).round() / 100.0);
    println!("{line}");
    settle(&fresh.pool).await?;

    eprintln!(
        "bench: E1 chronicle open loop, {} commands/s for {} s",
        options.rate, options.seconds
    );
    let probe_http = client(16)?;
    let before = Scrape::of(&http, &base).await?;
    let open_loop_started = unix_nanos();
    let run = open_loop(&send, options, move |back: ReadBack| {
        let http = probe_http.clone();
        async move {
            let answer = http
                .get(format!("{}?min_version={}", back.url, back.version))
                .bearer_auth(&*back.token)
                .send()
                .await?;
            anyhow::ensure!(
                answer.status().is_success(),
                "reading back: {}",
                answer.status()
            );
            Ok(answer
                .headers()
                .get("chronicle-consistency")
                .is_some_and(|v| v == "fresh"))
        }
    })
    .await?;
    let peak_rss = peak.stop().await?;
    // The saga behind the orders: how long after the last command every order placed in
    // the run is decided (no longer `pending` in the read model).
    let drained = Instant::now();
    let pending_at_end: i64 =
        sqlx::query_scalar("SELECT count(*) FROM commerce.orders WHERE status = 'pending'")
            .fetch_one(&fresh.pool)
            .await?;
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM commerce.orders WHERE status = 'pending'")
                .fetch_one(&fresh.pool)
                .await?;
        if pending == 0 || drained.elapsed() > Duration::from_secs(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saga_drain = drained.elapsed();
    let stages = Scrape::of(&http, &base).await?.breakdown(
        &before,
        &["/api/v1/orders", "/api/v1/inventory/items/{sku}/receive"],
    );
    let waits = saga_reserved_after(&fresh.nats_url, open_loop_started).await?;
    let to_reserved =
        Measurement::new("chronicle", "E1", 1, waits.len() as u64, run.elapsed).latencies(waits);
    let done = run.latencies.len() as u64;
    let open = Measurement::new("chronicle", "E1", CONNECTIONS, done, run.elapsed)
        .label("open-loop")
        .latencies(run.latencies);
    let lag = Measurement::new("chronicle", "E1", 1, run.lags.len() as u64, run.elapsed)
        .latencies(run.lags);
    let mut line = serde_json::to_value(&open)?;
    line["rate"] = json!(options.rate);
    line["orders_percent"] = json!(options.orders_percent);
    line["errors"] = json!(run.errors);
    line["projection_lag_samples"] = json!(lag.ops);
    line["projection_lag_p50_ms"] = json!(lag.p50_ms);
    line["projection_lag_p99_ms"] = json!(lag.p99_ms);
    line["projection_lag_stale"] = json!(run.stale);
    line["orders_pending_at_end"] = json!(pending_at_end);
    line["seconds_until_every_order_decided"] =
        json!((saga_drain.as_secs_f64() * 1_000.0).round() / 1_000.0);
    line["up_rss_kib_idle"] = json!(idle_rss);
    line["up_rss_kib_peak"] = json!(peak_rss);
    line["up_rss_kib_after"] = json!(rss_kib(pid)?);
    println!("{line}");
    println!(
        "{}",
        json!({"system": "chronicle", "workload": "E1", "label": "open-loop-breakdown",
            "rate": options.rate, "stages": stages,
            "saga_to_reserved": {"orders": to_reserved.ops, "p50_ms": to_reserved.p50_ms,
                "p99_ms": to_reserved.p99_ms}})
    );
    drop(chronicle);
    Ok(())
}

fn unix_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// For each order placed since `since` (unix nanoseconds), the time from its `OrderPlaced`
/// to its `OrderReserved` in the log (their publish times): the order saga's step.
async fn saga_reserved_after(nats_url: &str, since: i128) -> anyhow::Result<Vec<Duration>> {
    use async_nats::jetstream::{self, consumer::DeliverPolicy};
    use futures::StreamExt;
    let client = chronicle_bus::connect(nats_url).await?;
    let js = jetstream::new(client);
    let mut stream = js.get_stream(chronicle_bus::EVENTS_STREAM).await?;
    let subject = format!(
        "events.commerce.{}.>",
        <chronicle_commerce::Order as cqrs_es::Aggregate>::TYPE
    );
    let last = stream.info().await?.state.last_sequence;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            filter_subject: subject,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut placed = std::collections::HashMap::new();
    let mut waits = Vec::new();
    // Until the stream's last message, or quiet (the last is not an order's event).
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let message = message?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, published) = (info.stream_sequence, info.published.unix_timestamp_nanos());
        let kind = message
            .headers
            .as_ref()
            .and_then(|h| h.get(chronicle_schemas::HEADER_EVENT_TYPE))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let order = message
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        match kind.as_str() {
            "OrderPlaced" if published >= since => {
                placed.insert(order, published);
            }
            "OrderReserved" => {
                if let Some(at) = placed.remove(&order) {
                    waits.push(Duration::from_nanos((published - at).max(0) as u64));
                }
            }
            _ => {}
        }
        if seq >= last {
            break;
        }
    }
    Ok(waits)
}

#[cfg(test)]
mod tests {
    use super::is_order;

    #[test]
    fn the_mix_has_the_asked_share_of_orders_in_every_hundred_requests() {
        for percent in [0, 1, 25, 50, 99, 100] {
            for start in [0, 37, 1_000] {
                let orders = (start..start + 100)
                    .filter(|&k| is_order(k, percent))
                    .count();
                assert_eq!(orders as u64, percent, "{percent}% from request {start}");
            }
        }
    }
}
