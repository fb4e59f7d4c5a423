//! The read side: projectors that turn the log into Postgres read models.
//!
//! # Layout
//!
//! - [`Projection`]: what a read model provides: its name, the subjects it reads, its
//!   tables' DDL, and how it applies a batch of events inside a transaction.
//! - [`Projector`]: the runtime. A durable pull consumer per projection, positioned from the
//!   checkpoint stored in Postgres; each batch is applied and the checkpoint (the stream
//!   sequence) advanced in ONE transaction, events at or below the checkpoint are skipped,
//!   and messages are acked only after the commit (DESIGN.md invariant 4).
//! - [`replay`]: rebuilds a projection from the stream into a shadow schema with the very
//!   same apply code, then swaps it in atomically (invariant 5).
//! - [`inventory`]: the `inventory_items` read model.
//! - [`orders`]: the `orders` read model (per customer, with status history).
//! - [`posts`]: the `posts` and `post_comments` read models (blog, full-text search).
//! - [`users`]: the `users` read model (public profiles).
//! - [`status`]: checkpoints and lag, for `/api/v1/projections` and the CLI.

mod checkpoint;
mod projection;
mod registry;
mod replay;
mod runtime;

pub mod inventory;
pub mod orders;
pub mod posts;
pub mod users;

pub use checkpoint::{status, ProjectionStatus, CHECKPOINTS_DDL};
pub use projection::{Projection, ProjectionError};
pub use registry::{replay_named, run_named, setup_named, PROJECTIONS};
pub use replay::{replay, ReplayStats};
pub use runtime::{Projector, ProjectorConfig, PROJECTION_CHANNEL};
