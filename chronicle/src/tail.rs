//! `chronicle events tail`: the log as it grows, one event per line, for people (or as JSON
//! lines for scripts). It reads `EVENTS` with an ordered consumer of its own, so it takes
//! nothing from any projector or saga; a message that is not an envelope is shown as such
//! and the tail goes on.

use anyhow::Context;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use chronicle_schemas::Envelope;
use futures::StreamExt;

/// What to show.
#[derive(Debug, Clone)]
pub struct Tail {
    /// A subject filter (NATS wildcards): `events.>` when absent.
    pub subject: Option<String>,
    /// The stream sequence to start from; new events only when absent.
    pub from: Option<u64>,
    /// Stop after this many messages (for scripts); forever when absent.
    pub count: Option<u64>,
    /// One JSON object per line (`stream_seq`, `subject`, and the envelope) instead of text.
    pub json: bool,
}

/// Prints the log on stdout until `count` messages or Ctrl-C.
///
/// # Errors
/// When NATS cannot be reached or the consumer cannot be made.
pub async fn run(nats_url: &str, tail: Tail) -> anyhow::Result<()> {
    let client = chronicle_bus::connect(nats_url)
        .await
        .context("connecting to NATS")?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(chronicle_bus::EVENTS_STREAM)
        .await
        .context("opening the EVENTS stream")?;
    let deliver_policy = match tail.from {
        Some(start_sequence) => DeliverPolicy::ByStartSequence {
            start_sequence: start_sequence.max(1),
        },
        None => DeliverPolicy::New,
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: tail
                .subject
                .clone()
                .unwrap_or_else(|| "events.>".to_owned()),
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("creating the tail's consumer")?;
    let mut messages = consumer.messages().await.context("reading the stream")?;
    let mut shown = 0;
    while tail.count.is_none_or(|count| shown < count) {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(message) = next else { break };
        let message = message.context("reading the stream")?;
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        println!(
            "{}",
            line(seq, &message.subject, &message.payload, tail.json)
        );
        shown += 1;
    }
    Ok(())
}

/// One message as the tail shows it.
pub fn line(seq: u64, subject: &str, payload: &[u8], json: bool) -> String {
    let envelope = serde_json::from_slice::<Envelope>(payload);
    match (envelope, json) {
        (Ok(envelope), true) => serde_json::json!({
            "stream_seq": seq, "subject": subject, "envelope": envelope,
        })
        .to_string(),
        (Ok(e), false) => {
            let mut text = format!(
                "#{seq} {} {} v{} {}/{}#{}",
                e.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                e.event_type,
                e.event_version,
                e.aggregate_type,
                e.aggregate_id,
                e.sequence,
            );
            if let Some(actor) = &e.actor {
                text.push_str(&format!(" by {actor}"));
            }
            text.push_str(&format!(" corr={}\n    {}", e.correlation_id, e.payload));
            text
        }
        (Err(error), true) => serde_json::json!({
            "stream_seq": seq, "subject": subject, "error": format!("not an event envelope: {error}"),
        })
        .to_string(),
        (Err(error), false) => format!("#{seq} {subject}: not an event envelope ({error})"),
    }
}

#[cfg(test)]
mod tests {
    use super::line;

    #[test]
    fn a_message_that_is_not_an_envelope_is_shown_as_such() {
        let shown = line(7, "events.identity.user.x", b"\x00junk", false);
        assert!(
            shown.starts_with("#7 events.identity.user.x: not an event envelope"),
            "{shown}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&line(7, "events.identity.user.x", b"{}", true)).unwrap();
        assert_eq!(json["stream_seq"], 7);
        assert!(json["error"]
            .as_str()
            .unwrap()
            .contains("not an event envelope"));
    }
}
