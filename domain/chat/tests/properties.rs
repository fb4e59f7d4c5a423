//! Random room commands with hostile text and extreme numbers: no panic, `seq` stays dense,
//! read marks never pass the last message, and every event accepted can be projected.

use chronicle_chat::{Room, RoomCommand, RoomEvent, RoomKind};
use chronicle_schemas::testing::{execute, hostile_text, projectable};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    hostile_text(&["hello"], 4_001)
}

fn user() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("alice".to_owned()),
        Just("bob".to_owned()),
        Just("carol".to_owned()),
        text()
    ]
}

fn command() -> impl Strategy<Value = RoomCommand> {
    prop_oneof![
        (
            any::<bool>(),
            proptest::option::of(text()),
            proptest::collection::vec(user(), 0..4),
            user()
        )
            .prop_map(|(direct, name, members, by)| RoomCommand::Create {
                room_id: "r".into(),
                kind: if direct {
                    RoomKind::Direct
                } else {
                    RoomKind::Group
                },
                name,
                members,
                by,
            }),
        (user(), user()).prop_map(|(user_id, by)| RoomCommand::AddMember { user_id, by }),
        (user(), user()).prop_map(|(user_id, by)| RoomCommand::RemoveMember { user_id, by }),
        (
            user(),
            text(),
            text(),
            proptest::collection::vec(user(), 0..12)
        )
            .prop_map(
                |(sender_id, body, client_msg_id, file_ids)| RoomCommand::Send {
                    message_id: "m".into(),
                    sender_id,
                    body,
                    client_msg_id,
                    sent_at: chrono::DateTime::from_timestamp(1_700_000_000, 0)
                        .expect("a valid time"),
                    file_ids,
                }
            ),
        (user(), any::<u64>())
            .prop_map(|(user_id, up_to_seq)| RoomCommand::MarkRead { user_id, up_to_seq }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rooms_keep_seq_dense_and_only_emit_projectable_events(
        commands in proptest::collection::vec(command(), 1..40)
    ) {
        let mut room = Room::default();
        let mut expected_seq = 0;
        for command in commands {
            if let Ok(events) = execute(&mut room, command, &()) {
                for event in &events {
                    let json = serde_json::to_value(event).expect("events serialize");
                    prop_assert!(projectable(&json).is_ok(), "{json}");
                    if let RoomEvent::MessageSent { seq, .. } = event {
                        expected_seq += 1;
                        prop_assert_eq!(*seq, expected_seq);
                    }
                    if let RoomEvent::ReadMarked { up_to_seq, .. } = event {
                        prop_assert!(*up_to_seq <= room.last_seq());
                    }
                }
            }
        }
    }
}
