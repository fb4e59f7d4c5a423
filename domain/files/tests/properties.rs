//! Random upload, tus upload, share and file commands with hostile text and extreme numbers:
//! no panic, a chunk is recorded once, an upload completes only with every chunk and the
//! declared hash, a tus upload's offset only moves forward within its length, a share serves
//! only until it expires or its owner revokes it, and every event accepted can be projected. And one file's whole life as an event stream.

use chronicle_files::{
    File, FileCommand, Share, ShareCommand, ShareEvent, TusCommand, TusUpload, TusUploadEvent,
    Upload, UploadCommand, UploadEvent, MIN_CHUNK_SIZE,
};
use chronicle_schemas::testing::{execute, hostile_text, projectable};
use chrono::{DateTime, Utc};
use proptest::prelude::*;

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("a valid time")
}

const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn text() -> impl Strategy<Value = String> {
    hostile_text(&["../../etc/passwd", "ok.txt"], 10_000)
}

fn upload_command() -> impl Strategy<Value = UploadCommand> {
    let by = prop_oneof![Just("alice".to_owned()), Just("mallory".to_owned())];
    prop_oneof![
        (
            0u64..6,
            prop_oneof![Just(MIN_CHUNK_SIZE), Just(7u64), any::<u64>()],
            by.clone()
        )
            .prop_map(|(index, length, by)| UploadCommand::ReceiveChunk {
                index,
                length,
                part: None,
                by
            }),
        (prop_oneof![Just(HASH.to_owned()), text()], by).prop_map(|(computed_sha256, by)| {
            UploadCommand::Complete {
                file_id: "f1".into(),
                computed_sha256,
                by,
            }
        }),
        (0i64..10_000).prop_map(|s| UploadCommand::Expire { now: at(s) }),
    ]
}

/// A tus command from the owner or someone else; a store at the offset held or any other
/// (first flag), of any length or of exactly the bytes left (second flag).
fn tus_command() -> impl Strategy<Value = (bool, bool, TusCommand)> {
    let by = prop_oneof![3 => Just("alice".to_owned()), 1 => Just("mallory".to_owned())];
    let length = prop_oneof![1u64..2_000, Just(0u64), Just(u64::MAX), any::<u64>()];
    prop_oneof![
        6 => (any::<bool>(), any::<bool>(), any::<u64>(), length, by.clone()).prop_map(
            |(at_held, rest, offset, length, by)| {
                (at_held, rest, TusCommand::Store { offset, length, part: "p".into(), by })
            }
        ),
        1 => (prop_oneof![Just(HASH.to_owned()), text()], by.clone()).prop_map(|(sha256, by)| {
            (false, false, TusCommand::Finish { file_id: "f1".into(), sha256, by })
        }),
        1 => by.prop_map(|by| (false, false, TusCommand::Terminate { by })),
        1 => (0i64..10_000).prop_map(|s| (false, false, TusCommand::Expire { now: at(s) })),
    ]
}

proptest! {
    #[test]
    fn a_tus_upload_only_moves_forward_stays_within_its_length_and_finishes_whole(
        size in prop_oneof![0u64..5_000, Just(u64::MAX), any::<u64>()],
        commands in proptest::collection::vec(tus_command(), 0..60),
    ) {
        let mut upload = TusUpload::default();
        let created = execute(&mut upload, TusCommand::Create {
            upload_id: "t1".into(),
            owner_id: "alice".into(),
            name: "t.bin".into(),
            size,
            content_type: "application/octet-stream".into(),
            expires_at: at(5_000),
        }, &());
        let Ok(_) = created else { return Ok(()) };
        for (at_held, rest, mut command) in commands {
            // Half the stores are at the offset the server holds, as a real client sends, and
            // half of those carry exactly the bytes left.
            if let TusCommand::Store { offset, length, .. } = &mut command {
                if at_held {
                    *offset = upload.offset();
                    if rest {
                        *length = size - upload.offset();
                    }
                }
            }
            let by_owner = match &command {
                TusCommand::Store { by, .. }
                | TusCommand::Finish { by, .. }
                | TusCommand::Terminate { by } => by == "alice",
                _ => true,
            };
            let before = upload.offset();
            let Ok(events) = execute(&mut upload, command, &()) else { continue };
            prop_assert!(by_owner || events.is_empty(), "another user changed the upload");
            for event in events {
                prop_assert!(projectable(&serde_json::to_value(&event).unwrap()).is_ok());
                match event {
                    TusUploadEvent::TusSegmentStored { offset, length, .. } => {
                        prop_assert_eq!(offset, before, "bytes stored at another offset");
                        prop_assert!(length > 0);
                        prop_assert!(offset.checked_add(length).is_some_and(|end| end <= size));
                    }
                    TusUploadEvent::TusUploadFinished { .. } => {
                        prop_assert_eq!(upload.offset(), size, "finished with bytes missing");
                    }
                    TusUploadEvent::TusUploadCreated { .. } => prop_assert!(false, "created twice"),
                    TusUploadEvent::TusUploadTerminated {} | TusUploadEvent::TusUploadExpired {} => {
                        prop_assert!(upload.finished().is_none());
                    }
                }
            }
            prop_assert!(upload.offset() >= before, "the offset went back");
            prop_assert!(upload.offset() <= size);
        }
    }

    #[test]
    fn a_share_serves_only_its_owners_file_until_it_expires_or_is_revoked(
        owner in prop_oneof![Just("alice".to_owned()), text()],
        seconds in prop_oneof![1i64..100_000, any::<i64>()],
        revoker in prop_oneof![Just("alice".to_owned()), Just("mallory".to_owned())],
        revoke_at in 0i64..10_000,
        (near_end, asked) in (any::<bool>(), prop_oneof![-2i64..2, any::<i64>()]),
    ) {
        // Asked about at a random time, or right around its expiry.
        let asked_at = if near_end { seconds.saturating_add(asked) } else { asked }
            .clamp(-1_000_000, 1_000_000_000);
        let mut share = Share::default();
        let Ok(events) = execute(&mut share, ShareCommand::Create {
            file_id: "f1".into(),
            owner_id: owner.clone(),
            now: at(0),
            expires_in_seconds: seconds,
        }, &()) else {
            prop_assert!(share.serves(at(asked_at)).is_err());
            return Ok(());
        };
        for event in &events {
            prop_assert!(projectable(&serde_json::to_value(event).unwrap()).is_ok());
        }
        prop_assert!(seconds > 0, "a share that expires at once or before it is made");
        let served = share.serves(at(asked_at)).is_ok();
        prop_assert_eq!(served, asked_at < seconds, "served past its expiry, or not before it");
        let revoked = execute(&mut share, ShareCommand::Revoke { by: revoker.clone(), now: at(revoke_at) }, &());
        match revoked {
            Ok(events) if events.iter().any(|e| matches!(e, ShareEvent::ShareRevoked { .. })) => {
                prop_assert_eq!(&revoker, &owner, "revoked by another user");
                prop_assert!(share.serves(at(asked_at)).is_err());
            }
            _ => prop_assert_eq!(share.serves(at(asked_at)).is_ok(), served),
        }
    }

    #[test]
    fn an_upload_records_each_chunk_once_and_completes_only_when_whole(
        commands in proptest::collection::vec(upload_command(), 0..60)
    ) {
        // Four full chunks and a 7-byte fifth.
        let mut upload = Upload::default();
        execute(&mut upload, UploadCommand::Start {
            upload_id: "u1".into(),
            owner_id: "alice".into(),
            name: "f.bin".into(),
            size: 4 * MIN_CHUNK_SIZE + 7,
            content_type: "application/octet-stream".into(),
            sha256: HASH.into(),
            chunk_size: MIN_CHUNK_SIZE,
            expires_at: at(5_000),
        }, &()).expect("a valid start");
        let mut seen = std::collections::BTreeSet::new();
        for command in commands {
            let Ok(events) = execute(&mut upload, command, &()) else { continue };
            for event in events {
                prop_assert!(projectable(&serde_json::to_value(&event).unwrap()).is_ok());
                match event {
                    UploadEvent::ChunkReceived { index, .. } => {
                        prop_assert!(seen.insert(index), "chunk {index} twice");
                        prop_assert!(index < 5);
                    }
                    UploadEvent::UploadCompleted { .. } => {
                        prop_assert_eq!(seen.len(), 5, "completed with chunks missing");
                        prop_assert!(!upload.is_expired());
                    }
                    UploadEvent::UploadExpired {} => prop_assert!(upload.completed().is_none()),
                    UploadEvent::UploadStarted { .. } => prop_assert!(false, "started twice"),
                }
            }
            prop_assert_eq!(upload.received().count() + upload.missing().count(), 5);
        }
    }

    #[test]
    fn a_file_with_any_name_either_refuses_or_stores_projectable_text(
        name in text(),
        rename in text(),
        content_type in prop_oneof![Just("text/plain".to_owned()), text()],
        size in any::<u64>(),
    ) {
        let mut file = File::default();
        let stored = execute(&mut file, FileCommand::Store {
            file_id: "f1".into(),
            owner_id: "alice".into(),
            name,
            size,
            content_type,
            sha256: HASH.into(),
            at: at(0),
        }, &());
        if let Ok(events) = stored {
            for event in &events {
                prop_assert!(projectable(&serde_json::to_value(event).unwrap()).is_ok());
            }
            if let Ok(events) = execute(&mut file, FileCommand::Rename { name: rename, by: "alice".into() }, &()) {
                for event in &events {
                    prop_assert!(projectable(&serde_json::to_value(event).unwrap()).is_ok());
                }
            }
            let clean = !file.name().contains(['/', '\\', '\u{0}']);
            prop_assert!(clean, "a stored name is never a path: {:?}", file.name());
        }
    }
}

#[test]
fn the_event_stream_of_one_file() {
    let mut stream = Vec::new();
    let mut record = |aggregate: &str, events: Vec<serde_json::Value>| {
        for event in events {
            stream.push(serde_json::json!({"aggregate": aggregate, "event": event}));
        }
    };
    let mut upload = Upload::default();
    let size = MIN_CHUNK_SIZE + 5;
    for command in [
        UploadCommand::Start {
            upload_id: "u1".into(),
            owner_id: "alice".into(),
            name: "notes.txt".into(),
            size,
            content_type: "text/plain".into(),
            sha256: HASH.into(),
            chunk_size: MIN_CHUNK_SIZE,
            expires_at: at(3_600),
        },
        UploadCommand::ReceiveChunk {
            index: 1,
            length: 5,
            part: None,
            by: "alice".into(),
        },
        UploadCommand::ReceiveChunk {
            index: 1,
            length: 5,
            part: None,
            by: "alice".into(),
        },
        UploadCommand::ReceiveChunk {
            index: 0,
            length: MIN_CHUNK_SIZE,
            part: None,
            by: "alice".into(),
        },
        UploadCommand::Complete {
            file_id: "f1".into(),
            computed_sha256: HASH.into(),
            by: "alice".into(),
        },
    ] {
        let events = execute(&mut upload, command, &()).expect("accepted");
        record("upload", events.iter().map(json).collect());
    }
    let mut file = File::default();
    for command in [
        FileCommand::Store {
            file_id: "f1".into(),
            owner_id: "alice".into(),
            name: upload.name().into(),
            size: upload.size(),
            content_type: upload.content_type().into(),
            sha256: upload.sha256().into(),
            at: at(10),
        },
        FileCommand::Rename {
            name: "notes (final).txt".into(),
            by: "alice".into(),
        },
    ] {
        let events = execute(&mut file, command, &()).expect("accepted");
        record("file", events.iter().map(json).collect());
    }
    let mut share = Share::default();
    for command in [
        ShareCommand::Create {
            file_id: "f1".into(),
            owner_id: "alice".into(),
            now: at(20),
            expires_in_seconds: 3_600,
        },
        ShareCommand::Revoke {
            by: "alice".into(),
            now: at(30),
        },
    ] {
        let events = execute(&mut share, command, &()).expect("accepted");
        record("share", events.iter().map(json).collect());
    }
    let events = execute(
        &mut file,
        FileCommand::Delete {
            by: "alice".into(),
            at: at(40),
        },
        &(),
    )
    .expect("accepted");
    record("file", events.iter().map(json).collect());
    insta::assert_json_snapshot!(stream);
}

fn json(event: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(event).expect("events serialize")
}

#[test]
fn the_event_stream_of_one_tus_upload() {
    use chronicle_files::{TusCommand, TusUpload};
    let mut upload = TusUpload::default();
    let mut stream = Vec::new();
    for command in [
        TusCommand::Create {
            upload_id: "t1".into(),
            owner_id: "alice".into(),
            name: "video.mp4".into(),
            size: 10,
            content_type: "video/mp4".into(),
            expires_at: at(86_400),
        },
        TusCommand::Store {
            offset: 0,
            length: 4,
            part: "tus/t1/0".into(),
            by: "alice".into(),
        },
        TusCommand::Store {
            offset: 4,
            length: 6,
            part: "tus/t1/1".into(),
            by: "alice".into(),
        },
        TusCommand::Finish {
            file_id: "f1".into(),
            sha256: "a".repeat(64),
            by: "alice".into(),
        },
    ] {
        let events = execute(&mut upload, command, &()).expect("accepted");
        stream.extend(events.iter().map(|e| serde_json::to_value(e).unwrap()));
    }
    let mut expired = TusUpload::default();
    for command in [
        TusCommand::Create {
            upload_id: "t2".into(),
            owner_id: "alice".into(),
            name: "left.bin".into(),
            size: 10,
            content_type: "application/octet-stream".into(),
            expires_at: at(60),
        },
        TusCommand::Expire { now: at(61) },
    ] {
        let events = execute(&mut expired, command, &()).expect("accepted");
        stream.extend(events.iter().map(|e| serde_json::to_value(e).unwrap()));
    }
    insta::assert_json_snapshot!(stream);
}
