//! Readers of the log that keep no checkpoint: a process's live fan-out (the WebSocket hub
//! passes room and order events to the clients connected to it) reads the events published
//! from the moment it starts, in stream order, and nothing from before.
//!
//! It runs on the same pieces as a [`Subscriber`](super::Subscriber): the one reconnect and
//! backoff ([`keep_running`]), the same decoding (an event that does not decode is counted
//! and passed over, never a stop: architecture.md invariant 8) and the same metrics
//! (`chronicle_subscriber_*{subscriber}`, through the runtime's observer); a handler that
//! panics on an event loses that event, never the reader. What it does not
//! have is what needs a checkpoint: a transaction per batch, parking, retries on request. A
//! round that fails starts again right after the last event it handled (or, before the
//! first, after the stream's last sequence when it started), so a reconnect loses nothing
//! the stream still holds.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use chronicle_schemas::Envelope;
use futures::{FutureExt, StreamExt};
use tokio::sync::oneshot;

use super::{decode, event_type, ConsumerEnded, Metered, Observer, SubscriberError, Unobserved};
use crate::{ensure_events_stream, keep_running};

/// What a live reader does with each event, in stream order.
pub trait LiveHandler: Send + Sync + 'static {
    fn handle(&self, event: Envelope) -> impl Future<Output = ()> + Send + '_;
}

/// One live reader of `EVENTS`, per process.
pub struct LiveSubscriber<H> {
    name: String,
    subjects: Vec<String>,
    client: async_nats::Client,
    handler: Arc<H>,
    observer: Arc<dyn Observer>,
    /// The stream sequence it reads after: the stream's last when it first opened it ("now"),
    /// then the last event handled. `None` until the stream was first opened.
    position: Mutex<Option<u64>>,
    /// Told once the first consumer was asked for, made or not.
    ready: Mutex<Option<oneshot::Sender<()>>>,
}

impl<H: LiveHandler> LiveSubscriber<H> {
    /// `name` labels its metrics and logs; `subjects` are what it reads (NATS wildcards).
    pub fn new(
        name: impl Into<String>,
        subjects: Vec<String>,
        client: async_nats::Client,
        handler: H,
    ) -> Self {
        Self {
            name: name.into(),
            subjects,
            client,
            handler: Arc::new(handler),
            observer: Arc::new(Metered(Arc::new(Unobserved))),
            position: Mutex::new(None),
            ready: Mutex::new(None),
        }
    }

    /// Starts it on its own task and returns once its first consumer was asked for: an
    /// event published after a successful start reaches the handler. (If that first try
    /// failed, the reader keeps trying, and reads from the moment it succeeds.)
    pub async fn start(mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (ready, started) = oneshot::channel();
        self.ready = Mutex::new(Some(ready));
        tokio::spawn(async move {
            if let Err(e) = self.run(shutdown).await {
                tracing::error!(error = %crate::ErrorChain(&e), "a live reader stopped");
            }
        });
        let _ = started.await;
    }

    /// Runs until `shutdown` completes; lost connections and consumers are retried.
    ///
    /// # Errors
    /// None today: nothing it meets is fatal (it has no fault points).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), SubscriberError> {
        let name = self.name.clone();
        keep_running(&name, shutdown, || self.consume(), |_| false).await
    }

    async fn consume(&self) -> Result<(), SubscriberError> {
        let consumer = self.consumer().await;
        if let Some(ready) = self.ready.lock().map(|mut r| r.take()).unwrap_or_default() {
            let _ = ready.send(());
        }
        let mut messages = consumer?
            .messages()
            .await
            .map_err(SubscriberError::nats("consuming"))?;
        let mut handled = false;
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                // A round that got somewhere starts again at once (the backoff is for rounds
                // that fail from the start).
                Err(e) if handled => {
                    tracing::warn!(subscriber = self.name, error = %crate::ErrorChain(&e), "the live consumer failed; resuming after the last event");
                    return Ok(());
                }
                Err(e) => return Err(SubscriberError::nats("consuming")(e)),
            };
            let info = message.info().map_err(|e| {
                SubscriberError::nats("reading message info")(super::StringError(e.to_string()))
            })?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            match decode(&message.payload, event_type(&message)) {
                Ok(envelope) => {
                    // A handler that panics on an event loses that event, not the reader.
                    let handled = std::panic::AssertUnwindSafe(self.handler.handle(envelope))
                        .catch_unwind()
                        .await;
                    if handled.is_err() {
                        tracing::error!(
                            subscriber = self.name,
                            stream_seq = seq,
                            "the handler panicked on an event; it was passed over"
                        );
                        metrics::counter!("chronicle_subscriber_handler_panics_total", "subscriber" => self.name.clone())
                            .increment(1);
                    }
                }
                Err(e) => {
                    tracing::warn!(subscriber = self.name, stream_seq = seq, error = ?e, "an event that does not decode was passed over");
                    metrics::counter!("chronicle_subscriber_undecodable_total", "subscriber" => self.name.clone())
                        .increment(1);
                }
            }
            *self.position.lock().unwrap_or_else(PoisonError::into_inner) = Some(seq);
            self.observer.handled(&self.name, 1, seq, pending);
            handled = true;
        }
        Err(SubscriberError::nats("consuming")(ConsumerEnded))
    }

    /// An ordered consumer right after its position: the stream's last sequence when it first
    /// opened the stream, then the last event handled. So a round that fails, even before
    /// its first event, starts again where it was: nothing published meanwhile is missed.
    async fn consumer(
        &self,
    ) -> Result<
        jetstream::consumer::Consumer<jetstream::consumer::pull::OrderedConfig>,
        SubscriberError,
    > {
        let js = jetstream::new(self.client.clone());
        let stream = ensure_events_stream(&js)
            .await
            .map_err(SubscriberError::nats("opening the stream"))?;
        let after = *self
            .position
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(stream.cached_info().state.last_sequence);
        let deliver_policy = DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        };
        stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subjects: self.subjects.clone(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(SubscriberError::nats("creating a consumer"))
    }
}
