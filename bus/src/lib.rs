//! Everything Chronicle does with NATS.
//!
//! # Layout
//!
//! - [`connect`]: a client that reconnects forever (a restarted server is a pause, not an
//!   outage).
//! - [`ensure_events_stream`]: the `EVENTS` stream of docs/architecture.md: subjects
//!   `events.<context>.<aggregate_type>.<aggregate_id>`, file storage, no limits, a 2-minute
//!   duplicate window, deny delete and purge, atomic batches allowed.
//! - [`Relay`]: moves committed events from the Postgres outbox to the stream, in order,
//!   exactly once, as the single active publisher.
//! - [`Subscriber`]: the one runtime every reader of the log runs on (projectors, sagas,
//!   and the contexts to come): ordered handling with the checkpoint in the handler's
//!   transaction, gap detection, retries, parking, retry requests, [`status`].
//! - [`keep_running`]: the one retry-until-shutdown loop (relay, subscribers).
//! - [`periodic::every`]: the one periodic-task loop (sweeps, evaluations, collection,
//!   purges).
//! - [`Presence`]: who is connected, in the `presence` KV bucket every gateway shares.
//! - [`ContentStore`]: file bytes in the `files` object store bucket, named by their SHA-256.
//! - [`Faults`] (from `chronicle-commands`): named fault points the tests arm to crash a
//!   process at an exact step.

mod content;
pub mod periodic;
mod presence;
mod relay;
mod stream;
mod subscriber;
mod supervise;

pub use chronicle_commands::{DbError, ErrorChain, FaultAction, Faults, InjectedFault};
pub use content::{
    hex, thumbnail_object, upload_part, Blob, ContentError, ContentStore, Part, Sealed, Stored,
    StoredObject, Written, FILES_BUCKET, MANIFEST,
};
pub use presence::{Presence, PresenceView, PRESENCE_BUCKET, PRESENCE_TTL};
pub use relay::{Relay, RelayConfig, RelayError};
pub use stream::{
    await_events_stream, connect, ensure_events_stream, ensure_events_stream_with,
    last_sequence_on_subject, BusError, NatsError, EVENTS_STREAM,
};
pub use subscriber::{
    lock_checkpoint, parked, read_checkpoint, request_retry, setup as setup_subscriber_tables,
    status, store_checkpoint, Handler, HandlerError, LiveHandler, LiveSubscriber, Observer,
    OnFailure, ParkedEvent, RetryOutcome, Subscriber, SubscriberConfig, SubscriberError,
    SubscriberRef, SubscriberStatus,
};
pub use supervise::keep_running;
