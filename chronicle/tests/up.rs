//! `chronicle up` as a user runs it: a subprocess that starts its own nats-server and
//! PostgreSQL, serves HTTP, and stops cleanly on SIGTERM.

mod common;

use chronicle_tests::ReadJson;
use std::{process::Command, time::Duration};

use common::{start_gateway, Running};

use serde_json::{json, Value};

/// Starts `chronicle up` on port 0 with `data_dir`, returns it and its base URL.
fn start(data_dir: &std::path::Path) -> (Running, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chronicle"));
    command.env("CHRONICLE_DATA_DIR", data_dir);
    let (running, base, _) = start_command(command);
    (running, base)
}

/// Starts `command` as `chronicle up`, on servers of its own; returns it, its base URL
/// and what it printed before that.
fn start_command(mut command: Command) -> (Running, String, Vec<String>) {
    command
        .arg("up")
        .env("CHRONICLE_STAFF_USERS", "*")
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL");
    start_gateway(command)
}

/// Asks `/health` and expects `ok`.
async fn assert_healthy(base: &str) {
    let health: Value = reqwest::get(format!("{base}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
}

/// Regression (issue 10): README's first command failed from a clone in `/root` (mode
/// 700): initdb, run as `postgres`, could not enter the data dir.
#[tokio::test]
async fn chronicle_up_runs_from_a_directory_the_postgres_user_cannot_enter() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("a temp dir");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let clone = home.path().join("clone");
    std::fs::create_dir(&clone).unwrap();
    // As a user runs it: from the clone, with the default data dir `.chronicle`.
    let mut command = Command::new(env!("CARGO_BIN_EXE_chronicle"));
    command.current_dir(&clone).env_remove("CHRONICLE_DATA_DIR");
    let (running, base, said) = start_command(command);
    assert_healthy(&base).await;
    terminate(running);
    if nix::unistd::Uid::effective().is_root() {
        let moved = said
            .iter()
            .find_map(|line| line.strip_prefix("chronicle: PostgreSQL keeps its data in "))
            .unwrap_or_else(|| panic!("it says where the cluster went: {said:?}"));
        let cluster = std::path::PathBuf::from(moved.split(" (").next().unwrap());
        assert!(
            cluster.starts_with("/var/lib/chronicle"),
            "{}",
            cluster.display()
        );
        assert!(cluster.join("PG_VERSION").exists());
        std::fs::remove_dir_all(&cluster).unwrap();
    } else {
        assert!(clone.join(".chronicle/pg/PG_VERSION").exists());
    }
}

fn terminate(mut running: Running) {
    let mut child = running.0.take().expect("the child is running");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal chronicle");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait for chronicle") {
            assert!(
                status.success(),
                "chronicle up exits cleanly on SIGTERM: {status}"
            );
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chronicle up did not stop within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Logs `smoke` in and returns the bearer token.
async fn login(http: &reqwest::Client, base: &str) -> String {
    let answer: Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "smoke", "password": "smoke test password"}))
        .read_json()
        .await;
    answer["token"].as_str().expect("a token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chronicle_up_serves_an_item_over_http_and_keeps_it_across_a_restart() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let http = reqwest::Client::new();

    let (child, base) = tokio::task::block_in_place(|| start(dir.path()));
    let health: Value = http.get(format!("{base}/health")).read_json().await;
    assert_eq!(
        health,
        json!({"status": "ok", "postgres": "up", "nats": "up"})
    );
    let registered = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"username": "smoke", "password": "smoke test password", "display_name": "Smoke"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), reqwest::StatusCode::CREATED);
    let token = login(&http, &base).await;
    let created = chronicle_tests::send_as(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/v1/inventory/items"),
        &token,
        Some(&json!({"sku": "SMOKE-1", "name": "Smoke", "price_cents": 99, "initial_stock": 3})),
    )
    .await;
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let read = http
        .get(format!(
            "{base}/api/v1/inventory/items/SMOKE-1?min_version=1"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.headers()["chronicle-consistency"], "fresh");
    let item: Value = read.json().await.unwrap();
    assert_eq!(
        (item["available"].clone(), item["version"].clone()),
        (json!(3), json!(1))
    );
    // `up` runs the order saga: a placed order gets its stock reserved.
    let placed: Value = http
        .post(format!("{base}/api/v1/orders"))
        .bearer_auth(&token)
        .json(&json!({"lines": [{"sku": "SMOKE-1", "quantity": 2}]}))
        .read_json()
        .await;
    let order_url = format!("{base}/api/v1/orders/{}", placed["id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let order: Value = http.get(&order_url).bearer_auth(&token).read_json().await;
        if order["status"] == "reserved" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the saga never reserved the order: {order}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::block_in_place(|| terminate(child));

    let (child, base) = tokio::task::block_in_place(|| start(dir.path()));
    // The first token still verifies: the signing key was kept under the data dir.
    let item: Value = http
        .get(format!(
            "{base}/api/v1/inventory/items/SMOKE-1?min_version=2"
        ))
        .bearer_auth(&token)
        .read_json()
        .await;
    assert_eq!(item["name"], "Smoke", "the read model survived the restart");
    assert_eq!(item["reserved"], 2, "and so did the reservation");
    assert!(
        !login(&http, &base).await.is_empty(),
        "the credentials survived the restart"
    );
    tokio::task::block_in_place(|| terminate(child));
}

/// `chronicle users grant <username> staff` against a running `chronicle up` (the API contract, Roles):
/// staff from the user's next login; an unknown name is refused and grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_grant_makes_a_user_staff_from_their_next_login() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let http = reqwest::Client::new();
    let mut command = Command::new(env!("CARGO_BIN_EXE_chronicle"));
    command
        .arg("up")
        .env("CHRONICLE_DATA_DIR", dir.path())
        .env_remove("CHRONICLE_STAFF_USERS")
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL");
    let (_running, base, _) = tokio::task::block_in_place(|| start_gateway(command));
    let registered = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(
            &json!({"username": "smoke", "password": "smoke test password", "display_name": "Ada"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), reqwest::StatusCode::CREATED);
    let create_item = |token: String, sku: &'static str| {
        let (http, base) = (&http, &base);
        async move {
            http.post(format!("{base}/api/v1/inventory/items"))
                .bearer_auth(token)
                .json(
                    &json!({"sku": sku, "name": "Widget", "price_cents": 100, "initial_stock": 1}),
                )
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let customer = login(&http, &base).await;
    assert_eq!(
        create_item(customer, "A-1").await,
        reqwest::StatusCode::FORBIDDEN
    );

    let grant = |username: &str| {
        Command::new(env!("CARGO_BIN_EXE_chronicle"))
            .args(["users", "grant", username, "staff"])
            .env("CHRONICLE_DATA_DIR", dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("NATS_URL")
            .output()
            .expect("chronicle users grant runs")
    };
    let unknown = grant("nobody");
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no user is called"),
        "{unknown:?}"
    );
    let granted = grant("smoke");
    assert!(granted.status.success(), "{granted:?}");
    assert!(
        String::from_utf8_lossy(&granted.stdout).contains("smoke is staff from their next login")
    );
    // Granting again changes nothing.
    assert!(grant("smoke").status.success());

    let staff = login(&http, &base).await;
    assert_eq!(
        create_item(staff, "A-2").await,
        reqwest::StatusCode::CREATED
    );
}
