//! `chronicle schemas export <dir>` writes the contracts as files an integrator can use.

use std::process::Command;

use serde_json::Value;

#[test]
fn schemas_export_writes_the_envelope_every_event_version_and_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(["schemas", "export"])
        .arg(dir.path())
        .output()
        .expect("the chronicle binary runs");
    assert!(output.status.success(), "{output:?}");
    let read = |path: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(path)).unwrap()).unwrap()
    };
    let envelope = read("envelope.schema.json");
    for field in [
        "event_id",
        "event_type",
        "event_version",
        "aggregate_id",
        "sequence",
        "payload",
    ] {
        assert!(
            envelope["properties"][field].is_object() || envelope["properties"][field] == true,
            "{field}"
        );
    }
    let index = read("index.json");
    let entries = index.as_array().unwrap();
    let files = std::fs::read_dir(dir.path().join("events"))
        .unwrap()
        .count();
    assert_eq!(entries.len(), files);
    let comment: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event_type"] == "CommentAdded")
        .collect();
    assert_eq!(comment.len(), 2, "v1 and v2");
    let v1 = comment.iter().find(|e| e["event_version"] == "1").unwrap();
    assert_eq!(v1["current"], false);
    assert_eq!(v1["subject"], "events.blog.comment.*");
    let schema = read(v1["schema"].as_str().unwrap());
    assert!(schema["required"]
        .as_array()
        .unwrap()
        .contains(&"body".into()));
}
