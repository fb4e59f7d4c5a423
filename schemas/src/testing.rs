//! Helpers for the property tests of the domain crates: run a command against an aggregate
//! without a store, check that an event can be projected, and (feature `proptest`) the
//! hostile text every context's commands are tried with. No I/O.

use cqrs_es::{event_sink::EventSink, Aggregate};

use crate::limits::is_allowed_char;

/// Runs `command` on `state` as the write side would (the events it decides are applied to
/// `state`), and returns them, or the refusal (then `state` is unchanged).
///
/// # Errors
/// The aggregate's refusal.
pub fn execute<A: Aggregate + Clone>(
    state: &mut A,
    command: A::Command,
    services: &A::Services,
) -> Result<Vec<A::Event>, A::Error> {
    let mut working = state.clone();
    let sink = EventSink::default();
    let outcome = futures::executor::block_on(async {
        working.handle(command, services, &sink).await?;
        Ok(sink.collect().await)
    });
    if outcome.is_ok() {
        *state = working;
    }
    outcome
}

/// Whether an event's JSON can be stored by every read model: every string is text
/// PostgreSQL accepts and that carries no control characters, and every number fits a
/// `bigint`. Read models store exactly those two kinds of value.
///
/// # Errors
/// What in `value` is not projectable.
pub fn projectable(value: &serde_json::Value) -> Result<(), String> {
    match value {
        serde_json::Value::String(s) => {
            if s.chars().all(is_allowed_char) {
                Ok(())
            } else {
                Err(format!("a control character in {s:?}"))
            }
        }
        serde_json::Value::Number(n) => {
            if n.is_i64() || n.is_f64() {
                Ok(())
            } else {
                Err(format!("{n} does not fit a bigint"))
            }
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(projectable),
        serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            projectable(&serde_json::Value::String(k.clone())).and(projectable(v))
        }),
        serde_json::Value::Bool(_) | serde_json::Value::Null => Ok(()),
    }
}

/// Text as a hostile client sends it: random characters, empty, blank, a NUL, an escape
/// sequence, `samples` (the context's own ordinary and odd values) and one string of
/// `long` characters, past the context's limit.
#[cfg(feature = "proptest")]
pub fn hostile_text(
    samples: &'static [&'static str],
    long: usize,
) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    const ALWAYS: [&str; 4] = ["", "   ", "a\u{0}b", "\u{1b}[31m"];
    let fixed: Vec<&'static str> = ALWAYS.iter().chain(samples).copied().collect();
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
        proptest::sample::select(fixed).prop_map(str::to_owned),
        Just("x".repeat(long)),
    ]
}
