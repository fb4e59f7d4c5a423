//! The black-box suite against a real nats-server and PostgreSQL (one cluster for the
//! binary, one database per test): every invariant of `docs/architecture.md` (1–10), and
//! every context end to end through its HTTP API, WebSocket and log. One module per area;
//! `docs/guarantees.md` names the tests that prove each promise.

mod abandoned_carts;
mod authz;
mod blog;
mod cart;
mod catalog;
mod chat;
mod commerce;
mod common;
mod content;
mod contracts;
mod event_jobs;
mod files;
mod gateway;
mod group_commit;
mod hostile;
mod hub;
mod identity;
mod janitor;
mod openapi;
mod projector;
mod relay;
mod replay_store;
mod scheduler;
mod schemas;
mod stream;
mod subscriber;
mod tus;
mod write_side;
