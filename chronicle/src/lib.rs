//! The process roles of Chronicle, declared once.
//!
//! # Layout
//!
//! - [`components`]: every role (the relay, one projector per read model, one per saga,
//!   the gateway) in ONE list, with how each is started, named, configured and deployed.
//!   `chronicle up`, the role subcommands, the test harness (`chronicle-tests`) and
//!   `compose.yaml` (written by `chronicle compose`, checked by a test) all come from it.
//!
//! - [`contexts`]: the one list of bounded contexts, each with its routes, read models and
//!   processes; the component list, the gateway and the tools read it.
//!
//! - [`roles`]: the processes of the contexts still in the shared crates (the order saga,
//!   the cart sweeper, the files janitor, the scheduler), as values the list names.
//!
//! - [`schemas`]: `chronicle schemas export`, the event contracts as files.
//!
//! - [`payments`]: the simulated payment provider the order processes (gateways charging,
//!   the saga refunding) are wired with, standing in for a real provider's adapter.
//!
//! The binary (`src/main.rs`) adds the command line, the settings and the embedded servers.

pub mod components;
pub mod contexts;
pub mod payments;
pub mod roles;
pub mod schemas;

pub use payments::{PaymentRules, SimulatedPayments};
