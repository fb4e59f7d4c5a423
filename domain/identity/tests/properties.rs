//! Random registrations and profile changes with hostile text: no panic, and every event
//! accepted can be projected (the `users` read model froze on a NUL before).

use chronicle_identity::{User, UserCommand};
use chronicle_schemas::testing::{execute, hostile_text, projectable};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    hostile_text(&["ada"], 100)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn users_only_emit_projectable_events(
        steps in proptest::collection::vec((any::<bool>(), text(), text()), 1..20)
    ) {
        let own_id = "u1".to_owned();
        let mut user = User::default();
        for (register, a, b) in steps {
            let command = if register {
                UserCommand::Register { username: a, display_name: b }
            } else {
                UserCommand::ChangeProfile { actor: own_id.clone(), display_name: b }
            };
            if let Ok(events) = execute(&mut user, command, &own_id) {
                for event in events {
                    let json = serde_json::to_value(&event).expect("events serialize");
                    prop_assert!(projectable(&json).is_ok(), "{json}");
                }
            }
        }
    }
}

#[test]
fn the_event_stream_of_one_user() {
    let mut user = User::default();
    let mut stream = Vec::new();
    for command in [
        UserCommand::Register {
            username: "ada".into(),
            display_name: "Ada".into(),
        },
        UserCommand::ChangeProfile {
            actor: "ada-id".into(),
            display_name: "Ada Lovelace".into(),
        },
    ] {
        match execute(&mut user, command, &"ada-id".to_owned()) {
            Ok(events) => stream.extend(events.iter().map(|e| serde_json::to_value(e).unwrap())),
            Err(e) => panic!("refused: {e}"),
        }
    }
    insta::assert_json_snapshot!(stream);
}
