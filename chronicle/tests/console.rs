//! The web console end to end (issues 18 and 33): `chronicle up` serves it, and
//! `console/e2e.mjs` drives it in headless Chromium through playwright-core (both installed
//! by scripts/setup). Screenshots are kept in `<target dir>/console-artifacts/`.

mod common;
#[allow(dead_code)] // its users only
#[path = "common/gateways.rs"]
mod gateways;

use std::{path::Path, process::Command, time::Duration};

use chronicle_tests::{eventually, TestDb, TestNats};
use serde_json::{json, Value};

/// Runs `node e2e.mjs <base> <artifacts> <args…>`; panics with its output when it fails.
fn e2e(base: &str, args: &[&str]) {
    // <target>/debug/deps/console-… → <target>/console-artifacts
    let exe = std::env::current_exe().unwrap();
    let artifacts = exe.ancestors().nth(3).unwrap().join("console-artifacts");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    let output = Command::new("node")
        .arg(dir.join("e2e.mjs"))
        .arg(base)
        .arg(&artifacts)
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("node runs (scripts/setup installs playwright-core and chromium)");
    let said = String::from_utf8_lossy(&output.stdout);
    let complained = String::from_utf8_lossy(&output.stderr);
    eprintln!("{said}{complained}");
    assert!(
        output.status.success(),
        "the console e2e {args:?} failed:\n{said}\n{complained}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_chromium_shop_chat_blog_files_operations_and_monitoring() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let data = tempfile::tempdir().unwrap();
    let (_running, base) = gateways::start_with(
        "up",
        &db,
        &nats,
        data.path(),
        &[("CHRONICLE_STAFF_USERS", "*")],
    );
    let http = reqwest::Client::new();
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));

    tokio::task::block_in_place(|| e2e(&base, &[]));

    // A reader parks an event its table cannot hold; the cause is then removed by hand, as
    // an operator would, and the console's retry button must apply it.
    let pool = db.pool().await;
    sqlx::query(
        "ALTER TABLE commerce.inventory_items ADD CONSTRAINT console_e2e_blocks CHECK (sku <> 'E2E-PARKED')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (_, staff) = gateways::user(&http, &base, "dave").await;
    let created = chronicle_tests::send_as(&http, reqwest::Method::POST, format!("{base}/api/v1/inventory/items"), &staff, Some(&json!({"sku": "E2E-PARKED", "name": "Parked lamp", "price_cents": 100, "initial_stock": 1}))).await;
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    eventually(
        "the inventory reader to park the item",
        Duration::from_secs(30),
        || async {
            let readers: Value = http
                .get(format!("{base}/api/v1/projections"))
                .bearer_auth(&staff)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let inventory = readers
                .as_array()?
                .iter()
                .find(|r| r["name"] == "inventory")?;
            (inventory["parked"].as_u64()? == 1).then_some(())
        },
    )
    .await;
    sqlx::query("ALTER TABLE commerce.inventory_items DROP CONSTRAINT console_e2e_blocks")
        .execute(&pool)
        .await
        .unwrap();

    tokio::task::block_in_place(|| e2e(&base, &["retry", "inventory"]));

    // The retried event is in the read model now.
    let item = chronicle_tests::send_as(
        &http,
        reqwest::Method::GET,
        format!("{base}/api/v1/inventory/items/E2E-PARKED"),
        &staff,
        None,
    )
    .await;
    assert_eq!(item.status(), reqwest::StatusCode::OK);
    assert_eq!(item.json::<Value>().await.unwrap()["name"], "Parked lamp");

    // Monitoring: its business dashboard shows what the scenarios above did.
    tokio::task::block_in_place(|| e2e(&base, &["monitoring"]));
}

/// The uPlot the binary embeds is the one the lock file pins, byte for byte: the vendored copy
/// cannot drift from the package, nor be edited by hand.
#[test]
fn the_embedded_chart_library_is_the_pinned_npm_package() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock: Value = serde_json::from_slice(
        &std::fs::read(root.join("tests/console/package-lock.json")).unwrap(),
    )
    .unwrap();
    let pinned = &lock["packages"]["node_modules/uplot"]["version"];
    let package = root.join("tests/console/node_modules/uplot");
    let installed: Value =
        serde_json::from_slice(&std::fs::read(package.join("package.json")).unwrap()).unwrap();
    assert_eq!(&installed["version"], pinned, "run npm ci (scripts/setup)");
    let vendor = root.join("../gateway/console/vendor");
    for (vendored, original) in [
        ("uPlot.esm.js", "dist/uPlot.esm.js"),
        ("uPlot.min.css", "dist/uPlot.min.css"),
        ("uPlot.LICENSE", "LICENSE"),
    ] {
        assert!(
            std::fs::read(vendor.join(vendored)).unwrap()
                == std::fs::read(package.join(original)).unwrap(),
            "gateway/console/vendor/{vendored} is not uplot {pinned}'s {original}: copy it again"
        );
    }
}
