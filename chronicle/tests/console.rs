//! The web console end to end (issue 18): `chronicle up` serves it, and
//! `console/e2e.mjs` drives it in headless Chromium through playwright-core (both installed
//! by scripts/setup). Screenshots are kept in `<target dir>/console-artifacts/`.

mod common;

use std::{path::Path, process::Command};

use common::{start_gateway, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_chromium_order_chat_blog_and_a_resumed_upload() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_chronicle"));
    command
        .arg("up")
        .env("CHRONICLE_DATA_DIR", dir.path())
        .env("CHRONICLE_STAFF_USERS", "*")
        .env("CHRONICLE_RATE_LIMIT_PER_SECOND", "0")
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL");
    let (running, base, _): (Running, String, _) =
        tokio::task::block_in_place(|| start_gateway(command));
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));

    // <target>/debug/deps/console-… → <target>/console-artifacts
    let exe = std::env::current_exe().unwrap();
    let artifacts = exe.ancestors().nth(3).unwrap().join("console-artifacts");
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    let output = tokio::task::block_in_place(|| {
        Command::new("node")
            .arg(e2e.join("e2e.mjs"))
            .arg(&base)
            .arg(&artifacts)
            .current_dir(&e2e)
            .output()
            .expect("node runs (scripts/setup installs playwright-core and chromium)")
    });
    let said = String::from_utf8_lossy(&output.stdout);
    let complained = String::from_utf8_lossy(&output.stderr);
    eprintln!("{said}{complained}");
    assert!(
        output.status.success(),
        "the console e2e failed:\n{said}\n{complained}"
    );
    drop(running);
}
