//! The shared subscriber runtime (architecture.md invariants 4 and 8): it never skips an event it
//! has not handled, whatever happens to its consumer or to NATS, and an event its handler
//! keeps failing on is parked (or held) without stopping it for good.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_nats::jetstream::{self, consumer::pull};
use chronicle_bus::{
    Handler, HandlerError, OnFailure, Subscriber, SubscriberConfig, SubscriberError,
};
use chronicle_schemas::Envelope;
use chronicle_tests::{eventually, TestDb, TestNats};
use futures::StreamExt;
use sqlx::{PgConnection, PgPool};

use crate::common::{
    bus, create_item, start_inventory_projector, start_relay, stop_subscriber, wait_relayed,
    RunningSubscriber,
};

/// What the runtime reported through its observer hooks.
#[derive(Default)]
struct Counts {
    handled: AtomicU64,
    parked: AtomicU64,
    repositioned: AtomicU64,
}

impl Counts {
    /// The events reported handled, once at least `n` are: the runtime reports a batch
    /// just after its commit, so a read model can show it a moment before the count does.
    async fn handled_at_least(&self, n: u64) -> u64 {
        eventually(
            "the runtime to report what it handled",
            Duration::from_secs(5),
            || async {
                let handled = self.handled.load(Ordering::SeqCst);
                (handled >= n).then_some(handled)
            },
        )
        .await
    }
}

impl chronicle_bus::Observer for Counts {
    fn handled(&self, _: &str, events: usize, _: u64, _: u64) {
        self.handled.fetch_add(events as u64, Ordering::SeqCst);
    }
    fn parked(&self, _: &str, _: u64) {
        self.parked.fetch_add(1, Ordering::SeqCst);
    }
    fn repositioned(&self, _: &str) {
        self.repositioned.fetch_add(1, Ordering::SeqCst);
    }
}

fn start_projector(pool: &PgPool, client: &async_nats::Client) -> RunningSubscriber {
    start_observed_projector(pool, client, Arc::default())
}

fn start_observed_projector(
    pool: &PgPool,
    client: &async_nats::Client,
    counts: Arc<Counts>,
) -> RunningSubscriber {
    start_inventory_projector(pool, client, |p| p.with_observer(counts))
}

/// Servers, a relay and a command bus: what each test here starts from.
struct Spine {
    _db: TestDb,
    nats: TestNats,
    pool: PgPool,
    client: async_nats::Client,
    relay: crate::common::RunningRelay,
    bus: chronicle_commands::CommandExecutor,
}

impl Spine {
    async fn start() -> Self {
        let (db, nats) = (TestDb::new().await, TestNats::start());
        let pool = db
            .context_pool(chronicle_commands::contexts::COMMERCE)
            .await;
        let client = chronicle_bus::connect(&nats.url()).await.unwrap();
        let relay = start_relay(&pool, &client, Default::default());
        Self {
            bus: bus(&pool),
            _db: db,
            nats,
            pool,
            client,
            relay,
        }
    }

    async fn stop(self) {
        self.relay.stop().await;
    }
}

async fn item_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM commerce.inventory_items")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

async fn wait_items(pool: &PgPool, n: i64, within: Duration) {
    eventually("every item to reach the read model", within, || async {
        (item_count(pool).await == n).then_some(())
    })
    .await;
}

/// The finding of issue 10: a message lost in flight came back below a checkpoint that
/// later messages had moved, and was skipped for good.
#[tokio::test]
async fn a_message_taken_by_another_client_and_never_acked_still_reaches_the_read_model() {
    let spine = Spine::start().await;
    let Spine {
        pool, client, bus, ..
    } = &spine;
    let counts = Arc::new(Counts::default());
    let projector = start_observed_projector(pool, client, counts.clone());
    create_item(bus, "FIRST", 1).await;
    wait_items(pool, 1, Duration::from_secs(20)).await;

    // Hold the projector still: its next batch waits for the checkpoint row, so it stops
    // pulling while the backlog is published.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT 1 FROM commerce.projection_checkpoints WHERE name = 'inventory' FOR UPDATE",
    )
    .execute(&mut *blocker)
    .await
    .unwrap();
    for i in 0..600 {
        create_item(bus, &format!("SKU-{i:04}"), 1).await;
    }
    wait_relayed(pool, client, 601).await;

    // Another client takes one message from the projector's durable consumer, never acks.
    let js = jetstream::new(client.clone());
    let consumer: jetstream::consumer::Consumer<pull::Config> = js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .get_consumer("projector-inventory")
        .await
        .unwrap();
    let mut stolen = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let taken = stolen
        .next()
        .await
        .expect("the other client gets a message")
        .unwrap();
    let taken_seq = taken.info().unwrap().stream_sequence;
    assert!(
        taken_seq > 1,
        "a message of the backlog was taken: {taken_seq}"
    );
    blocker.rollback().await.unwrap();

    // Well within the consumer's 30 s ack wait: the gap is noticed, not waited out.
    wait_items(pool, 601, Duration::from_secs(20)).await;
    assert!(
        counts.repositioned.load(Ordering::SeqCst) >= 1,
        "the observer heard of it"
    );
    assert_eq!(
        counts.handled_at_least(601).await,
        601,
        "each event handled once"
    );
    stop_subscriber(projector).await;
    spine.stop().await;
}

#[tokio::test]
async fn the_consumer_deleted_under_a_running_projector_is_made_again_and_nothing_is_missed() {
    let spine = Spine::start().await;
    let Spine {
        pool, client, bus, ..
    } = &spine;
    let projector = start_projector(pool, client);
    for i in 0..20 {
        create_item(bus, &format!("A-{i}"), 1).await;
    }
    wait_items(pool, 20, Duration::from_secs(20)).await;

    let stream = jetstream::new(client.clone())
        .get_stream("EVENTS")
        .await
        .unwrap();
    stream.delete_consumer("projector-inventory").await.unwrap();
    for i in 0..20 {
        create_item(bus, &format!("B-{i}"), 1).await;
    }
    wait_items(pool, 40, Duration::from_secs(30)).await;
    stop_subscriber(projector).await;
    spine.stop().await;
}

#[tokio::test]
async fn nats_killed_and_restarted_mid_stream_the_projector_misses_nothing() {
    let mut spine = Spine::start().await;
    let Spine {
        pool,
        client,
        bus,
        nats,
        ..
    } = &mut spine;
    let projector = start_projector(pool, client);
    for i in 0..50 {
        create_item(bus, &format!("A-{i}"), 1).await;
    }
    // Killed while the projector is still working through the first backlog.
    nats.server.kill();
    for i in 0..50 {
        create_item(bus, &format!("B-{i}"), 1).await;
    }
    nats.server
        .restart()
        .expect("nats-server restarts on its port and store");
    wait_items(pool, 100, Duration::from_secs(40)).await;
    stop_subscriber(projector).await;
    spine.stop().await;
}

/// A handler that records every event it handles and fails on the aggregates in `poisoned`.
#[derive(Clone, Default)]
struct Recorder {
    poisoned: Arc<Mutex<HashSet<String>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("aggregate {0} is poisoned")]
struct Poisoned(String);

impl Handler for Recorder {
    fn ddl(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS recorded (seq bigserial PRIMARY KEY, aggregate_id text NOT NULL)"
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), HandlerError> {
        for event in events {
            if event.aggregate_id == "PANIC" {
                panic!("the handler has a bug");
            }
            if self.poisoned.lock().unwrap().contains(&event.aggregate_id) {
                return Err(HandlerError::failed(Poisoned(event.aggregate_id.clone())));
            }
            sqlx::query("INSERT INTO recorded (aggregate_id) VALUES ($1)")
                .bind(&event.aggregate_id)
                .execute(&mut *conn)
                .await
                .map_err(HandlerError::failed)?;
        }
        Ok(())
    }
}

impl Recorder {
    fn poison(&self, id: &str) {
        self.poisoned.lock().unwrap().insert(id.to_owned());
    }
    fn cure(&self) {
        self.poisoned.lock().unwrap().clear();
    }
}

async fn recorded(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT aggregate_id FROM recorded ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

fn recorder_config(on_failure: OnFailure) -> SubscriberConfig {
    SubscriberConfig {
        attempts: 3,
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        on_failure,
        ..SubscriberConfig::new(
            "recorder",
            "test-recorder",
            vec!["events.commerce.inventory_item.>".to_owned()],
        )
    }
}

fn start_recorder(
    pool: &PgPool,
    client: &async_nats::Client,
    recorder: &Recorder,
    on_failure: OnFailure,
) -> RunningSubscriber {
    start_observed_recorder(pool, client, recorder, on_failure, Arc::default())
}

fn start_observed_recorder(
    pool: &PgPool,
    client: &async_nats::Client,
    recorder: &Recorder,
    on_failure: OnFailure,
    counts: Arc<Counts>,
) -> RunningSubscriber {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let subscriber = Subscriber::new(
        recorder.clone(),
        pool.clone(),
        client.clone(),
        recorder_config(on_failure),
    )
    .with_observer(counts);
    let handle = tokio::spawn(subscriber.run(async move {
        let _ = rx.await;
    }));
    (handle, tx)
}

async fn status(pool: &PgPool, client: &async_nats::Client) -> chronicle_bus::SubscriberStatus {
    chronicle_bus::status(
        pool,
        &jetstream::new(client.clone()),
        "recorder",
        "test-recorder",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_event_the_handler_keeps_failing_on_is_parked_and_a_retry_applies_it_once_fixed() {
    let spine = Spine::start().await;
    let Spine {
        pool, client, bus, ..
    } = &spine;
    let recorder = Recorder::default();
    recorder.poison("BAD");
    let counts = Arc::new(Counts::default());
    let running = start_observed_recorder(pool, client, &recorder, OnFailure::Park, counts.clone());
    // In one batch with good events on both sides of it.
    create_item(bus, "GOOD-1", 1).await;
    create_item(bus, "BAD", 1).await;
    create_item(bus, "GOOD-2", 1).await;
    eventually(
        "the good events to be handled",
        Duration::from_secs(20),
        || async { (recorded(pool).await == ["GOOD-1", "GOOD-2"]).then_some(()) },
    )
    .await;

    let parked = chronicle_bus::parked(pool, "recorder").await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].subject, "events.commerce.inventory_item.BAD");
    assert_eq!(parked[0].event_type, "ItemCreated");
    assert!(
        parked[0].error.contains("BAD is poisoned"),
        "{}",
        parked[0].error
    );
    assert_eq!(parked[0].attempts, 3);
    let reported = status(pool, client).await;
    assert_eq!((reported.status, reported.parked), ("failed", 1));
    assert!(reported.error.unwrap().contains("poisoned"));
    assert_eq!(reported.checkpoint, 3, "the subscriber went on past it");
    assert_eq!(counts.parked.load(Ordering::SeqCst), 1);
    assert_eq!(counts.handled_at_least(2).await, 2);

    // Still failing: the retry says so and keeps it parked.
    let outcome = chronicle_bus::request_retry(client, "recorder", None)
        .await
        .unwrap();
    assert_eq!((outcome.applied, outcome.still_parked), (0, 1));
    assert_eq!(
        chronicle_bus::parked(pool, "recorder").await.unwrap()[0].attempts,
        4
    );

    recorder.cure();
    let outcome =
        chronicle_bus::request_retry(client, "recorder", Some(parked[0].stream_seq as u64))
            .await
            .unwrap();
    assert_eq!((outcome.applied, outcome.still_parked), (1, 0));
    assert_eq!(recorded(pool).await, ["GOOD-1", "GOOD-2", "BAD"]);
    assert_eq!(status(pool, client).await.status, "live");

    // Nothing runs the subscriber: a retry says so instead of hanging.
    stop_subscriber(running).await;
    assert!(matches!(
        chronicle_bus::request_retry(client, "recorder", None).await,
        Err(SubscriberError::NotRunning(_))
    ));
    spine.stop().await;
}

#[tokio::test]
async fn with_the_stop_policy_the_subscriber_stays_on_a_failing_event_until_it_is_handled() {
    let spine = Spine::start().await;
    let Spine {
        pool, client, bus, ..
    } = &spine;
    let recorder = Recorder::default();
    recorder.poison("BAD");
    let running = start_recorder(pool, client, &recorder, OnFailure::Stop);
    create_item(bus, "GOOD-1", 1).await;
    create_item(bus, "BAD", 1).await;
    create_item(bus, "GOOD-2", 1).await;
    eventually(
        "the failing event to be reported",
        Duration::from_secs(20),
        || async {
            let s = status(pool, client).await;
            (s.status == "failed").then_some(())
        },
    )
    .await;
    let reported = status(pool, client).await;
    assert_eq!(reported.checkpoint, 1, "it stays on the failing event");
    assert_eq!(
        recorded(pool).await,
        ["GOOD-1"],
        "nothing after it is handled"
    );

    recorder.cure();
    // The retry wakes it at once; it then handles the held event and what follows, in order.
    chronicle_bus::request_retry(client, "recorder", None)
        .await
        .unwrap();
    eventually(
        "the rest to be handled in order",
        Duration::from_secs(20),
        || async { (recorded(pool).await == ["GOOD-1", "BAD", "GOOD-2"]).then_some(()) },
    )
    .await;
    eventually(
        "the parked entry to clear",
        Duration::from_secs(10),
        || async {
            let s = status(pool, client).await;
            (s.status == "live" && s.parked == 0).then_some(())
        },
    )
    .await;
    stop_subscriber(running).await;
    spine.stop().await;
}

#[tokio::test]
async fn a_handler_that_panics_on_an_event_gets_it_parked_and_goes_on() {
    let spine = Spine::start().await;
    let Spine {
        pool, client, bus, ..
    } = &spine;
    let running = start_recorder(pool, client, &Recorder::default(), OnFailure::Park);
    create_item(bus, "PANIC", 1).await;
    create_item(bus, "AFTER", 1).await;
    eventually(
        "the event after the panic",
        Duration::from_secs(20),
        || async { (recorded(pool).await == ["AFTER"]).then_some(()) },
    )
    .await;
    let parked = chronicle_bus::parked(pool, "recorder").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0].error.contains("the handler has a bug"),
        "{}",
        parked[0].error
    );
    stop_subscriber(running).await;
    spine.stop().await;
}

/// What a live reader was handed, in order.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<String>>>);

impl chronicle_bus::LiveHandler for Heard {
    async fn handle(&self, event: Envelope) {
        if event.aggregate_id == "PANIC" {
            panic!("the live handler has a bug");
        }
        self.0.lock().unwrap().push(event.aggregate_id);
    }
}

/// The hub's reader (issue 30: on the runtime, not a loop of its own): it hears every event
/// published after it started, once and in stream order, across a NATS restart; an event
/// that does not decode, and one its handler panics on, are passed over, not a stop. More events than a consumer's batch
/// (500) go through, part of them while NATS is down.
#[tokio::test]
async fn a_live_reader_hears_every_event_after_its_start_once_in_order_across_a_nats_restart() {
    let mut spine = Spine::start().await;
    let Spine {
        pool,
        client,
        bus,
        nats,
        ..
    } = &mut spine;
    for i in 0..5 {
        create_item(bus, &format!("before-{i}"), 1).await;
    }
    wait_relayed(pool, client, 5).await;
    let heard = Heard::default();
    chronicle_bus::LiveSubscriber::new(
        "live-test",
        vec!["events.commerce.>".to_owned()],
        client.clone(),
        heard.clone(),
    )
    .start(std::future::pending())
    .await;
    let js = jetstream::new(client.clone());
    js.publish(
        "events.commerce.InventoryItem.garbage",
        "not an envelope".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    create_item(bus, "PANIC", 1).await;
    let mut expected = Vec::new();
    for i in 0..400 {
        let sku = format!("A-{i}");
        create_item(bus, &sku, 1).await;
        expected.push(sku);
    }
    nats.server.kill();
    for i in 0..400 {
        let sku = format!("B-{i}");
        create_item(bus, &sku, 1).await;
        expected.push(sku);
    }
    nats.server
        .restart()
        .expect("nats-server restarts on its port and store");
    eventually("every event heard", Duration::from_secs(60), || async {
        (heard.0.lock().unwrap().len() >= expected.len()).then_some(())
    })
    .await;
    // Nothing more comes (no event twice).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*heard.0.lock().unwrap(), expected);
    spine.stop().await;
}
