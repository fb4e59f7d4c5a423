//! What every Chronicle process reports about itself: Prometheus metrics and logs.
//!
//! # Layout
//!
//! - [`install`]: the process-wide metrics registry (a `metrics` recorder exporting the
//!   Prometheus text format), with explicit histogram buckets so that latencies from
//!   several instances add up in Prometheus. Every crate records through the `metrics`
//!   macros; this is the one place that decides how they are exported.
//! - [`render`]: the registry as Prometheus text, for `GET /metrics`.
//! - [`serve`]: `GET /metrics` alone, for roles without HTTP (`CHRONICLE_METRICS_ADDR`).
//! - [`init_logs`]: human-readable or JSON-lines logs (`CHRONICLE_LOG_FORMAT=json`), and
//!   spans over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! - [`trace_context`] and [`continue_trace`]: the W3C trace context carried with events
//!   (outbox row, NATS header), so one trace runs from the HTTP request through the command,
//!   the relay, the projectors and the sagas.
//!
//! Metric names all begin with `chronicle_`. The Prometheus rules and the Grafana dashboard
//! in `deploy/` use them (a test checks each one exists); `docs/operations.md` says what to
//! do about each rule.

use std::{future::Future, net::SocketAddr, sync::OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds, for every `*_seconds` histogram: 0.5 ms to 10 s, fine
/// enough between 1 ms and 500 ms that a p50 or p99 read from them (the bench's latency
/// breakdown, a dashboard's `histogram_quantile`) is within a few milliseconds there.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065,
    0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for sizes and counts (`*_size` histograms): commit group sizes, batch sizes.
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide registry (once; later calls return the same handle).
///
/// When another recorder is already installed (a test binary that set its own), this
/// handle renders an empty registry rather than failing the process.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS))
            .expect("the bucket lists are non-empty constants");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
            preregister();
        } else {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    })
}

/// The registry in the Prometheus text format (installing it first if need be).
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

/// Serves `GET /metrics` on `addr` until `shutdown`: the endpoint of roles that have no
/// HTTP gateway of their own.
///
/// # Errors
/// When `addr` cannot be bound or the server fails.
pub async fn serve(
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    install();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
    let app = axum::Router::new().route("/metrics", axum::routing::get(metrics_response));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The `GET /metrics` answer: the text format with its content type.
pub async fn metrics_response() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(),
    )
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, with the span fields (request id, route) beside the
    /// message: for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format {other:?} is neither text nor json")),
        }
    }
}

/// Flushes the spans not yet exported when it is dropped (at the end of `main`).
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Sets up logging to stderr in `format`, filtered by `RUST_LOG` (default: info, with the
/// database and NATS clients at warn), and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the
/// export of spans over OTLP (HTTP; `OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf`, the
/// default, or `http/json`) with the W3C trace context as the propagator, so a trace goes on
/// across processes through NATS headers (see [`trace_context`] and [`continue_trace`]).
pub fn init_logs(format: LogFormat) -> Telemetry {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,async_nats=warn".into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let provider =
        std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| match otlp_provider() {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("chronicle: spans are not exported: {e}");
                None
            }
        });
    EXPORTING.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    let otel = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        // Chronicle's own spans, not every client library's.
        let spans = tracing_subscriber::EnvFilter::try_from_env("CHRONICLE_TRACE_FILTER")
            .unwrap_or_else(|_| {
                "info,sqlx=warn,async_nats=warn,h2=warn,hyper=warn,reqwest=warn".into()
            });
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("chronicle"))
            .with_filter(spans)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    Telemetry { provider }
}

fn otlp_provider() -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/json") => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| e.to_string())?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "chronicle".into());
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build())
}

/// The W3C `traceparent` of the current span, when spans are exported: what a command
/// stores with its events so the relay, projectors and sagas continue its trace.
pub fn trace_context() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let context = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    carrier.remove("traceparent")
}

/// Makes `span` a child of the span `traceparent` names (from a NATS header or an outbox
/// row), so the trace goes on in this process.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    let _ = span.set_parent(context);
}

/// Whether spans are exported: without it, no trace context is worth carrying.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The header the trace context travels in, on NATS messages.
pub const TRACEPARENT: &str = "traceparent";

/// HELP lines for the metrics Chronicle records.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "chronicle_http_requests_total",
        "HTTP requests by route template, method and status"
    );
    describe_histogram!(
        "chronicle_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route template and method"
    );
    describe_counter!(
        "chronicle_commands_total",
        "commands by aggregate type and outcome (ok, refused, conflict, error)"
    );
    describe_histogram!(
        "chronicle_command_duration_seconds",
        Unit::Seconds,
        "command latency, decision to commit, by aggregate type"
    );
    describe_histogram!(
        "chronicle_command_commit_seconds",
        Unit::Seconds,
        "from a command's events handed to the committer to their group's commit (the wait for the group included)"
    );
    describe_histogram!(
        "chronicle_commit_group_size",
        "commands committed together in one Postgres transaction"
    );
    describe_gauge!(
        "chronicle_server_up",
        "1 when the server (postgres, nats) answered this gateway at the last scrape, else 0"
    );
    describe_gauge!(
        "chronicle_outbox_depth",
        "outbox rows not yet published, as the active relay last saw them"
    );
    describe_counter!(
        "chronicle_relay_published_events_total",
        "events the relay published to JetStream"
    );
    describe_histogram!(
        "chronicle_relay_publish_lag_seconds",
        Unit::Seconds,
        "from an event's commit to its publish ack, per event"
    );
    describe_histogram!(
        "chronicle_relay_round_seconds",
        Unit::Seconds,
        "one round of the relay: the outbox read, the batch published and acknowledged, its rows deleted"
    );
    describe_histogram!(
        "chronicle_relay_batch_size",
        "events the relay published in one round"
    );
    describe_histogram!(
        "chronicle_subscriber_delivery_seconds",
        Unit::Seconds,
        "from an event's publish to JetStream to its fetch by a subscriber, per event"
    );
    describe_histogram!(
        "chronicle_subscriber_apply_seconds",
        Unit::Seconds,
        "from an event's fetch by a subscriber to the commit of what it made (read model, saga step), per event"
    );
    describe_histogram!(
        "chronicle_read_fresh_wait_seconds",
        Unit::Seconds,
        "how long a ?min_version read waited for its read model to reach the version"
    );
    describe_gauge!(
        "chronicle_relay_last_publish_timestamp_seconds",
        Unit::Seconds,
        "when the relay last published (unix time)"
    );
    describe_gauge!(
        "chronicle_subscriber_checkpoint",
        "the last stream sequence a subscriber applied"
    );
    describe_gauge!(
        "chronicle_subscriber_stream_last_seq",
        "the stream's last sequence when the subscriber was last looked at"
    );
    describe_gauge!(
        "chronicle_subscriber_lag_events",
        "events a subscriber has not yet applied"
    );
    describe_gauge!(
        "chronicle_subscriber_lag_seconds",
        Unit::Seconds,
        "how long a lagging subscriber's checkpoint has not moved"
    );
    describe_gauge!(
        "chronicle_subscriber_parked_events",
        "events a subscriber parked and has not re-applied"
    );
    describe_gauge!(
        "chronicle_subscriber_caught_up",
        "1 when a subscriber has applied everything in the stream"
    );
    describe_counter!(
        "chronicle_subscriber_events_total",
        "events a subscriber applied"
    );
    describe_counter!(
        "chronicle_subscriber_parked_total",
        "events a subscriber parked"
    );
    describe_gauge!(
        "chronicle_ws_connections",
        "open WebSocket connections on this gateway"
    );
    describe_counter!(
        "chronicle_ws_dropped_total",
        "WebSocket connections closed by the server (slow reader, dead peer), by reason"
    );
    describe_counter!(
        "chronicle_files_deduplicated_total",
        "uploads whose bytes were already stored"
    );
    describe_counter!(
        "chronicle_files_deduplicated_bytes_total",
        Unit::Bytes,
        "bytes not stored again thanks to deduplication"
    );
    describe_counter!(
        "chronicle_job_runs_total",
        "job runs by outcome and trigger (time: cron or one-shot; event: an event of the log)"
    );
    describe_histogram!(
        "chronicle_job_run_lateness_seconds",
        Unit::Seconds,
        "from a run's due time to its start"
    );
    describe_counter!(
        "chronicle_monitoring_samples_total",
        "samples stored by the monitoring context"
    );
}

/// Registers the series that appear only once something happens (a drop, a failed run),
/// at zero, so that dashboards and alert rules find every metric from the first scrape.
fn preregister() {
    for reason in ["slow_reader", "unresponsive"] {
        metrics::counter!("chronicle_ws_dropped_total", "reason" => reason).increment(0);
    }
    for outcome in ["succeeded", "failed"] {
        for trigger in ["time", "event"] {
            metrics::counter!("chronicle_job_runs_total", "outcome" => outcome, "trigger" => trigger)
                .increment(0);
        }
    }
    metrics::gauge!("chronicle_ws_connections").increment(0.0);
    metrics::gauge!("chronicle_outbox_depth").increment(0.0);
    metrics::gauge!("chronicle_relay_last_publish_timestamp_seconds").increment(0.0);
    for counter in [
        "chronicle_relay_published_events_total",
        "chronicle_files_deduplicated_total",
        "chronicle_files_deduplicated_bytes_total",
        "chronicle_monitoring_samples_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    for histogram in [
        "chronicle_relay_publish_lag_seconds",
        "chronicle_relay_round_seconds",
        "chronicle_command_commit_seconds",
        "chronicle_read_fresh_wait_seconds",
        "chronicle_job_run_lateness_seconds",
        "chronicle_commit_group_size",
    ] {
        // A histogram is listed once it has a handle, with zero counts.
        let _ = metrics::histogram!(histogram);
    }
}
