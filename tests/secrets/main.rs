//! No secret reaches a log line or an event (DESIGN.md invariant 6, issue 4).
//!
//! Its own test binary, with this one test: it installs the process-wide `tracing`
//! subscriber at TRACE, which would be shared with, and disturbed by, any other test in the
//! same process.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use chronicle_tests::TestApp;
use reqwest::StatusCode;
use serde_json::Value;

/// A `tracing` writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_password_hash_or_token_reaches_a_log_line_or_an_event() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let app = TestApp::spawn().await;
    let password = "swordfish-and-chips";
    assert_eq!(
        app.register("dave", password).await.status(),
        StatusCode::CREATED
    );
    let token = app
        .login("dave", password)
        .await
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.login("dave", "wrong-password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let hash: String = sqlx::query_scalar(
        "SELECT password_hash FROM credentials k JOIN unique_claims c ON c.aggregate_id = k.user_id WHERE c.value = 'dave'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(hash.starts_with("$argon2id$"), "stored as an argon2id hash");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("request_id"),
        "the capture works: {} bytes",
        logs.len()
    );
    // Log lines inside a command carry its span: aggregate, id and correlation id.
    assert!(
        logs.contains("command{aggregate=\"user\""),
        "command spans are logged: {logs}"
    );
    for secret in [password, "wrong-password", &hash, &token, &app.token] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    let events: Vec<String> =
        sqlx::query_scalar("SELECT payload::text || metadata::text FROM events")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    for event in events {
        assert!(!event.contains(password) && !event.contains(&hash) && !event.contains("argon2"));
    }
}
