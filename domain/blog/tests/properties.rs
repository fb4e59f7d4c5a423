//! Random post and comment commands with hostile text: no panic, and every event accepted
//! can be projected.

use chronicle_blog::{Comment, CommentCommand, Post, PostCommand, PostRef};
use chronicle_schemas::testing::{execute, hostile_text, projectable};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    hostile_text(&["line\nbreak\ttab", "rust"], 6_000)
}

fn tags() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(text(), 0..12)
}

fn post_command() -> impl Strategy<Value = PostCommand> {
    let by = prop_oneof![Just("a1".to_owned()), Just("other".to_owned())];
    prop_oneof![
        (text(), text(), tags()).prop_map(|(title, body_markdown, tags)| PostCommand::Draft {
            post_id: "p1".into(),
            author_id: "a1".into(),
            title,
            body_markdown,
            tags,
        }),
        (
            by.clone(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(tags())
        )
            .prop_map(|(by, title, body_markdown, tags)| PostCommand::Edit {
                by,
                title,
                body_markdown,
                tags
            }),
        by.clone().prop_map(|by| PostCommand::Publish { by }),
        by.clone().prop_map(|by| PostCommand::Unpublish { by }),
        by.prop_map(|by| PostCommand::Delete { by }),
    ]
}

fn check<E: serde::Serialize>(events: &[E]) -> Result<(), TestCaseError> {
    for event in events {
        let json = serde_json::to_value(event).expect("events serialize");
        prop_assert!(projectable(&json).is_ok(), "{json}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn posts_only_emit_projectable_events(commands in proptest::collection::vec(post_command(), 1..20)) {
        let mut post = Post::default();
        for command in commands {
            if let Ok(events) = execute(&mut post, command, &()) {
                check(&events)?;
            }
        }
    }

    #[test]
    fn comments_only_emit_projectable_events(body in text(), published in any::<bool>()) {
        let mut comment = Comment::default();
        let command = CommentCommand::Add {
            comment_id: "c1".into(),
            post: PostRef { post_id: "p1".into(), author_id: "a1".into(), published },
            author_id: "u1".into(),
            body,
        };
        if let Ok(events) = execute(&mut comment, command, &()) {
            check(&events)?;
        }
    }
}
