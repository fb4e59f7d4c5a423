//! Chronicle processes on one test's servers, sharing a token key: `chronicle up` and extra
//! gateways to kill, and users registered on them.

use chronicle_tests::ReadJson;
use std::process::Command;

use chronicle_tests::{TestDb, TestNats};
use serde_json::{json, Value};

use crate::common::{start_gateway, Running};

pub const SECRET: &str = "a test key that both gateways share, 32+ bytes long";

/// Starts `chronicle <subcommand>` on the test's servers; returns it and its gateway's URL.
pub fn start(
    subcommand: &str,
    db: &TestDb,
    nats: &TestNats,
    data: &std::path::Path,
) -> (Running, String) {
    start_with(subcommand, db, nats, data, &[])
}

/// [`start`], with more environment (`CHRONICLE_STAFF_USERS`, say).
pub fn start_with(
    subcommand: &str,
    db: &TestDb,
    nats: &TestNats,
    data: &std::path::Path,
    env: &[(&str, &str)],
) -> (Running, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chronicle"));
    command.envs(env.iter().copied());
    command
        .arg(subcommand)
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats.url())
        .env("CHRONICLE_DATA_DIR", data)
        .env("CHRONICLE_JWT_SECRET", SECRET)
        .env("CHRONICLE_RATE_LIMIT_PER_SECOND", "0")
        // A dead gateway's users lapse after this.
        .env("CHRONICLE_PRESENCE_TTL", "3s");
    let (running, base, _) = start_gateway(command);
    (running, base)
}

pub async fn user(http: &reqwest::Client, base: &str, name: &str) -> (String, String) {
    let credentials = json!({"username": name, "password": "a test password"});
    let registered = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"username": name, "password": "a test password",
            "display_name": name}))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success(), "{}", registered.status());
    let login: Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&credentials)
        .read_json()
        .await;
    (
        login["user_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no user id in {login}"))
            .to_owned(),
        login["token"].as_str().expect("a token").to_owned(),
    )
}
