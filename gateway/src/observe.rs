//! What the gateway tells Prometheus: every request counted and timed by its route template
//! (never its concrete path, so ids do not explode the label space), and `GET /metrics`,
//! which also looks at what other processes do (subscriber lag, outbox depth) at scrape time.

use std::time::{Duration, Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::state::AppState;

/// Counts and times one request: `chronicle_http_requests_total{route,method,status}` and
/// `chronicle_http_request_duration_seconds{route,method}`.
pub(crate) async fn record(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(
        "chronicle_http_request_duration_seconds",
        "route" => route.clone(),
        "method" => method.clone(),
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "chronicle_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => status,
    )
    .increment(1);
    response
}

/// `GET /metrics`: the process's registry, after refreshing the gauges that describe the
/// whole system rather than this process (whether each server answers, each subscriber's
/// progress, the outbox depth).
/// A part that cannot be read within a second keeps its last value: a scrape never waits on
/// a server that is down.
#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus text: requests, commands, outbox, relay, subscribers, WebSocket, files, jobs", responses((status = 200, description = "200: text/plain; version=0.0.4"), crate::schema::Problems))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let nats_up = state.nats.connection_state() == async_nats::connection::State::Connected;
    let up = |server: &'static str, up: bool| {
        metrics::gauge!("chronicle_server_up", "server" => server).set(if up { 1.0 } else { 0.0 });
    };
    up("nats", nats_up);
    // The outbox first: whether it can be read within a second is whether PostgreSQL is up.
    let postgres_up = tokio::time::timeout(Duration::from_secs(1), refresh_outbox(&state))
        .await
        .unwrap_or(false);
    up("postgres", postgres_up);
    if postgres_up
        && nats_up
        && tokio::time::timeout(Duration::from_secs(1), refresh_subscribers(&state))
            .await
            .is_err()
    {
        tracing::debug!("metrics refresh timed out; serving the last values");
    }
    chronicle_telemetry::metrics_response().await
}

async fn refresh_subscribers(state: &AppState) {
    let js = async_nats::jetstream::new(state.nats.clone());
    for subscriber in &state.config.subscribers {
        let Ok(status) = chronicle_bus::status(
            state.db.of(subscriber.context),
            &js,
            &subscriber.name,
            &subscriber.durable,
        )
        .await
        else {
            continue;
        };
        let label = [("subscriber", status.name.clone())];
        metrics::gauge!("chronicle_subscriber_checkpoint", &label).set(status.checkpoint as f64);
        metrics::gauge!("chronicle_subscriber_stream_last_seq", &label)
            .set(status.stream_last_seq as f64);
        metrics::gauge!("chronicle_subscriber_lag_events", &label).set(status.lag_events as f64);
        metrics::gauge!("chronicle_subscriber_lag_seconds", &label).set(status.lag_seconds);
        metrics::gauge!("chronicle_subscriber_parked_events", &label).set(status.parked as f64);
        metrics::gauge!("chronicle_subscriber_caught_up", &label).set(if status.lag_events == 0 {
            1.0
        } else {
            0.0
        });
    }
}

/// Whether the outbox could be read.
async fn refresh_outbox(state: &AppState) -> bool {
    // Bounded: a huge backlog is reported as "at least a million", not counted row by row.
    // Every context's outbox, together.
    let mut total = 0;
    for store in state.commands.stores() {
        match store.outbox_depth(1_000_000).await {
            Ok(depth) => total += depth,
            Err(_) => return false,
        }
    }
    metrics::gauge!("chronicle_outbox_depth").set(total as f64);
    true
}
