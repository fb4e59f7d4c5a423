//! The write side of Chronicle.
//!
//! # Layout
//!
//! - [`EventStore`]: loads an aggregate from the `events` table (postgres-es's layout, read
//!   through postgres-es's repository) and appends new events, their outbox rows and the
//!   idempotency record in ONE transaction (architecture.md invariant 1). It wakes the relay with
//!   `pg_notify` on its schema's channel ([`outbox_channel`]).
//! - [`CommandExecutor`] (`executor.rs`): runs a command end to end: idempotency-key replay,
//!   the `If-Match` check, `handle`, append with optimistic concurrency, a bounded retry on
//!   conflict. Its parts, one job a file: `lanes.rs` (per-aggregate queueing inside the
//!   process, and same-aggregate batching), `cache.rs` (aggregates kept between commands),
//!   `committer.rs` (group commit), `context.rs` (what a command carries and answers),
//!   `together.rs` (two aggregates' commands committed as one: a checkout).
//! - [`migrate`]: the event-store schema, and each context's schema.
//! - [`Databases`]: a pool per bounded context, on its own schema (`databases.rs`).
//! - [`Faults`]: named fault points tests arm to stop a component at an exact step.
//!
//! Why our own executor instead of cqrs-es's `CqrsFramework`: the framework cannot write the
//! outbox or the idempotency record in the events' transaction, cannot check an expected
//! version, and does not return the new version (docs/adr/0001-write-path.md).

mod cache;
mod committer;
mod context;
mod credentials;
mod databases;
mod error;
mod executor;
mod faults;
mod idempotency;
mod lanes;
mod store;
mod together;

pub use context::{CommandContext, Committed, Executable, Executed, RetryPolicy};
pub use credentials::Credentials;
pub use databases::{contexts, Databases};
pub use error::{CommandError, DbError, ErrorChain, StoreError};
pub use executor::{CommandExecutor, ExecutorConfig};
pub use faults::{FaultAction, Faults, InjectedFault};
pub use idempotency::{purge_expired, IdempotencyKey, StoredResponse, IDEMPOTENCY_TTL};
pub use store::{
    migrate, outbox_channel, EventStore, LoadedAggregate, UniqueClaim, OUTBOX_CHANNEL,
};
pub use together::{Either, Side};
