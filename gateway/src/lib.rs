//! The HTTP gateway (API.md).
//!
//! # Layout
//!
//! - [`router`] builds the axum app from an [`AppState`]; [`serve`] runs it with graceful
//!   shutdown. Building and running are apart so tests serve the same router on port 0.
//! - `error`: [`ApiError`], the one error type; every failure, axum's own rejections
//!   included, leaves as RFC 9457 problem+json with a stable `code`.
//! - `extract`: request extractors that fail with [`ApiError`]: JSON bodies (raw bytes kept
//!   for idempotency hashing), `If-Match`, `Idempotency-Key`, the caller.
//! - `cache`: the moka cache in front of post detail and tags, dropped on projector
//!   notifications.
//! - `freshness`: `?min_version=` waits, woken by projector notifications.
//! - `hub`: the WebSocket hub (`/ws`): live room messages, recovery, send and read over
//!   the socket, typing.
//! - `auth`: argon2id password hashes and HS256 bearer tokens; the [`Secret`] type.
//! - `payments`: the simulated payment provider orders are charged through.
//! - `collect`: Chronicle's own series (host, requests per route, subscriber lag), stored
//!   every `collect_every` like reported samples.
//! - `observe`: request counts and latencies by route template, and `GET /metrics`.
//! - `protect`: rate limiting (per user and per IP) and handler timeouts.
//! - `routes`: one module per area (`health`, `identity`, `inventory`, `orders`
//!   with coupons, `blog`, `projections`).
//!
//! Commands go through `chronicle_commands::CommandBus`; queries read the read models
//! through the query functions their projections export.

mod auth;
mod cache;
mod collect;
mod error;
mod extract;
mod freshness;
mod hub;
mod observe;
mod payments;
mod protect;
mod routes;
mod state;
pub mod thumbnail;

pub use auth::{Auth, Secret};
pub use error::{ApiError, FieldError};
pub use freshness::Freshness;
pub use payments::{PaymentRules, SimulatedPayments};
pub use routes::{openapi::PROBLEM_CODES, router};
pub use state::{AppState, GatewayConfig, RateLimit};

/// Serves `router(state)` on `listener` until `shutdown` completes, then drains in-flight
/// requests.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let housekeeping = tokio::spawn(purge_idempotency_keys(state.pool.clone()));
    let instance = listener
        .local_addr()
        .map(|a| format!("{}:{}", host_name(), a.port()))
        .unwrap_or_else(|_| host_name());
    let collecting = state
        .config
        .collect_every
        .map(|every| tokio::spawn(collect::run(state.clone(), every, instance)));
    // The peer address feeds the per-IP rate limit.
    let served = axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    housekeeping.abort();
    if let Some(collecting) = collecting {
        collecting.abort();
    }
    served
}

fn host_name() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "localhost".to_owned())
}

/// Deletes idempotency records past their 24 h, a batch at a time, every few minutes
/// (several gateways doing it at once only share the work).
async fn purge_idempotency_keys(pool: sqlx::PgPool) {
    const BATCH: i64 = 10_000;
    loop {
        loop {
            match chronicle_commands::purge_expired(&pool, BATCH).await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %chronicle_commands::ErrorChain(&e), "idempotency records not purged");
                    break;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(300)).await;
    }
}
