//! The test harness every integration test uses: real servers, nothing mocked.
//!
//! # Layout
//!
//! - [`postgres_cluster`]: ONE PostgreSQL cluster per test binary (initdb takes a second or
//!   two), in a temp dir, stopped by the kernel when the binary exits (engines' pdeathsig).
//!   The event-store schema is migrated once into a template database.
//! - [`TestDb`]: a fresh database per test, cloned from that template.
//! - [`TestNats`]: a `nats-server` per test, random port, temp store, gone on drop.
//! - [`TestApp`]: the whole system in-process (gateway on port 0, relay, projectors) on a
//!   [`TestDb`] and a [`TestNats`], for black-box HTTP tests.
//! - [`Hook`]: a local HTTP endpoint that records what jobs send it (scheduler tests).
//!
//! Tests are independent and run in parallel; nothing here uses a fixed port.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use chronicle::components::{self, Component, Wiring};

mod app;
mod assert;
mod db;
mod hook;
mod smtp;
pub use app::{TestApp, TestOptions};
pub use assert::{assert_replays_byte_for_byte, created_id, indexes_of, invalid_fields, problem};
pub use db::{context_role, every_context, postgres_cluster, TestDb, TestPostgres};
pub use hook::{Answer, Hook};
pub use smtp::SmtpServer;

/// The lowercase hex SHA-256 of `bytes`, as the files API names content.
/// Runs `command` to its end and returns what it printed on stdout; fails the test, with
/// what it said on stderr, when it cannot start or exits unsuccessfully.
pub fn output_of(command: &mut std::process::Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} did not start: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every file under `dir` whose name ends with `ending` (`.rs`, `.md`), skipping hidden
/// directories, `target` and `node_modules`: what tests that read the repository's own
/// sources or pages walk.
pub fn files_under(dir: &std::path::Path, ending: &str) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable directory") {
            let path = entry.expect("a readable entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    dirs.push(path);
                }
            } else if name.ends_with(ending) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `method url` with `token`, and `body` as JSON when there is one, to a process under test:
/// a request that gets no answer fails the test.
pub async fn send_as(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: impl reqwest::IntoUrl,
    token: &str,
    body: Option<&serde_json::Value>,
) -> reqwest::Response {
    let request = http.request(method, url).bearer_auth(token);
    match body {
        Some(body) => request.json(body),
        None => request,
    }
    .send()
    .await
    .expect("an answer")
}

/// A request sent and its JSON body read, for tests that talk HTTP to a process: a request
/// that gets no answer, or an answer that is not JSON, fails the test.
#[allow(async_fn_in_trait)] // tests only, awaited where they are made
pub trait ReadJson {
    /// Sends the request and reads its answer's body as JSON (any status).
    async fn read_json<T: serde::de::DeserializeOwned>(self) -> T;
}

impl ReadJson for reqwest::RequestBuilder {
    async fn read_json<T: serde::de::DeserializeOwned>(self) -> T {
        self.send()
            .await
            .expect("an answer")
            .json()
            .await
            .expect("a JSON body")
    }
}

use chronicle_engines::{NatsOptions, NatsServer, Postgres, PostgresOptions};
use sqlx::{postgres::PgPoolOptions, Connection, PgConnection, PgPool};

/// Logs to the test's captured output when `RUST_LOG` is set (`RUST_LOG=chronicle_bus=debug`).
pub fn init_tracing() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}
/// A port free on 127.0.0.1 now, for a server that must be started on a fixed port (a
/// cluster's nodes, a server started again where its clients look).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `nats-server` with JetStream for one test.
pub struct TestNats {
    pub server: NatsServer,
    _dir: tempfile::TempDir,
}

impl TestNats {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("chronicle-nats-")
            .tempdir()
            .expect("the temp dir is writable");
        let server = NatsServer::start(NatsOptions {
            store_dir: dir.path().to_path_buf(),
            port: None,
            cluster: None,
        })
        .expect("nats-server starts (is it installed? run scripts/setup)");
        Self { server, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to the test nats-server")
    }
}

/// Polls `check` every 10 ms until it returns `Some`, for at most `within`.
///
/// This waits for an asynchronous outcome the test cannot be told about (a projector
/// catching up); it is not a sleep standing in for synchronisation.
///
/// # Panics
/// When `within` passes first, with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
