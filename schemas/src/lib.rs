//! The contract between every producer and consumer of Chronicle events.
//!
//! # Layout
//!
//! - [`Envelope`]: what is stored with each event and published to JetStream: event id,
//!   type, version, aggregate, sequence, recorded-at, correlation and causation ids, actor.
//! - [`AggregateKind`]: the bounded context and aggregate type that name a stream of events,
//!   and from them the NATS subject of each event ([`subject_for`]).
//! - [`blog`]: the payloads of the blog context (posts, comments).
//! - [`chat`]: the payloads of the chat context (rooms, members, messages, read marks).
//! - [`commerce`]: the payloads of the commerce context (inventory, orders, coupons).
//! - [`contracts`]: the JSON Schema of the envelope and of every event type and version
//!   (`chronicle schemas export`).
//! - [`examples`]: an example of every event type, exported in its schema.
//! - [`files`]: the payloads of the files context (files, uploads, share links; no bytes,
//!   no tokens).
//! - [`identity`]: the payloads of the identity context (users, no secrets).
//! - [`limits`]: the input limits every domain crate applies (text, quantities, money).
//! - [`scheduler`]: the payloads of the scheduler context (jobs, runs and their outcome).
//! - [`testing`]: running a command without a store, and the projectability check, for
//!   the domain crates' property tests.
//!
//! Payload types are versioned by their `event_version`; an old version is upcast on
//! every read ([`upcast`]), never edited. This crate does no I/O.

/// `impl DomainEvent` for an event enum: each variant's event type is its name, and its
/// version the current one ([`current_version`]: "1" until an upcaster makes another). The
/// match is exhaustive, so a variant left out of the list does not compile. (A context crate
/// using it depends on `cqrs-es`.)
#[macro_export]
macro_rules! event_types {
    ($events:ident: $($variant:ident),+ $(,)?) => {
        impl cqrs_es::DomainEvent for $events {
            fn event_type(&self) -> String {
                match self {
                    $(Self::$variant { .. } => stringify!($variant),)+
                }
                .to_owned()
            }

            fn event_version(&self) -> String {
                $crate::current_version(&self.event_type()).to_owned()
            }
        }
    };
}

/// `impl Aggregate` for an aggregate that decides with its own `decide(&self, command) ->
/// Result<Vec<Event>, Error>` and applies with `apply_event(&mut self, event)`, needing no
/// services: `decided_aggregate!(Post: "post", PostCommand => PostEvent, PostError);`, the
/// string being its aggregate type. (A context crate using it depends on `cqrs-es`.)
#[macro_export]
macro_rules! decided_aggregate {
    ($aggregate:ty: $type:literal, $command:ty => $event:ty, $error:ty) => {
        impl cqrs_es::Aggregate for $aggregate {
            const TYPE: &'static str = $type;
            type Command = $command;
            type Event = $event;
            type Error = $error;
            type Services = ();

            async fn handle(
                &mut self,
                command: $command,
                _services: &(),
                sink: &cqrs_es::event_sink::EventSink<Self>,
            ) -> Result<(), $error> {
                for event in self.decide(command)? {
                    sink.write(event, self).await;
                }
                Ok(())
            }

            fn apply(&mut self, event: $event) {
                self.apply_event(event);
            }
        }
    };
}

mod envelope;

pub mod blog;
pub mod chat;
pub mod commerce;
pub mod contracts;
pub mod examples;
pub mod files;
pub mod identity;
pub mod limits;
pub mod scheduler;
pub mod testing;
mod upcast;

pub use envelope::{
    is_valid_subject_token, read_untagged, subject_for, untagged, AggregateKind, DecodeError,
    Envelope, Metadata, StoredEvent, HEADER_AGGREGATE_SEQUENCE, HEADER_CORRELATION_ID,
    HEADER_EVENT_TYPE, HEADER_EVENT_VERSION, SUBJECT_ROOT,
};
pub use upcast::{current_version, is_current, upcast};
