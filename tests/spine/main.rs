//! The event spine against real nats-server and PostgreSQL: DESIGN.md invariants 1–4 and
//! the inventory slice end to end.

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
