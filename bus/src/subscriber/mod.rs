//! The one runtime every reader of the log runs on: projectors, sagas, and whatever reads
//! `EVENTS` next (the WebSocket hub, the scheduler, integrations).
//!
//! A [`Subscriber`] reads its durable pull consumer and hands events, in stream order, to a
//! [`Handler`] inside a Postgres transaction that also moves the subscriber's checkpoint;
//! the messages are acknowledged only after that transaction commits. So:
//!
//! - **Nothing is applied twice.** A redelivered message at or below the checkpoint is
//!   acknowledged and skipped (architecture.md invariant 4).
//! - **Nothing is skipped.** Every delivery of a consumer carries a consumer sequence that
//!   grows by one per delivery (redeliveries included). A jump means a message went
//!   somewhere else (lost in flight across a reconnect, or fetched by another client): the
//!   subscriber stops taking messages and recreates its consumer at the checkpoint. It never
//!   advances past a message it has not handled. (Stream sequences cannot show a gap: a
//!   filtered consumer skips the subjects it does not read.)
//! - **Nothing stalls silently** (invariant 8). An event the handler fails on is retried
//!   with backoff; after [`SubscriberConfig::attempts`] it is *parked* (kept with its error
//!   in `parked_events`, shown by `GET /api/v1/projections`) and the subscriber goes on, or,
//!   with [`OnFailure::Stop`], it stays on that event, retrying slowly, and reports `failed`.
//!   Parked events are retried on request ([`request_retry`]), by the running subscriber,
//!   through its own handler.
//! - Lost connections and failed consumers end one consume round, never the subscriber: it
//!   backs off and starts over from the checkpoint ([`keep_running`](crate::keep_running)).

mod checkpoint;
mod control;
mod handling;
mod live;
mod parked;
mod status;

use std::{error::Error as StdError, future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
};
use chronicle_schemas::{DecodeError, Envelope, HEADER_EVENT_TYPE};
use futures::{FutureExt, StreamExt};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;

use crate::{ensure_events_stream, keep_running, Faults, InjectedFault};

pub use checkpoint::{
    lock as lock_checkpoint, read as read_checkpoint, setup, store as store_checkpoint,
};
pub use control::{request_retry, RetryOutcome};
pub use live::{LiveHandler, LiveSubscriber};
pub use parked::{parked, ParkedEvent};
pub use status::{status, SubscriberRef, SubscriberStatus};

/// Why a subscriber stopped a round, or a request about one failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error(transparent)]
    Database(#[from] chronicle_commands::DbError),
    #[error("NATS error while {context}")]
    Nats {
        context: &'static str,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// No process runs the subscriber that a request was for.
    #[error("no running subscriber {0:?} answered")]
    NotRunning(String),
    #[error(transparent)]
    Fault(#[from] InjectedFault),
}

impl SubscriberError {
    pub(crate) fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database(chronicle_commands::DbError { context, source })
    }
    pub(crate) fn nats<E: StdError + Send + Sync + 'static>(
        context: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |source| Self::Nats {
            context,
            source: Box::new(source),
        }
    }
}

/// Why a handler did not handle an event.
#[derive(Debug)]
pub enum HandlerError {
    /// An armed fault point: the subscriber stops at once, as a crash would stop it.
    Fault(InjectedFault),
    /// The event could not be handled (yet): it is retried, then parked.
    Failed(Box<dyn StdError + Send + Sync>),
    /// The event can never be handled by this code (it does not decode, or carries a value
    /// the read model cannot hold): it is parked at once, without retries.
    Rejected(Box<dyn StdError + Send + Sync>),
}

impl HandlerError {
    pub fn failed(error: impl StdError + Send + Sync + 'static) -> Self {
        Self::Failed(Box::new(error))
    }

    pub fn rejected(error: impl StdError + Send + Sync + 'static) -> Self {
        Self::Rejected(Box::new(error))
    }
}

/// What a subscriber does with each batch of events.
pub trait Handler: Send + Sync + 'static {
    /// DDL the handler needs (idempotent), run before the subscriber starts.
    fn ddl(&self) -> &'static str {
        ""
    }

    /// Handles `events` (stream order, each newer than the checkpoint) inside the caller's
    /// transaction, which commits with the new checkpoint when this returns `Ok`. Effects
    /// outside the transaction (commands a saga issues) must be safe to repeat: the events
    /// are handled again if the commit does not happen.
    fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [Envelope],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

/// Hooks the runtime calls as it works, for metrics (lag, throughput, parked events,
/// repositions). Every method defaults to nothing.
pub trait Observer: Send + Sync + 'static {
    /// `events` were handled and committed; the checkpoint is now `checkpoint`, with
    /// `pending` more messages for this subscriber in the stream (lag in events).
    fn handled(&self, _subscriber: &str, _events: usize, _checkpoint: u64, _pending: u64) {}
    /// A batch was fetched, each event `after_publish` seconds after JetStream stored it.
    fn delivered(&self, _subscriber: &str, _after_publish: &[f64]) {}
    /// What a batch's events made (read model rows, saga steps) was committed, each
    /// `after_fetch` seconds after it was fetched.
    fn applied(&self, _subscriber: &str, _after_fetch: &[f64]) {}
    /// The event at `stream_seq` was parked (or, with [`OnFailure::Stop`], held).
    fn parked(&self, _subscriber: &str, _stream_seq: u64) {}
    /// A delivery went missing or the checkpoint moved back: the consumer starts over from
    /// the checkpoint.
    fn repositioned(&self, _subscriber: &str) {}
}

struct Unobserved;
impl Observer for Unobserved {}

/// Every subscriber's own metrics (`chronicle_subscriber_*{subscriber}`), recorded before the
/// observer a caller gave is told.
struct Metered(Arc<dyn Observer>);

impl Observer for Metered {
    fn handled(&self, subscriber: &str, events: usize, checkpoint: u64, pending: u64) {
        let label = [("subscriber", subscriber.to_owned())];
        metrics::counter!("chronicle_subscriber_events_total", &label).increment(events as u64);
        metrics::gauge!("chronicle_subscriber_checkpoint", &label).set(checkpoint as f64);
        metrics::gauge!("chronicle_subscriber_lag_events", &label).set(pending as f64);
        metrics::gauge!("chronicle_subscriber_caught_up", &label).set(if pending == 0 {
            1.0
        } else {
            0.0
        });
        self.0.handled(subscriber, events, checkpoint, pending);
    }

    fn delivered(&self, subscriber: &str, after_publish: &[f64]) {
        let histogram = metrics::histogram!("chronicle_subscriber_delivery_seconds", "subscriber" => subscriber.to_owned());
        after_publish.iter().for_each(|s| histogram.record(*s));
        self.0.delivered(subscriber, after_publish);
    }

    fn applied(&self, subscriber: &str, after_fetch: &[f64]) {
        let histogram = metrics::histogram!("chronicle_subscriber_apply_seconds", "subscriber" => subscriber.to_owned());
        after_fetch.iter().for_each(|s| histogram.record(*s));
        self.0.applied(subscriber, after_fetch);
    }

    fn parked(&self, subscriber: &str, stream_seq: u64) {
        metrics::counter!("chronicle_subscriber_parked_total", "subscriber" => subscriber.to_owned())
            .increment(1);
        self.0.parked(subscriber, stream_seq);
    }

    fn repositioned(&self, subscriber: &str) {
        metrics::counter!(
            "chronicle_subscriber_repositions_total",
            "subscriber" => subscriber.to_owned()
        )
        .increment(1);
        self.0.repositioned(subscriber);
    }
}

/// How long a subscriber waits for a message before it looks whether its checkpoint was
/// moved back meanwhile (a rebuild, `replay --from postgres`).
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// What a subscriber does with an event its handler keeps failing on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Park it and go on with the next one (the default: one bad event never holds up the
    /// others).
    Park,
    /// Stay on it, retrying every `max_backoff` (or at once when a retry is requested), and
    /// report `failed` until it is handled: for subscribers where order matters more than
    /// progress.
    Stop,
}

/// Who a subscriber is and how it behaves.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Its checkpoint row, its parked events, its line in `GET /api/v1/projections`.
    pub name: String,
    /// Its durable consumer on `EVENTS`.
    pub durable: String,
    /// The subjects it reads (NATS wildcards allowed).
    pub subjects: Vec<String>,
    /// Most events handled in one transaction.
    pub batch_max: usize,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Tries of one event before it is parked (or the subscriber stops on it).
    pub attempts: u32,
    /// The pause after the first failure; it doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub on_failure: OnFailure,
    /// Prefix of its fault points: `<prefix>.before_commit` (handled, transaction open) and
    /// `<prefix>.after_commit` (committed, messages not yet acked).
    pub fault_prefix: &'static str,
}

impl SubscriberConfig {
    /// Defaults: batches of 500, ack wait 30 s, 5 attempts from 100 ms, park and go on.
    pub fn new(name: impl Into<String>, durable: impl Into<String>, subjects: Vec<String>) -> Self {
        Self {
            name: name.into(),
            durable: durable.into(),
            subjects,
            batch_max: 500,
            ack_wait: Duration::from_secs(30),
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            on_failure: OnFailure::Park,
            fault_prefix: "subscriber",
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// The core NATS subject on which a running subscriber takes retry requests.
pub(crate) fn control_subject(name: &str) -> String {
    format!("chronicle.control.subscribers.{name}.retry")
}

/// One delivered message, its stream sequence, and how many messages were pending after it.
struct Delivery {
    seq: u64,
    pending: u64,
    message: jetstream::Message,
    /// When this subscriber fetched it (with the rest of its batch).
    fetched: std::time::Instant,
}

impl Delivery {
    /// The trace context the relay sent the event with, if any.
    fn traceparent(&self) -> Option<String> {
        self.message
            .headers
            .as_ref()
            .and_then(|h| h.get(chronicle_telemetry::TRACEPARENT))
            .map(|v| v.as_str().to_owned())
    }

    fn event_type(&self) -> String {
        event_type(&self.message)
    }

    fn decode(&self) -> Result<Envelope, HandlerError> {
        let mut envelope = decode(&self.message.payload, self.event_type())?;
        envelope.stream_seq = Some(self.seq);
        Ok(envelope)
    }

    async fn ack(&self, name: &str) {
        // A lost ack means a redelivery, which the checkpoint skips.
        if let Err(e) = self.message.ack().await {
            tracing::debug!(subscriber = name, error = %e, "ack failed");
        }
    }
}

/// The event type a message's headers name.
fn event_type(message: &jetstream::Message) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_EVENT_TYPE))
        .map_or_else(|| "unknown".to_owned(), |v| v.as_str().to_owned())
}

fn decode(payload: &[u8], event_type: String) -> Result<Envelope, HandlerError> {
    serde_json::from_slice(payload)
        .map_err(|source| HandlerError::rejected(DecodeError { event_type, source }))
}

/// Why the handler did not handle an event, and whether trying again can help.
struct Failure {
    error: Box<dyn StdError + Send + Sync>,
    permanent: bool,
}

impl From<HandlerError> for Failure {
    fn from(error: HandlerError) -> Self {
        match error {
            HandlerError::Failed(error) => Self {
                error,
                permanent: false,
            },
            HandlerError::Rejected(error) => Self {
                error,
                permanent: true,
            },
            // Faults stop the subscriber before a failure is made of them.
            HandlerError::Fault(fault) => Self {
                error: Box::new(fault),
                permanent: false,
            },
        }
    }
}

/// Whether a consume round goes on or starts over from the checkpoint.
enum Flow {
    Continue,
    Reposition,
}

/// Runs one [`Handler`] against the live stream. One instance per subscriber is expected;
/// a second would not apply anything twice (the checkpoint row is locked per batch), but
/// the two would keep repositioning each other's consumer.
pub struct Subscriber<H> {
    handler: Arc<H>,
    pool: PgPool,
    client: async_nats::Client,
    config: SubscriberConfig,
    faults: Faults,
    /// Wakes a subscriber stopped on an event when a retry is requested.
    wake: Arc<Notify>,
    /// Its two fault point names, made once (`<prefix>.before_commit`, `.after_commit`).
    fault_points: [String; 2],
    observer: Arc<dyn Observer>,
}

impl<H: Handler> Subscriber<H> {
    pub fn new(
        handler: H,
        pool: PgPool,
        client: async_nats::Client,
        config: SubscriberConfig,
    ) -> Self {
        let fault_points = [
            format!("{}.before_commit", config.fault_prefix),
            format!("{}.after_commit", config.fault_prefix),
        ];
        Self {
            handler: Arc::new(handler),
            pool,
            client,
            config,
            faults: Faults::default(),
            wake: Arc::new(Notify::new()),
            observer: Arc::new(Metered(Arc::new(Unobserved))),
            fault_points,
        }
    }

    /// Reports progress, parked events and repositions to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Arc::new(Metered(observer));
        self
    }

    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    pub fn config(&self) -> &SubscriberConfig {
        &self.config
    }

    /// Creates the checkpoint, parked-events and handler tables if they are missing.
    ///
    /// # Errors
    /// When the DDL fails.
    pub async fn setup(&self) -> Result<(), SubscriberError> {
        setup(&self.pool, self.handler.ddl()).await
    }

    /// Runs until `shutdown` completes or a fault point stops it, answering retry requests
    /// on the side. Lost connections are retried; they never end it.
    ///
    /// # Errors
    /// Only [`SubscriberError::Fault`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), SubscriberError> {
        let name = self.config.name.clone();
        tokio::select! {
            result = keep_running(&name, shutdown, || self.consume(), |e| {
                matches!(e, SubscriberError::Fault(_))
            }) => result,
            () = self.serve_retries() => Ok(()),
        }
    }

    async fn consume(&self) -> Result<(), SubscriberError> {
        self.setup().await?;
        let js = jetstream::new(self.client.clone());
        let stream = ensure_events_stream(&js)
            .await
            .map_err(SubscriberError::nats("opening the stream"))?;
        let mut expected = checkpoint::read(&self.pool, &self.config.name).await?;
        let consumer = self.recreate_consumer(&stream, expected).await?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(SubscriberError::nats("consuming"))?;
        let mut next_delivery = 1;
        loop {
            let first = match tokio::time::timeout(IDLE_CHECK, messages.next()).await {
                Ok(next) => next
                    .ok_or_else(|| SubscriberError::nats("consuming")(ConsumerEnded))?
                    .map_err(SubscriberError::nats("consuming"))?,
                Err(_) => {
                    // Quiet: a rebuild may have moved the checkpoint back below where this
                    // consumer starts (after the stream was lost and made again, new events
                    // would never reach it). Start over from the checkpoint if so.
                    if checkpoint::read(&self.pool, &self.config.name).await? < expected {
                        tracing::info!(
                            subscriber = self.config.name,
                            "checkpoint moved back while idle (rebuilt); repositioning"
                        );
                        self.observer.repositioned(&self.config.name);
                        return Ok(());
                    }
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < self.config.batch_max {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            let fetched = std::time::Instant::now();
            let mut deliveries = Vec::with_capacity(batch.len());
            let mut after_publish = Vec::with_capacity(batch.len());
            let mut gap = false;
            for message in batch {
                let info = message.info().map_err(|e| {
                    SubscriberError::nats("reading message info")(StringError(e.to_string()))
                })?;
                if info.consumer_sequence != next_delivery {
                    tracing::warn!(
                        subscriber = self.config.name,
                        expected = next_delivery,
                        delivered = info.consumer_sequence,
                        stream_seq = info.stream_sequence,
                        "a delivery went missing; repositioning at the checkpoint"
                    );
                    self.observer.repositioned(&self.config.name);
                    gap = true;
                    break;
                }
                next_delivery += 1;
                after_publish.push(seconds_since(info.published.unix_timestamp_nanos()));
                deliveries.push(Delivery {
                    seq: info.stream_sequence,
                    pending: info.pending,
                    message,
                    fetched,
                });
            }
            self.observer.delivered(&self.config.name, &after_publish);
            if !deliveries.is_empty() {
                if let Flow::Reposition = self.handle_batch(&deliveries, &mut expected).await? {
                    return Ok(());
                }
            }
            if gap {
                return Ok(());
            }
        }
    }

    /// The durable consumer, recreated to deliver from right after `checkpoint`: whatever
    /// an earlier one had in flight is dropped with it, so nothing waits for an ack timeout
    /// and delivery numbers start again at 1.
    async fn recreate_consumer(
        &self,
        stream: &jetstream::stream::Stream,
        checkpoint: u64,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, SubscriberError> {
        let durable = &self.config.durable;
        if stream.get_consumer::<pull::Config>(durable).await.is_ok() {
            stream
                .delete_consumer(durable)
                .await
                .map_err(SubscriberError::nats("deleting the consumer"))?;
        }
        stream
            .create_consumer(pull::Config {
                durable_name: Some(durable.clone()),
                filter_subjects: self.config.subjects.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: checkpoint + 1,
                },
                ack_policy: AckPolicy::Explicit,
                ack_wait: self.config.ack_wait,
                max_ack_pending: (self.config.batch_max * 4).max(64) as i64,
                ..Default::default()
            })
            .await
            .map_err(SubscriberError::nats("creating the consumer"))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the consumer ended")]
struct ConsumerEnded;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StringError(String);

/// Seconds from `unix_nanos` (a JetStream timestamp) to now; 0 if the clocks disagree.
fn seconds_since(unix_nanos: i128) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    (now - unix_nanos).max(0) as f64 / 1e9
}
