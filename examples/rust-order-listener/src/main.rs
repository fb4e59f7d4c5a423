//! An integration with Chronicle, as a service outside it would be written: it follows the
//! order events on its own durable JetStream consumer and handles each one once, across
//! crashes and restarts.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 cargo run -p order-listener -- ./listener-state
//! ```
//!
//! How it keeps "once":
//!
//! - **Nothing missed.** The durable consumer (`order-listener`) remembers what was
//!   acknowledged; a message is acknowledged only after its work is done, so a crash before
//!   the ack means it comes again.
//! - **Nothing repeated.** The work (here: a line in `handled.log`) and the stream sequence it
//!   was for are written together (the line carries the sequence); on start the last
//!   sequence is read back, and a redelivered message at or below it is acknowledged without
//!   being handled again.
//! - **In order.** The consumer lets one message be unacknowledged at a time, so events come
//!   in stream order and a redelivery comes before anything newer (without that, the rule
//!   above would skip older work that was never done: the test that found it is in
//!   `tests/restart.rs`). For more throughput, keep a set of handled sequences instead.
//!
//! Setting `ORDER_LISTENER_CRASH_AFTER=N` makes it exit abruptly after doing the work of its
//! Nth message and before acknowledging it: the worst moment, for the tests.

use std::{
    fs::OpenOptions,
    io::{BufRead, Write},
    path::Path,
    time::Duration,
};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;
use serde::Deserialize;

/// The fields of Chronicle's envelope this service uses (the rest it ignores: new fields
/// never break it). The schema is `chronicle schemas export`'s `envelope.schema.json`.
#[derive(Debug, Deserialize)]
struct Envelope {
    event_type: String,
    event_version: String,
    aggregate_id: String,
    sequence: u64,
    payload: serde_json::Value,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "listener-state".into());
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).context("creating the state directory")?;
    let log_path = dir.join("handled.log");
    let mut last = last_handled(&log_path)?;
    let crash_after: Option<u64> = std::env::var("ORDER_LISTENER_CRASH_AFTER")
        .ok()
        .and_then(|n| n.parse().ok());

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url)
        .await
        .context("connecting to NATS")?;
    let js = jetstream::new(client);
    let stream = js.get_stream("EVENTS").await.context("the EVENTS stream")?;
    let consumer = stream
        .get_or_create_consumer(
            "order-listener",
            pull::Config {
                durable_name: Some("order-listener".into()),
                filter_subject: "events.commerce.order.>".into(),
                ack_wait: Duration::from_secs(5),
                // One unacknowledged message at a time: events come in stream order, and a
                // redelivery (after a crash) comes before anything newer. With more in flight,
                // a newer message could be handled before an older one comes back, and the
                // "at or below the last one" rule would then skip work never done.
                max_ack_pending: 1,
                ..Default::default()
            },
        )
        .await
        .context("the durable consumer")?;
    let mut messages = consumer.messages().await.context("pulling")?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .context("opening handled.log")?;
    let mut handled = 0u64;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!(e))?;
        let seq = message
            .info()
            .map_err(|e| anyhow::anyhow!(e))?
            .stream_sequence;
        if seq <= last {
            // Done before a crash that came before its ack.
            message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            continue;
        }
        match serde_json::from_slice::<Envelope>(&message.payload) {
            Ok(event) => {
                // The work: one line per event, with the sequence that makes it idempotent.
                let total = event.payload.get("total_cents").and_then(|v| v.as_i64());
                writeln!(
                    log,
                    "{seq} {} v{} {}#{} total_cents={}",
                    event.event_type,
                    event.event_version,
                    event.aggregate_id,
                    event.sequence,
                    total.map_or_else(|| "-".into(), |t| t.to_string())
                )?;
                log.sync_data()?;
            }
            Err(e) => {
                // Not an envelope: nothing to do with it, and nothing to retry.
                eprintln!("order-listener: skipping message {seq}: {e}");
                message
                    .ack_with(AckKind::Term)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                last = seq;
                continue;
            }
        }
        last = seq;
        handled += 1;
        if crash_after == Some(handled) {
            std::process::exit(17);
        }
        message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}

/// The stream sequence of the last line of `handled.log`, 0 when there is none.
fn last_handled(path: &Path) -> anyhow::Result<u64> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(0);
    };
    let mut last = 0;
    for line in std::io::BufReader::new(file).lines() {
        if let Some(seq) = line?.split(' ').next().and_then(|s| s.parse().ok()) {
            last = seq;
        }
    }
    Ok(last)
}
