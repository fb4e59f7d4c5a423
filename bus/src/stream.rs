use std::time::Duration;

use async_nats::jetstream::{
    self,
    stream::{Config, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy, StorageType},
};
use chronicle_schemas::{HEADER_AGGREGATE_SEQUENCE, SUBJECT_ROOT};

/// The stream that is Chronicle's log.
pub const EVENTS_STREAM: &str = "EVENTS";

/// Any error async-nats returns (its kinds differ by call), or what a reply said instead of
/// an answer: boxed with its type intact, so a caller can downcast it to match a kind.
pub type NatsError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A NATS failure, with its source kept (never flattened to text: print it with
/// [`crate::ErrorChain`]).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("NATS request failed while {context}")]
    Request {
        context: &'static str,
        #[source]
        source: NatsError,
    },
}

impl BusError {
    /// For `map_err`: the NATS failure met while `context` (a gerund: "reading the stream").
    pub fn request<E: Into<NatsError>>(context: &'static str) -> impl FnOnce(E) -> Self {
        move |error| Self::Request {
            context,
            source: error.into(),
        }
    }
}

/// Connects to NATS, retrying the first connection and every later one without limit.
/// `url` may list several servers, comma-separated (the nodes of a cluster): the client
/// starts with any that answers and moves to another when its server goes away.
///
/// # Errors
/// When the URL is malformed.
pub async fn connect(url: &str) -> Result<async_nats::Client, BusError> {
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    async_nats::ConnectOptions::new()
        .name("chronicle")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(servers)
        .await
        .map_err(|source| BusError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// The configuration of the `EVENTS` stream (docs/architecture.md, "The log").
pub fn events_stream_config() -> Config {
    Config {
        name: EVENTS_STREAM.to_owned(),
        subjects: vec![format!("{SUBJECT_ROOT}.>")],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_messages: -1,
        max_bytes: -1,
        max_age: Duration::ZERO,
        duplicate_window: Duration::from_secs(120),
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        allow_atomic_publish: true,
        num_replicas: 1,
        ..Default::default()
    }
}

/// Creates the `EVENTS` stream (one replica), or brings an existing one to the expected
/// configuration.
///
/// # Errors
/// When JetStream is not enabled or refuses the configuration.
pub async fn ensure_events_stream(
    js: &jetstream::Context,
) -> Result<jetstream::stream::Stream, BusError> {
    ensure_events_stream_with(js, 1).await
}

/// [`ensure_events_stream`], creating the stream with `replicas` replicas
/// (`CHRONICLE_STREAM_REPLICAS`; 3 on a cluster). An existing stream keeps its own count.
///
/// # Errors
/// When JetStream is not enabled or refuses the configuration.
pub async fn ensure_events_stream_with(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<jetstream::stream::Stream, BusError> {
    let config = Config {
        num_replicas: replicas.max(1),
        ..events_stream_config()
    };
    match js.get_stream(EVENTS_STREAM).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(BusError::request("reading the EVENTS stream"))?;
            let current = &info.config;
            let drifted = current.duplicate_window < config.duplicate_window
                || !current.deny_delete
                || !current.deny_purge
                || !current.allow_direct
                || !current.allow_atomic_publish;
            if drifted {
                let mut wanted = config.clone();
                // Replication is an operator's choice (R3 on a cluster); keep theirs.
                wanted.num_replicas = current.num_replicas;
                js.update_stream(&wanted)
                    .await
                    .map_err(BusError::request("updating the EVENTS stream"))?;
            }
            Ok(stream)
        }
        Err(_) => js
            .get_or_create_stream(config)
            .await
            .map_err(BusError::request("creating the EVENTS stream")),
    }
}

/// [`ensure_events_stream_with`], tried again while it fails, for up to `patience`
/// ([`Duration::MAX`]: until it succeeds): JetStream that cannot answer for a while (a
/// cluster electing a leader, nodes restarting) is waited for. Each failure is logged with
/// its cause; the last one is returned when `patience` runs out.
///
/// # Errors
/// As [`ensure_events_stream_with`], once `patience` has passed.
pub async fn await_events_stream(
    js: &jetstream::Context,
    replicas: usize,
    patience: Duration,
) -> Result<jetstream::stream::Stream, BusError> {
    let deadline = tokio::time::Instant::now().checked_add(patience);
    let mut pause = Duration::from_millis(200);
    loop {
        match ensure_events_stream_with(js, replicas).await {
            Ok(stream) => return Ok(stream),
            Err(e) if deadline.is_none_or(|d| tokio::time::Instant::now() + pause < d) => {
                tracing::warn!(
                    error = %crate::ErrorChain(&e),
                    retry_in_ms = pause.as_millis() as u64,
                    "the EVENTS stream cannot be provisioned yet; trying again"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The aggregate sequence of the last event stored on `subject`, 0 when there is none.
///
/// # Errors
/// When the stream cannot be read.
pub async fn last_sequence_on_subject(
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> Result<u64, BusError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(message
            .headers
            .get(HEADER_AGGREGATE_SEQUENCE)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(BusError::request("reading the last message of a subject")(
            e,
        )),
    }
}
