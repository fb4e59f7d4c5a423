//! What a role run on its own reports (issue 14): `GET /metrics` on `CHRONICLE_METRICS_ADDR`,
//! with its subscriber's metrics, and logs as JSON lines with `CHRONICLE_LOG_FORMAT=json`.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use chronicle_tests::{eventually, TestDb, TestNats};
use common::Running;
use serde_json::Value;

#[tokio::test]
async fn a_projector_alone_serves_metrics_on_its_address_and_logs_json_lines() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(["project", "users"])
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats.url())
        .env("CHRONICLE_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("CHRONICLE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the chronicle binary starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let _running = Running(Some(child));
    // Every line it writes is one JSON object with a level and a message.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });

    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = eventually("/metrics to answer", Duration::from_secs(30), || async {
        reqwest::get(&url).await.ok()?.text().await.ok()
    })
    .await;
    assert!(
        text.contains("# TYPE chronicle_outbox_depth gauge"),
        "{text}"
    );

    // An event it cannot read: parked, and counted under its name.
    let js = async_nats::jetstream::new(nats.client().await);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
    js.publish_with_headers(
        format!("events.identity.user.{}", uuid::Uuid::now_v7()),
        headers,
        b"not an envelope".to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    eventually(
        "the parked event in /metrics",
        Duration::from_secs(30),
        || async {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            text.lines()
                .any(|l| {
                    l.starts_with(r#"chronicle_subscriber_parked_total{subscriber="users"} 1"#)
                })
                .then_some(())
        },
    )
    .await;

    let mut seen = Vec::new();
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(5)) {
        let parsed: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            parsed["level"].is_string() && parsed["timestamp"].is_string(),
            "{line}"
        );
        seen.push(parsed);
        if seen
            .iter()
            .any(|l| l["message"] == "event parked; going on")
        {
            break;
        }
    }
    let parked = seen
        .iter()
        .find(|l| l["message"] == "event parked; going on")
        .unwrap_or_else(|| panic!("the parking is logged: {seen:?}"));
    // Fields sit beside the message, not inside a formatted string.
    assert_eq!(parked["subscriber"], "users", "{parked}");
    assert_eq!(parked["level"], "ERROR");
}
