//! No secret reaches a log line or an event (architecture.md invariant 6, issue 4).
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
    // Every refusal that had a secret in its request: the answer never repeats it.
    let mut bodies = Vec::new();
    let wrong = app.login("dave", "wrong-password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    bodies.push(wrong.text().await.unwrap());
    let again = app.register("dave", password).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    bodies.push(again.text().await.unwrap());
    for (username, secret) in [
        ("dave", format!("{password}\u{0}")),
        ("d", password.to_owned()),
        ("dave", "short".to_owned()),
    ] {
        let refused = app
            .http
            .post(app.url("/api/v1/auth/register"))
            .json(
                &serde_json::json!({"username": username, "password": secret, "display_name": "D"}),
            )
            .send()
            .await
            .unwrap();
        assert!(refused.status().is_client_error(), "{}", refused.status());
        bodies.push(refused.text().await.unwrap());
    }
    let malformed = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"username": "dave", "password": "{password}", }}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    bodies.push(malformed.text().await.unwrap());
    let tampered = format!("{token}x");
    let refused = app.get_as(&tampered, "/api/v1/orders").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    bodies.push(refused.text().await.unwrap());
    for body in &bodies {
        for secret in [password, "wrong-password", "short", &token] {
            assert!(!body.contains(secret), "an answer repeats a secret: {body}");
        }
    }
    let hash: String = sqlx::query_scalar(
        "SELECT password_hash FROM identity.credentials k JOIN identity.unique_claims c ON c.aggregate_id = k.user_id WHERE c.value = 'dave'",
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
    for secret in [
        password,
        "wrong-password",
        &hash,
        &token,
        &tampered,
        &app.token,
    ] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    let events: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT payload::text || metadata::text FROM ({}) e",
        chronicle_tests::every_context("payload, metadata", "events")
    ))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for event in events {
        assert!(!event.contains(password) && !event.contains(&hash) && !event.contains("argon2"));
    }
}
