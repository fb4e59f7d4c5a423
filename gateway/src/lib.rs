//! The HTTP gateway: the host every bounded context's routes plug into. It holds no
//! context's state or SQL; a context's routes bring their own (`routes::Context`).
//!
//! # Layout
//!
//! - [`router`] builds the axum app from an [`AppState`] and the contexts' routes; [`serve`]
//!   runs it with graceful shutdown. Building and running are apart so tests serve the same
//!   router on port 0.
//! - `error`: [`ApiError`], the one error type; every failure, axum's own rejections
//!   included, leaves as RFC 9457 problem+json with a stable `code`.
//! - `extract`: request extractors that fail with [`ApiError`]: JSON bodies (raw bytes kept
//!   for idempotency hashing), `If-Match`, `Idempotency-Key`, the caller.
//! - `auth`: argon2id password hashes and HS256 bearer tokens; the [`Secret`] type.
//! - `protect`: rate limiting (per user and per IP), header and handler timeouts.
//! - `observe`: request counts and latencies by route template, and `GET /metrics`.
//! - `cache`: the moka cache in front of post detail and tags, dropped on projector
//!   notifications.
//! - `freshness`: `?min_version=` waits, woken by projector notifications.
//! - `hub`: the WebSocket transport (`/ws`): live room messages, recovery with `since_seq`,
//!   send and read over the socket, typing, presence, `order_status`.
//! - `schema`: the shapes the OpenAPI document names that are not a handler's own.
//! - `settings`, `state`: each context's settings kept by their type, and the host's state.
//! - `thumbnail`: thumbnails of images within the domain's limits.
//! - `routes`: the route table and its layers (`mod.rs`), the OpenAPI assembly
//!   (`openapi`), what a context's routes import from the host (`prelude`), paging
//!   (`page`), answers to commands (`respond`), and the routes by area: `health`,
//!   `projections`, `identity`, `inventory`, `orders` (with coupons), `cart`, `blog`,
//!   `chat`, `files` with `uploads`, `tus`, `thumbnails`, `incoming` (bytes on their way
//!   into the object store) and `files_state`, `jobs`, `debug` (CPU profiles) and `console`.
//!   Monitoring's routes live in its own crate (`contexts/monitoring`).
//!
//! Commands go through `chronicle_commands::CommandExecutor`; queries read the read models
//! through the query functions their projections export.

mod auth;
mod cache;
mod error;
mod extract;
mod freshness;
mod hub;
mod observe;
mod protect;
mod routes;
pub mod schema;
mod settings;
mod state;
pub mod thumbnail;

pub use auth::{Auth, Secret};
pub use error::{ApiError, FieldError};
pub use freshness::Freshness;
pub use hub::ChatConfig;
pub use routes::{
    contexts, files_state::FilesConfig, identity::IdentityConfig, jobs::JobsConfig, problem_codes,
    Context,
};
pub use routes::{page, prelude, respond, router, with_layer, Routes};
pub use settings::{ContextSetting, ContextSettings};
pub use state::{AppState, ContextStates, GatewayConfig, RateLimit};

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
    let housekeeping = tokio::spawn(purge_idempotency_keys(state.db.clone()));
    let instance = listener
        .local_addr()
        .map(|a| format!("{}:{}", host_name(), a.port()))
        .unwrap_or_else(|_| host_name());
    let beside: Vec<_> = state
        .config
        .hosted
        .iter()
        .filter_map(|context| (context.beside)(&state, &instance))
        .map(tokio::spawn)
        .collect();
    let served = accept(listener, state, shutdown).await;
    housekeeping.abort();
    for task in beside {
        task.abort();
    }
    served
}

/// Serves connections until `shutdown`, then waits for the requests in flight.
///
/// `axum::serve` gives hyper no timer, so a client could hold a connection open forever by
/// trickling its headers a byte at a time. Here HTTP/1 connections carry a header read
/// timeout (which also closes a kept-alive connection idle that long), and each request the
/// peer address the per-IP rate limit reads (`ConnectInfo`).
async fn accept(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::{conn::auto::Builder, graceful::GracefulShutdown},
    };
    use tower::ServiceExt;

    let header_timeout = state.config.header_read_timeout;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().enable_connect_protocol();
    let app = router(state);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // keep serving the others.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(request)
            },
        );
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // Telling HTTP/1 from HTTP/2 waits for the first bytes with no timer of its own:
            // a connection that sends none within the header timeout is closed here.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(header_timeout, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                return;
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn host_name() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "localhost".to_owned())
}

/// Deletes idempotency records past their 24 h in every context's store, a batch at a
/// time, every few minutes (several gateways doing it at once only share the work).
async fn purge_idempotency_keys(db: chronicle_commands::Databases) {
    const BATCH: i64 = 10_000;
    chronicle_bus::periodic::every(
        "idempotency record purge",
        std::time::Duration::from_secs(300),
        std::time::Duration::ZERO,
        std::future::pending(),
        || async {
            for (_, pool) in db.contexts() {
                while chronicle_commands::purge_expired(pool, BATCH).await? as i64 == BATCH {}
            }
            Ok::<(), chronicle_commands::StoreError>(())
        },
    )
    .await;
}
