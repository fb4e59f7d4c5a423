//! The read side: projectors that turn the log into Postgres read models.
//!
//! # Layout
//!
//! - [`Projection`]: what a read model provides: its name, the subjects it reads, its
//!   tables' DDL, and how it applies a batch of events inside a transaction.
//! - [`Projector`]: a projection on the shared subscriber runtime of `chronicle-bus`
//!   ([`chronicle_bus::Subscriber`]): each batch is applied and the checkpoint (the stream
//!   sequence) advanced in ONE transaction, in stream order, never past an event it has not
//!   applied; an event that keeps failing is parked (architecture.md invariants 4 and 8).
//! - [`ReadModel`]: a projection with its type erased, a value each context lists
//!   (`chronicle::contexts`): what the projector role, replay, set-up and status read.
//! - [`replay`]: rebuilds a projection from the stream into a shadow schema with the very
//!   same apply code, then swaps it in atomically (invariant 5).
//! - [`carts`]: each customer's cart lines, read priced at the catalog's current prices.
//! - [`chat_history`]: rooms, members with read marks, messages by `seq` (chat).
//! - [`file_metadata`]: files, and the live references to each stored hash (files).
//! - [`inventory`]: the `inventory_items` read model.
//! - [`job_triggers`]: the events each event-triggered job has yet to run for (scheduler).
//! - [`jobs`]: jobs with status and next run, and every run with its outcome (scheduler).
//! - [`orders`]: the `orders` read model (per customer, with status history).
//! - [`posts`]: the `posts` and `post_comments` read models (blog, full-text search).
//! - [`users`]: the `users` read model (public profiles).
//!
//! A context in a crate of its own (monitoring) keeps its read models there, on the same
//! [`Projection`] and [`ReadModel`].

mod projection;
mod registry;
mod replay;
mod runtime;

pub mod carts;
pub mod chat_history;
pub mod file_metadata;
pub mod inventory;
pub mod job_triggers;
pub mod jobs;
pub mod orders;
pub mod posts;
pub mod users;

pub use projection::{Definition, Projection, ProjectionError};
pub use registry::{Erased, ReadModel, ReplayFrom};
pub use replay::{replay, replay_from_store, ReplayStats};
pub use runtime::{durable_name, setup, Apply, Projector, ProjectorConfig, PROJECTION_CHANNEL};
