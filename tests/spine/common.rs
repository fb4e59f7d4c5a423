//! Helpers shared by the spine tests.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use chronicle_bus::{Faults, Relay, RelayConfig};
use chronicle_commands::{CommandContext, CommandError, CommandExecutor, EventStore, Executed};
use chronicle_commerce::{InventoryCommand, InventoryError, InventoryItem};
use chronicle_projections::{inventory::InventoryProjection, Projector, ProjectorConfig};
use chronicle_schemas::Envelope;
use futures::StreamExt;
use reqwest::{Response, StatusCode};
use sqlx::PgPool;
use tokio::task::JoinHandle;

pub fn bus(pool: &PgPool) -> CommandExecutor {
    CommandExecutor::new(EventStore::new(pool.clone()))
}

pub async fn create_item(bus: &CommandExecutor, sku: &str, stock: u64) -> u64 {
    let done = bus
        .execute::<InventoryItem>(
            sku,
            InventoryCommand::Create {
                sku: sku.into(),
                name: format!("Item {sku}"),
                price_cents: 100,
                initial_stock: stock,
            },
            &(),
            &CommandContext::new(),
        )
        .await
        .expect("creating an item succeeds");
    match done {
        Executed::Committed(c) => c.version,
        Executed::Replayed(_) => panic!("no idempotency key was sent"),
    }
}

pub async fn receive(bus: &CommandExecutor, sku: &str, quantity: u64) {
    inventory(bus, sku, receipt(quantity), &CommandContext::new())
        .await
        .expect("receiving stock succeeds");
}

/// Runs an inventory command on item `sku`.
pub async fn inventory(
    bus: &CommandExecutor,
    sku: &str,
    command: InventoryCommand,
    ctx: &CommandContext,
) -> Result<Executed, CommandError<InventoryError>> {
    bus.execute::<InventoryItem>(sku, command, &(), ctx).await
}

pub fn receipt(quantity: u64) -> InventoryCommand {
    InventoryCommand::Receive { quantity }
}

pub fn reservation(reservation_id: impl Into<String>, quantity: u64) -> InventoryCommand {
    InventoryCommand::Reserve {
        reservation_id: reservation_id.into(),
        quantity,
    }
}

pub async fn count(pool: &PgPool, table: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count query");
    n
}

/// Waits until `sql` (one `bigint`) answers `expected`: its name in the panic is `what`.
pub async fn count_reaches(pool: &PgPool, what: &str, sql: &str, expected: i64) {
    chronicle_tests::eventually(what, Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.ok()?;
        (n == expected).then_some(())
    })
    .await;
}

/// Waits until the business series `metric` adds up to `expected` over all its minutes.
pub async fn business_series_reaches(pool: &PgPool, metric: &str, expected: i64) {
    let sql = format!(
        "SELECT coalesce(sum(value), 0)::bigint FROM monitoring.business_series \
         WHERE metric = '{metric}'"
    );
    count_reaches(pool, metric, &sql, expected).await;
}

/// A running relay and the means to stop it.
pub struct RunningRelay {
    pub handle: JoinHandle<Result<(), chronicle_bus::RelayError>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningRelay {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.handle
            .await
            .expect("the relay task does not panic")
            .expect("the relay stops cleanly");
    }
}

pub fn start_relay(pool: &PgPool, client: &async_nats::Client, faults: Faults) -> RunningRelay {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let relay = Relay::new(
        pool.clone(),
        client.clone(),
        RelayConfig {
            poll_interval: Duration::from_millis(50),
            ..RelayConfig::default()
        },
    )
    .with_faults(faults);
    let handle = tokio::spawn(relay.run(async move {
        let _ = rx.await;
    }));
    RunningRelay {
        handle,
        stop: Some(tx),
    }
}

/// A subscriber (a projector, say) running as a task, and the sender that stops it.
pub type RunningSubscriber = (
    JoinHandle<Result<(), chronicle_bus::SubscriberError>>,
    tokio::sync::oneshot::Sender<()>,
);

/// Runs the inventory projector on `pool` as `configure` leaves it (fault points armed, an
/// observer), until [`stop_subscriber`].
pub fn start_inventory_projector(
    pool: &PgPool,
    client: &async_nats::Client,
    configure: impl FnOnce(Projector<InventoryProjection>) -> Projector<InventoryProjection>,
) -> RunningSubscriber {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let projector = configure(Projector::new(
        InventoryProjection,
        pool.clone(),
        client.clone(),
        ProjectorConfig::default(),
    ));
    let handle = tokio::spawn(projector.run(async move {
        let _ = rx.await;
    }));
    (handle, tx)
}

/// Stops a subscriber task: it must stop cleanly.
pub async fn stop_subscriber((handle, stop): RunningSubscriber) {
    let _ = stop.send(());
    handle.await.unwrap().expect("the subscriber stops cleanly");
}

/// Every message in the EVENTS stream, in stream order, decoded.
pub async fn stream_contents(client: &async_nats::Client) -> Vec<Envelope> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream("EVENTS")
        .await
        .expect("the EVENTS stream exists");
    let total = stream.get_info().await.expect("stream info").state.messages;
    if total == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("consume");
    let mut out = Vec::new();
    while (out.len() as u64) < total {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream delivers what it holds")
            .expect("the consumer does not end")
            .expect("a message");
        out.push(serde_json::from_slice(&msg.payload).expect("payloads are envelopes"));
    }
    out
}

/// Waits until the stream holds `n` messages and the outbox is empty.
pub async fn wait_relayed(pool: &PgPool, client: &async_nats::Client, n: u64) {
    let js = jetstream::new(client.clone());
    chronicle_tests::eventually(
        "the relay to drain the outbox",
        Duration::from_secs(20),
        || {
            let js = js.clone();
            let pool = pool.clone();
            async move {
                let messages = match js.get_stream("EVENTS").await {
                    Ok(stream) => stream.get_info().await.ok()?.state.messages,
                    Err(_) => return None,
                };
                let outbox = count(&pool, "outbox").await;
                (messages >= n && outbox == 0).then_some(())
            }
        },
    )
    .await;
}

pub use chronicle_tests::{assert_replays_byte_for_byte, invalid_fields, problem};

/// [`chronicle_tests::TestApp::create_item`] named `Item <sku>`.
pub async fn post_named_item(
    app: &chronicle_tests::TestApp,
    sku: &str,
    price_cents: i64,
    stock: i64,
) {
    app.create_item(sku, &format!("Item {sku}"), price_cents, stock)
        .await;
}

/// Staff receive `quantity` more of `sku` over HTTP (as the app's user).
pub async fn post_receipt(app: &chronicle_tests::TestApp, sku: &str, quantity: u64) {
    let r = app
        .post(
            &format!("/api/v1/inventory/items/{sku}/receive"),
            serde_json::json!({"quantity": quantity}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
}

/// The names of every object in the `files` bucket, sorted.
pub async fn file_objects(client: async_nats::Client) -> Vec<String> {
    let raw = jetstream::new(client)
        .get_object_store(chronicle_bus::FILES_BUCKET)
        .await
        .unwrap();
    let mut names: Vec<String> = raw
        .list()
        .await
        .unwrap()
        .map(|info| info.unwrap().name)
        .collect()
        .await;
    names.sort();
    names
}

/// `POST /api/v1/files` from `base` with `bytes` as the multipart field `file`, named `name`
/// and typed `mime`, as `token`'s holder.
pub async fn post_file(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    bytes: Vec<u8>,
    name: &str,
    mime: &str,
) -> Response {
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str(mime)
        .unwrap();
    http.post(format!("{base}/api/v1/files"))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap()
}
