//! The monitoring context's event contracts, snapshotted like every context's (a change to
//! an event's fields fails here until the snapshot is reviewed), and how its floats read back.

use chronicle_monitoring::{contracts, RuleEvent};
use serde_json::{Map, Value};

#[test]
fn every_event_schema() {
    let all: Map<String, Value> = contracts()
        .into_iter()
        .map(|contract| (contract.file_name(), contract.schema))
        .collect();
    assert!(all.contains_key("monitoring.rule.AlertFiring.v1.schema.json"));
    insta::assert_json_snapshot!(Value::Object(all));
}

/// Regression (the fault harness, 2026-12-06): an alert's `value` of 0.9465187072753907 was
/// read back as 0.9465187072753908 on one path and exactly on another, so the alerts read
/// model differed from its rebuild. serde_json's default float parser may be one unit in the
/// last place off; Chronicle builds it with `float_roundtrip`, so a float in an event reads
/// back as the number that was written, whichever path reads it.
#[test]
fn a_float_in_an_event_reads_back_exactly() {
    for text in [
        "0.9465187072753907",
        "0.1",
        "2.2250738585072014e-308",
        "1e300",
    ] {
        let written: f64 = text.parse().unwrap();
        let event = RuleEvent::AlertPending {
            alert_id: "r.1".into(),
            value: written,
            at: chrono::DateTime::UNIX_EPOCH,
        };
        let json = serde_json::to_string(&event).unwrap();
        let read: RuleEvent = serde_json::from_str(&json).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let through_value: RuleEvent = serde_json::from_value(value).unwrap();
        for back in [read, through_value] {
            let RuleEvent::AlertPending { value, .. } = back else {
                panic!("not the event written: {json}");
            };
            assert_eq!(
                value.to_bits(),
                written.to_bits(),
                "{text} read back as {value:?}"
            );
        }
    }
}
