use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

/// The root token of every event subject: `events.<context>.<aggregate_type>.<aggregate_id>`.
pub const SUBJECT_ROOT: &str = "events";

/// NATS header carrying the event type (`StockReceived`).
pub const HEADER_EVENT_TYPE: &str = "Chronicle-Event-Type";
/// NATS header carrying the payload's schema version.
pub const HEADER_EVENT_VERSION: &str = "Chronicle-Event-Version";
/// NATS header carrying the event's sequence within its aggregate (1, 2, ...).
pub const HEADER_AGGREGATE_SEQUENCE: &str = "Chronicle-Aggregate-Sequence";
/// NATS header carrying the correlation id of the request that caused the event.
pub const HEADER_CORRELATION_ID: &str = "Chronicle-Correlation-Id";

/// Names a kind of event stream: the bounded context and the aggregate type inside it.
///
/// Domain aggregates implement this so the write side can route their events without the
/// domain crates knowing anything about NATS.
pub trait AggregateKind {
    /// The bounded context, a subject token (`commerce`).
    const CONTEXT: &'static str;
}

/// The NATS subject of one aggregate's events.
pub fn subject_for(context: &str, aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{SUBJECT_ROOT}.{context}.{aggregate_type}.{aggregate_id}")
}

/// Whether `token` can stand as one token of a NATS subject: non-empty, no `.`, `*`, `>`
/// and no white space. Aggregate ids are checked with this before anything is appended,
/// because an id that is not a single token would land on the wrong subject.
pub fn is_valid_subject_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '.' && c != '*' && c != '>')
}

/// What a command carries into each of its events besides the payload.
///
/// It is stored in postgres-es's `metadata` column, so the events table keeps the library's
/// exact layout while every event still has its id and times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Metadata {
    /// UUIDv7 of this event, unique across the log.
    pub event_id: Uuid,
    /// When the write side committed the event (UTC).
    #[serde(deserialize_with = "rfc3339")]
    pub recorded_at: DateTime<Utc>,
    /// The request or process that started the chain of commands.
    pub correlation_id: Uuid,
    /// The event or request that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Who issued the command (a user id, or `saga:<name>`); `None` for anonymous calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// One event as it is published to JetStream and handed to projectors and integrations.
///
/// `payload` is the event's own fields (for `StockReceived`: `{"quantity": 5}`); the event
/// type names which payload it is. [`Envelope::decode`] turns it back into the typed enum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Envelope {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: String,
    pub context: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Position of the event in its aggregate's stream, starting at 1.
    pub sequence: u64,
    #[serde(deserialize_with = "rfc3339")]
    pub recorded_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub payload: serde_json::Value,
    /// Where a reader of the log found it: its sequence in the JetStream stream `EVENTS`
    /// (set by the subscriber runtime and replay; not part of the envelope published).
    #[serde(skip)]
    #[schemars(skip)]
    pub stream_seq: Option<u64>,
}

/// An envelope whose payload is not the event it claims to be.
#[derive(Debug)]
pub struct DecodeError {
    pub event_type: String,
    pub source: serde_json::Error,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot decode event {}: {}",
            self.event_type, self.source
        )
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// One event as the event store keeps it, before it becomes an [`Envelope`].
#[derive(Debug, Clone)]
pub struct StoredEvent<'a> {
    pub context: &'a str,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: u64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    /// The event's own fields, as the envelope carries them: see [`untagged`] and
    /// [`read_untagged`] for the form the store keeps.
    pub payload: serde_json::Value,
}

/// The event's own fields from a stored payload, which is serde's externally tagged enum
/// form (`{"StockReceived": {...}}`, postgres-es's convention): the inner object when the
/// payload is one entry named `event_type`, the payload as it is otherwise.
pub fn untagged(payload: serde_json::Value, event_type: &str) -> serde_json::Value {
    match payload {
        serde_json::Value::Object(mut map) if map.len() == 1 && map.contains_key(event_type) => {
            map.remove(event_type).unwrap_or(serde_json::Value::Null)
        }
        other => other,
    }
}

/// [`untagged`] of a stored payload's JSON text, read without building the outer object
/// (a rebuild reads millions).
///
/// # Errors
/// When `json` is not one JSON value.
pub fn read_untagged(json: &[u8], event_type: &str) -> serde_json::Result<serde_json::Value> {
    use serde::de::{DeserializeSeed, MapAccess, Visitor};
    struct Untag<'a>(&'a str);
    impl<'de> Visitor<'de> for Untag<'_> {
        type Value = serde_json::Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut whole = serde_json::Map::new();
            let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? else {
                return Ok(serde_json::Value::Object(whole));
            };
            match map.next_entry::<String, serde_json::Value>()? {
                None if key == self.0 => return Ok(value),
                None => {
                    whole.insert(key, value);
                }
                Some((second, then)) => {
                    whole.insert(key, value);
                    whole.insert(second, then);
                    while let Some((key, value)) = map.next_entry()? {
                        whole.insert(key, value);
                    }
                }
            }
            // A key given twice keeps its last value, as when parsed whole.
            Ok(untagged(serde_json::Value::Object(whole), self.0))
        }
    }
    impl<'de> DeserializeSeed<'de> for Untag<'_> {
        type Value = serde_json::Value;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return serde_json::from_slice(json);
    }
    let mut reader = serde_json::Deserializer::from_slice(json);
    let payload = Untag(event_type).deserialize(&mut reader)?;
    reader.end()?;
    Ok(payload)
}

/// Reads an RFC 3339 time (what the log and the stores carry, written by chrono) with
/// chrono's RFC 3339 parser, several times faster than its general one, which reads what
/// that one refuses.
fn rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    struct Time;
    impl serde::de::Visitor<'_> for Time {
        type Value = DateTime<Utc>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 date and time")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            DateTime::parse_from_rfc3339(s)
                .or_else(|_| s.parse::<DateTime<chrono::FixedOffset>>())
                .map(|t| t.with_timezone(&Utc))
                .map_err(E::custom)
        }
    }
    d.deserialize_str(Time)
}

impl Envelope {
    /// Builds the envelope of one stored event.
    pub fn from_stored(stored: StoredEvent<'_>, metadata: &Metadata) -> Self {
        let StoredEvent {
            context,
            aggregate_type,
            aggregate_id,
            sequence,
            event_type,
            event_version,
            payload,
        } = stored;
        Self {
            event_id: metadata.event_id,
            event_type: event_type.to_owned(),
            event_version: event_version.to_owned(),
            context: context.to_owned(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            recorded_at: metadata.recorded_at,
            correlation_id: metadata.correlation_id,
            causation_id: metadata.causation_id,
            actor: metadata.actor.clone(),
            payload,
            stream_seq: None,
        }
    }

    /// The NATS subject this event is published on.
    pub fn subject(&self) -> String {
        subject_for(&self.context, &self.aggregate_type, &self.aggregate_id)
    }

    /// The JetStream `Nats-Msg-Id`: `<aggregate_type>:<aggregate_id>:<sequence>`, unique per
    /// event and stable across retries, so the stream drops a re-published copy.
    pub fn message_id(&self) -> String {
        format!(
            "{}:{}:{}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }

    /// Decodes the payload into the typed event enum `E` (externally tagged by event type),
    /// upcast first when it was written at an older version.
    ///
    /// # Errors
    /// When the payload does not match the event type's fields.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, DecodeError> {
        use serde::de::value::{MapAccessDeserializer, MapDeserializer};
        // An old version is read as the current one (upcasters, `crate::upcast`).
        if !crate::is_current(&self.event_type, &self.event_version) {
            let payload =
                crate::upcast(&self.event_type, &self.event_version, self.payload.clone());
            let tagged = MapAccessDeserializer::new(MapDeserializer::<_, serde_json::Error>::new(
                std::iter::once((self.event_type.as_str(), &payload)),
            ));
            return E::deserialize(tagged).map_err(|source| DecodeError {
                event_type: self.event_type.clone(),
                source,
            });
        }
        // `{event_type: payload}` without copying the payload: a one-entry map over borrows,
        // read as an externally tagged enum.
        let tagged = MapAccessDeserializer::new(MapDeserializer::<_, serde_json::Error>::new(
            std::iter::once((self.event_type.as_str(), &self.payload)),
        ));
        E::deserialize(tagged).map_err(|source| DecodeError {
            event_type: self.event_type.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commerce::InventoryEvent;

    fn metadata() -> Metadata {
        Metadata {
            event_id: Uuid::now_v7(),
            recorded_at: Utc::now(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            actor: Some("user-1".into()),
        }
    }

    #[test]
    fn an_envelope_carries_the_inner_payload_and_decodes_back_to_the_event() {
        let event = InventoryEvent::StockReceived { quantity: 7 };
        let stored = serde_json::to_value(&event).expect("events serialize");
        let env = Envelope::from_stored(
            StoredEvent {
                context: "commerce",
                aggregate_type: "inventory_item",
                aggregate_id: "SKU-1",
                sequence: 3,
                event_type: "StockReceived",
                event_version: "1",
                payload: untagged(stored, "StockReceived"),
            },
            &metadata(),
        );
        assert_eq!(env.payload, serde_json::json!({"quantity": 7}));
        assert_eq!(env.subject(), "events.commerce.inventory_item.SKU-1");
        assert_eq!(env.message_id(), "inventory_item:SKU-1:3");
        assert_eq!(env.decode::<InventoryEvent>().expect("decodes"), event);
    }

    #[test]
    fn a_stored_payload_read_untagged_is_the_payload_parsed_then_untagged() {
        for json in [
            r#"{"StockReceived": {"quantity": 7}}"#,
            r#" {"StockReceived": null}"#,
            r#"{"Other": {"quantity": 7}}"#,
            r#"{"StockReceived": {"quantity": 7}, "extra": 1}"#,
            r#"{"a": 1, "b": [2, {"c": 3}], "a": 4}"#,
            r#"{"StockReceived": 1, "StockReceived": {"quantity": 2}}"#,
            r#"{}"#,
            r#"[{"StockReceived": 1}]"#,
            r#""StockReceived""#,
            "12.5",
            "null",
        ] {
            let parsed: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
            assert_eq!(
                read_untagged(json.as_bytes(), "StockReceived").expect("reads"),
                untagged(parsed, "StockReceived"),
                "{json}"
            );
        }
        for bad in [r#"{"StockReceived": 1} x"#, r#"{"StockReceived": "#, ""] {
            assert!(
                read_untagged(bad.as_bytes(), "StockReceived").is_err(),
                "{bad:?} read"
            );
        }
    }

    #[test]
    fn recorded_at_reads_every_time_chrono_reads() {
        for at in [
            "2026-12-07T19:54:37.902093Z",
            "2026-12-07T19:54:37Z",
            "2026-12-07t19:54:37.1+02:00",
            "2026-12-07 19:54:37.123456789-05:30",
            "2026-12-07T19:54:37 UTC",
            "2026-12-07 19:54:37 +0200",
        ] {
            let chrono: DateTime<Utc> =
                serde_json::from_value(serde_json::json!(at)).expect("chrono reads it");
            let metadata: Metadata = serde_json::from_value(serde_json::json!({
                "event_id": Uuid::nil(),
                "recorded_at": at,
                "correlation_id": Uuid::nil(),
            }))
            .unwrap_or_else(|e| panic!("{at}: {e}"));
            assert_eq!(metadata.recorded_at, chrono, "{at}");
        }
        for bad in ["2026-12-07", "2026-13-07T19:54:37Z", "yesterday"] {
            assert!(
                serde_json::from_value::<Metadata>(serde_json::json!({
                    "event_id": Uuid::nil(),
                    "recorded_at": bad,
                    "correlation_id": Uuid::nil(),
                }))
                .is_err(),
                "{bad} read"
            );
        }
    }

    #[test]
    fn subject_tokens_reject_separators_wildcards_and_spaces() {
        assert!(is_valid_subject_token("SKU-1_a"));
        for bad in ["", "a.b", "a*", ">", "a b", "a\tb"] {
            assert!(!is_valid_subject_token(bad), "{bad:?} accepted");
        }
    }
}
