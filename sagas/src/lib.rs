//! Process managers: NATS subscribers that react to events by issuing commands through the
//! same [`CommandExecutor`](chronicle_commands::CommandExecutor) the gateway uses.
//!
//! # Layout
//!
//! - [`OrderSaga`] (on the subscriber runtime of `chronicle-bus`): reserves an order's stock line by line when it is placed, confirms or
//!   rejects it, releases on rejection and cancellation, commits on shipping, and gives
//!   each order a payment deadline: a one-shot job on the scheduler that cancels it unpaid. Every step is idempotent, so a redelivered event
//!   or a crash and restart at any point settles each order exactly once.

//! - [`CartSweeper`]: counts carts left untouched with lines abandoned (`CartAbandoned`),
//!   once per idle spell.
//! - [`FilesJanitor`]: every minute, removes bytes no live file refers to and the chunks of
//!   abandoned uploads, after a grace period and only with the read model caught up.
//! - [`Scheduler`]: runs every job once per due time, shared by any number of processes;
//!   its `notify` action delivers alert notifications (`notify`: webhook or mail).
//! - [`Notifier`]: delivers a notification (the monitoring context's alert engine asks the
//!   scheduler for one job per alert transition and channel).

mod carts;
mod files;
mod notify;
mod orders;
mod scheduler;

pub use carts::{CartSweepError, CartSweeper, CartSweeperConfig, CartsSwept};
pub use files::{FilesJanitor, FilesJanitorConfig, JanitorError, Swept};
pub use notify::{Notifier, NotifyConfig};
pub use orders::{deadline_job, OrderSaga, OrderSagaConfig, SagaError, ORDER_SAGA};
pub use scheduler::{Scheduler, SchedulerConfig};
