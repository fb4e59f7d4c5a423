//! Upcasters: an event stored at an old version becomes its current version on every read,
//! before it is decoded: the aggregate's load, projectors, replay, sagas, the hub (all of
//! which decode through [`Envelope::decode`](crate::Envelope::decode) or the event store's
//! load). Stored events are never edited (STYLE.md 3): a store keeps every version it ever
//! wrote, and the readers of today understand all of them.
//!
//! A new version of an event type adds one step here, from the version before it, and the
//! event's `event_version` names the new one.
//!
//! | event | version | change |
//! |---|---|---|
//! | `CommentAdded` | 2 | `body` is `body_markdown`, as in `PostDrafted` and `PostEdited` |

use serde_json::Value;

/// The version every event type is written at today, `"1"` unless listed.
pub fn current_version(event_type: &str) -> &'static str {
    match event_type {
        "CommentAdded" => "2",
        _ => "1",
    }
}

/// `payload` (the event's own fields), written at `version`, as the current version of
/// `event_type` has it. An unknown version (newer than this code) is returned as it is: the
/// decoder then says what does not fit.
pub fn upcast(event_type: &str, version: &str, mut payload: Value) -> Value {
    let mut version = version.to_owned();
    while let Some((next, step)) = step(event_type, &version) {
        payload = step(payload);
        version = next.to_owned();
    }
    payload
}

/// Whether reading `event_type` at `version` needs an upcaster.
pub fn is_current(event_type: &str, version: &str) -> bool {
    step(event_type, version).is_none()
}

type Step = fn(Value) -> Value;

/// The step from `version` of `event_type` to the next one.
fn step(event_type: &str, version: &str) -> Option<(&'static str, Step)> {
    match (event_type, version) {
        ("CommentAdded", "1") => Some(("2", comment_added_v1_to_v2)),
        _ => None,
    }
}

fn comment_added_v1_to_v2(mut payload: Value) -> Value {
    if let Some(fields) = payload.as_object_mut() {
        if let Some(body) = fields.remove("body") {
            fields.insert("body_markdown".to_owned(), body);
        }
    }
    payload
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_v1_comment_reads_as_v2_and_a_v2_one_is_left_alone() {
        let v1 = json!({"comment_id": "c", "post_id": "p", "post_author_id": "a", "author_id": "b", "body": "Hi"});
        let v2 = upcast("CommentAdded", "1", v1);
        assert_eq!(v2["body_markdown"], "Hi");
        assert!(v2.get("body").is_none());
        assert_eq!(upcast("CommentAdded", "2", v2.clone()), v2);
        assert!(!is_current("CommentAdded", "1"));
        assert!(is_current("CommentAdded", "2"));
        assert_eq!(upcast("ItemCreated", "1", json!({"x": 1})), json!({"x": 1}));
        // Not an object: nothing to rename, and the decoder will say what is wrong.
        assert_eq!(upcast("CommentAdded", "1", json!("junk")), json!("junk"));
    }
}
