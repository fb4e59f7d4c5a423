//! The event contracts integrators read: a JSON Schema (draft 2020-12, by `schemars`) for the
//! envelope and for the payload of every event type at every version a store may hold
//! (`chronicle schemas export <dir>` writes them; a snapshot test keeps them from changing
//! by accident).
//!
//! A payload's schema is the event's fields, as the envelope's `payload` carries them, with
//! `examples` of it ([`crate::examples`]). Old versions are listed with how they differ from
//! the next one (`crate::upcast`).

use schemars::{JsonSchema, Schema};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{blog, chat, commerce, examples::Examples, files, identity, scheduler, Envelope};

/// One event type at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct EventContract {
    pub context: &'static str,
    pub aggregate_type: &'static str,
    pub event_type: String,
    pub version: String,
    /// The JSON Schema of its payload.
    pub schema: Value,
}

impl EventContract {
    /// `<context>.<aggregate_type>.<EventType>.v<version>.schema.json`.
    pub fn file_name(&self) -> String {
        format!(
            "{}.{}.{}.v{}.schema.json",
            self.context, self.aggregate_type, self.event_type, self.version
        )
    }
}

/// The JSON Schema of [`Envelope`].
pub fn envelope_schema() -> Value {
    let mut schema = schemars::schema_for!(Envelope).to_value();
    if let Some(fields) = schema.as_object_mut() {
        fields.insert(
            "$id".into(),
            "https://chronicle.invalid/schemas/envelope.schema.json".into(),
        );
    }
    schema
}

/// Every event type of every aggregate, at its current version and at each older version a
/// store may hold, sorted by file name.
pub fn event_contracts() -> Vec<EventContract> {
    let mut all = Vec::new();
    all.extend(contracts_of::<identity::UserEvent>("identity", "user"));
    all.extend(contracts_of::<blog::PostEvent>("blog", "post"));
    all.extend(contracts_of::<blog::CommentEvent>("blog", "comment"));
    all.extend(contracts_of::<commerce::InventoryEvent>(
        "commerce",
        "inventory_item",
    ));
    all.extend(contracts_of::<commerce::OrderEvent>("commerce", "order"));
    all.extend(contracts_of::<commerce::CouponEvent>("commerce", "coupon"));
    all.extend(contracts_of::<commerce::CartEvent>("commerce", "cart"));
    all.extend(contracts_of::<chat::RoomEvent>("chat", "room"));
    all.extend(contracts_of::<files::FileEvent>("files", "file"));
    all.extend(contracts_of::<files::UploadEvent>("files", "upload"));
    all.extend(contracts_of::<files::TusUploadEvent>("files", "tus_upload"));
    all.extend(contracts_of::<files::ShareEvent>("files", "share"));
    all.extend(contracts_of::<scheduler::JobEvent>("scheduler", "job"));
    let older: Vec<EventContract> = all.iter().filter_map(older_version).collect();
    all.extend(older);
    all.sort_by_key(EventContract::file_name);
    all
}

/// The contracts of one event enum: serde's externally tagged form (`{"Type": {...}}`)
/// split into one schema per variant, each keeping the definitions it may refer to, with
/// the enum's examples of that variant.
pub fn contracts_of<E: JsonSchema + Examples + Serialize>(
    context: &'static str,
    aggregate_type: &'static str,
) -> Vec<EventContract> {
    // Each example in its externally tagged form: `{"Type": payload}`.
    let mut examples: Map<String, Value> = Map::new();
    for example in E::examples() {
        if let Ok(Value::Object(tagged)) = serde_json::to_value(example) {
            for (event_type, payload) in tagged {
                if let Value::Array(list) = examples
                    .entry(event_type)
                    .or_insert_with(|| Value::Array(Vec::new()))
                {
                    list.push(payload);
                }
            }
        }
    }
    let root: Value = Schema::to_value(schemars::schema_for!(E));
    let defs = root.get("$defs").cloned();
    let variants = root
        .get("oneOf")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    variants
        .into_iter()
        .filter_map(|variant| {
            let properties = variant.get("properties")?.as_object()?;
            let (event_type, payload) = properties.iter().next()?;
            let mut schema = Map::new();
            schema.insert(
                "$schema".into(),
                "https://json-schema.org/draft/2020-12/schema".into(),
            );
            schema.insert("title".into(), event_type.clone().into());
            if let Some(fields) = payload.as_object() {
                for (key, value) in fields {
                    schema.insert(key.clone(), value.clone());
                }
            }
            if let Some(defs) = &defs {
                schema.insert("$defs".into(), defs.clone());
            }
            if let Some(examples) = examples.get(event_type) {
                schema.insert("examples".into(), examples.clone());
            }
            Some(EventContract {
                context,
                aggregate_type,
                event_type: event_type.clone(),
                version: crate::current_version(event_type).to_owned(),
                schema: Value::Object(schema),
            })
        })
        .collect()
}

/// The schema of the version before `current`, when an upcaster reads one.
fn older_version(current: &EventContract) -> Option<EventContract> {
    match (current.event_type.as_str(), current.version.as_str()) {
        ("CommentAdded", "2") => {
            let mut schema = current.schema.clone();
            rename_property(&mut schema, "body_markdown", "body");
            Some(EventContract {
                version: "1".into(),
                schema,
                ..current.clone()
            })
        }
        _ => None,
    }
}

fn rename_property(schema: &mut Value, from: &str, to: &str) {
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        if let Some(property) = properties.remove(from) {
            properties.insert(to.into(), property);
        }
    }
    if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
        for name in required.iter_mut() {
            if name == from {
                *name = to.into();
            }
        }
    }
    // The examples as that version wrote them.
    if let Some(examples) = schema.get_mut("examples").and_then(Value::as_array_mut) {
        for example in examples.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(value) = example.remove(from) {
                example.insert(to.into(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_a_contract_and_comment_added_has_both_versions() {
        let all = event_contracts();
        let names: Vec<String> = all.iter().map(EventContract::file_name).collect();
        assert!(names.contains(&"blog.comment.CommentAdded.v1.schema.json".to_owned()));
        assert!(names.contains(&"blog.comment.CommentAdded.v2.schema.json".to_owned()));
        assert!(names.contains(&"commerce.order.OrderPlaced.v1.schema.json".to_owned()));
        let v1 = all
            .iter()
            .find(|c| c.event_type == "CommentAdded" && c.version == "1")
            .unwrap();
        assert!(v1.schema["properties"]["body"].is_object());
        assert!(v1.schema["properties"].get("body_markdown").is_none());
        assert_eq!(v1.schema["examples"][0]["body"], "Lovely *light*.");
        assert!(v1.schema["examples"][0].get("body_markdown").is_none());
        assert!(
            envelope_schema()["properties"]["payload"].is_object()
                || envelope_schema()["properties"]["payload"] == true
        );
    }
}
