//! `chronicle schemas export <dir>`: the event contracts as files, for integrators.

use std::path::Path;

use anyhow::Context;
use chronicle_schemas::contracts::envelope_schema;
use serde_json::json;

/// Writes `envelope.schema.json`, one `events/<context>.<aggregate>.<Event>.v<N>.schema.json`
/// per event type and version, and `index.json` (each event's subject pattern, type, version
/// and file) into `dir`: how many schemas were written.
///
/// # Errors
/// When a file cannot be written.
pub fn export(dir: &Path) -> anyhow::Result<usize> {
    let events = dir.join("events");
    std::fs::create_dir_all(&events).with_context(|| format!("creating {}", events.display()))?;
    let write = |path: &Path, value: &serde_json::Value| -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)? + "\n";
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    write(&dir.join("envelope.schema.json"), &envelope_schema())?;
    let contracts = crate::contexts::contracts();
    let mut index = Vec::with_capacity(contracts.len());
    for contract in &contracts {
        let file = format!("events/{}", contract.file_name());
        write(&dir.join(&file), &contract.schema)?;
        index.push(json!({
            "subject": format!("events.{}.{}.*", contract.context, contract.aggregate_type),
            "event_type": contract.event_type,
            "event_version": contract.version,
            "current": chronicle_schemas::current_version(&contract.event_type) == contract.version,
            "schema": file,
        }));
    }
    write(&dir.join("index.json"), &json!(index))?;
    Ok(contracts.len() + 1)
}
