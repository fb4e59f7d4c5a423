//! Applying what a subscriber reads: a batch in one transaction with the checkpoint, acked
//! after the commit; when the handler fails, one event at a time, so the failing event is
//! found, retried with backoff, and parked (or held, with [`OnFailure::Stop`]) alone; and
//! the retries of parked events a client requests.

use async_nats::jetstream;
use chronicle_schemas::Envelope;
use futures::FutureExt;
use sqlx::PgConnection;

use super::{
    checkpoint, decode, parked, Delivery, Failure, Flow, Handler, HandlerError, OnFailure,
    RetryOutcome, StringError, Subscriber, SubscriberError,
};
use crate::{ensure_events_stream, ErrorChain};

impl<H: Handler> Subscriber<H> {
    /// Handles one batch in one transaction; when the handler fails, falls back to one event
    /// at a time so the failing event is found, retried, and parked alone.
    pub(super) async fn handle_batch(
        &self,
        deliveries: &[Delivery],
        expected: &mut u64,
    ) -> Result<Flow, SubscriberError> {
        let name = self.config.name.as_str();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(SubscriberError::db("starting a batch"))?;
        let stored = checkpoint::lock(&mut tx, name).await?;
        if stored < *expected {
            tracing::info!(
                subscriber = name,
                stored,
                expected,
                "checkpoint moved back (replayed); repositioning"
            );
            self.observer.repositioned(name);
            return Ok(Flow::Reposition);
        }
        let fresh: Vec<&Delivery> = deliveries.iter().filter(|d| d.seq > stored).collect();
        let Some(last) = fresh.last().map(|d| d.seq) else {
            tx.commit()
                .await
                .map_err(SubscriberError::db("committing a batch"))?;
            *expected = stored;
            for delivery in deliveries {
                delivery.ack(name).await;
            }
            return Ok(Flow::Continue);
        };
        let decoded: Result<Vec<Envelope>, HandlerError> =
            fresh.iter().map(|d| d.decode()).collect();
        let outcome = match decoded {
            Ok(events) => {
                // The batch continues the trace of its first event that carries one.
                let span = tracing::info_span!(
                    "subscriber.handle",
                    subscriber = %name,
                    events = events.len(),
                    first_seq = fresh.first().map_or(0, |d| d.seq),
                );
                if let Some(parent) = fresh.iter().find_map(|d| d.traceparent()) {
                    chronicle_telemetry::continue_trace(&span, &parent);
                }
                tracing::Instrument::instrument(self.run_handler(&mut tx, &events), span).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                checkpoint::store(&mut tx, name, last).await?;
                self.commit(tx).await?;
                *expected = last;
                let pending = deliveries.last().map_or(0, |d| d.pending);
                let after_fetch: Vec<f64> = fresh
                    .iter()
                    .map(|d| d.fetched.elapsed().as_secs_f64())
                    .collect();
                self.observer.applied(name, &after_fetch);
                self.observer.handled(name, fresh.len(), last, pending);
                for delivery in deliveries {
                    delivery.ack(name).await;
                }
                Ok(Flow::Continue)
            }
            Err(HandlerError::Fault(f)) => Err(f.into()),
            Err(_) if fresh.len() > 1 => {
                drop(tx);
                for delivery in deliveries.iter().filter(|d| d.seq <= stored) {
                    delivery.ack(name).await;
                }
                for delivery in fresh {
                    if let Flow::Reposition = self.handle_one(delivery, expected).await? {
                        return Ok(Flow::Reposition);
                    }
                }
                Ok(Flow::Continue)
            }
            Err(error) => {
                drop(tx);
                for delivery in deliveries.iter().filter(|d| d.seq <= stored) {
                    delivery.ack(name).await;
                }
                self.retry_one(fresh[0], expected, 1, Failure::from(error))
                    .await
            }
        }
    }

    /// The handler, with a panic turned into a failure like any other: a handler that
    /// panics on one event gets it parked, it does not take the subscriber down.
    async fn run_handler(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), HandlerError> {
        match std::panic::AssertUnwindSafe(self.handler.handle(conn, events))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                Err(HandlerError::failed(StringError(format!(
                    "the handler panicked: {message}"
                ))))
            }
        }
    }

    async fn commit(
        &self,
        tx: sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), SubscriberError> {
        self.faults.hit(&self.fault_points[0])?;
        tx.commit()
            .await
            .map_err(SubscriberError::db("committing a batch"))?;
        self.faults.hit(&self.fault_points[1])?;
        Ok(())
    }

    /// Handles one event in its own transaction: `Err(error)` when the handler failed.
    async fn try_one(
        &self,
        delivery: &Delivery,
        expected: &mut u64,
    ) -> Result<Result<Flow, Failure>, SubscriberError> {
        let name = self.config.name.as_str();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(SubscriberError::db("starting a transaction"))?;
        let stored = checkpoint::lock(&mut tx, name).await?;
        if stored < *expected {
            return Ok(Ok(Flow::Reposition));
        }
        if delivery.seq > stored {
            let outcome = match delivery.decode() {
                Ok(event) => {
                    self.run_handler(&mut tx, std::slice::from_ref(&event))
                        .await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {}
                Err(HandlerError::Fault(f)) => return Err(f.into()),
                Err(other) => return Ok(Err(Failure::from(other))),
            }
            checkpoint::store(&mut tx, name, delivery.seq).await?;
            // Handled at last: a subscriber stopped on it recorded it as parked.
            parked::clear(&mut tx, name, delivery.seq).await?;
            self.commit(tx).await?;
            *expected = delivery.seq;
            self.observer
                .handled(name, 1, delivery.seq, delivery.pending);
        } else {
            tx.commit()
                .await
                .map_err(SubscriberError::db("committing"))?;
            *expected = stored;
        }
        delivery.ack(name).await;
        Ok(Ok(Flow::Continue))
    }

    async fn handle_one(
        &self,
        delivery: &Delivery,
        expected: &mut u64,
    ) -> Result<Flow, SubscriberError> {
        match self.try_one(delivery, expected).await? {
            Ok(flow) => Ok(flow),
            Err(error) => self.retry_one(delivery, expected, 1, error).await,
        }
    }

    /// An event failed `attempts` times, the last with `error`: back off and try again,
    /// and when the attempts are spent, park it (or stay on it).
    async fn retry_one(
        &self,
        delivery: &Delivery,
        expected: &mut u64,
        mut attempts: u32,
        mut failure: Failure,
    ) -> Result<Flow, SubscriberError> {
        let name = self.config.name.as_str();
        let mut unrecorded = attempts;
        loop {
            let detail = ErrorChain(&*failure.error).to_string();
            if attempts < self.config.attempts && !failure.permanent {
                tracing::warn!(
                    subscriber = name,
                    stream_seq = delivery.seq,
                    attempts,
                    error = detail,
                    "event not handled; retrying"
                );
                tokio::time::sleep(self.config.backoff(attempts)).await;
            } else {
                let event_type = delivery.event_type();
                let failure = parked::Failure {
                    stream_seq: delivery.seq,
                    subject: delivery.message.subject.as_str(),
                    event_type: &event_type,
                    error: &detail,
                    attempts: unrecorded,
                };
                let mut tx = self
                    .pool
                    .begin()
                    .await
                    .map_err(SubscriberError::db("starting to park"))?;
                let stored = checkpoint::lock(&mut tx, name).await?;
                if stored < *expected {
                    return Ok(Flow::Reposition);
                }
                parked::record(&mut tx, name, &failure).await?;
                self.observer.parked(name, delivery.seq);
                unrecorded = 0;
                let park = self.config.on_failure == OnFailure::Park;
                if park && delivery.seq > stored {
                    checkpoint::store(&mut tx, name, delivery.seq).await?;
                }
                tx.commit()
                    .await
                    .map_err(SubscriberError::db("parking an event"))?;
                tracing::error!(
                    subscriber = name,
                    stream_seq = delivery.seq,
                    event_type,
                    attempts,
                    error = detail,
                    "{}",
                    if park {
                        "event parked; going on"
                    } else {
                        "event not handled; stopped on it"
                    }
                );
                if park {
                    *expected = delivery.seq.max(stored);
                    delivery.ack(name).await;
                    return Ok(Flow::Continue);
                }
                tokio::select! {
                    () = tokio::time::sleep(self.config.max_backoff) => {}
                    () = self.wake.notified() => {}
                }
            }
            match self.try_one(delivery, expected).await? {
                Ok(flow) => return Ok(flow),
                Err(again) => {
                    failure = again;
                    attempts += 1;
                    unrecorded += 1;
                }
            }
        }
    }

    /// Re-handles parked events (all, or the one at `only`) through the handler; the ones
    /// handled leave the parked list.
    pub(super) async fn retry_parked(
        &self,
        only: Option<u64>,
    ) -> Result<RetryOutcome, SubscriberError> {
        let name = self.config.name.as_str();
        let js = jetstream::new(self.client.clone());
        let stream = ensure_events_stream(&js)
            .await
            .map_err(SubscriberError::nats("opening the stream"))?;
        let mut applied = 0;
        for event in parked::parked(&self.pool, name).await? {
            // Parked by a rebuild from the event stores, which knew no stream sequence
            // (-1, -2, ...): only another rebuild reads it again.
            let Ok(seq) = u64::try_from(event.stream_seq) else {
                continue;
            };
            if only.is_some_and(|only| only != seq) {
                continue;
            }
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(SubscriberError::db("starting a retry"))?;
            // Serialises with the live loop, which holds this lock while it applies.
            let stored = checkpoint::lock(&mut tx, name).await?;
            if seq > stored {
                // The event a stopped subscriber stays on: its own loop retries it now.
                continue;
            }
            let outcome = match stream.get_raw_message(seq).await {
                Ok(message) => match decode(&message.payload, event.event_type.clone()) {
                    Ok(envelope) => {
                        self.run_handler(&mut tx, std::slice::from_ref(&envelope))
                            .await
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(HandlerError::failed(e)),
            };
            match outcome {
                Ok(()) => {
                    parked::clear(&mut tx, name, seq).await?;
                    tx.commit()
                        .await
                        .map_err(SubscriberError::db("committing a retry"))?;
                    tracing::info!(
                        subscriber = name,
                        stream_seq = seq,
                        "parked event handled on retry"
                    );
                    applied += 1;
                }
                Err(HandlerError::Fault(f)) => return Err(f.into()),
                Err(HandlerError::Failed(error) | HandlerError::Rejected(error)) => {
                    drop(tx);
                    let mut tx = self
                        .pool
                        .begin()
                        .await
                        .map_err(SubscriberError::db("starting a retry"))?;
                    let detail = ErrorChain(&*error).to_string();
                    parked::record(
                        &mut tx,
                        name,
                        &parked::Failure {
                            stream_seq: seq,
                            subject: &event.subject,
                            event_type: &event.event_type,
                            error: &detail,
                            attempts: 1,
                        },
                    )
                    .await?;
                    tx.commit()
                        .await
                        .map_err(SubscriberError::db("recording a retry"))?;
                }
            }
        }
        self.wake.notify_waiters();
        let (still_parked, _) = parked::summary(&self.pool, name).await?;
        Ok(RetryOutcome {
            applied,
            still_parked,
        })
    }
}
