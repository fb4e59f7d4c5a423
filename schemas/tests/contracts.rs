//! The event contracts integrators depend on, snapshotted: a change to any event's fields,
//! or to the envelope, fails here until the snapshot is reviewed (STYLE.md 14).

use chronicle_schemas::contracts::{envelope_schema, event_contracts};
use serde_json::{Map, Value};

#[test]
fn the_envelope_and_every_event_schema() {
    let mut all = Map::new();
    all.insert("envelope.schema.json".into(), envelope_schema());
    for contract in event_contracts() {
        all.insert(contract.file_name(), contract.schema);
    }
    insta::assert_json_snapshot!(Value::Object(all));
}
