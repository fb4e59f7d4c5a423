//! The served OpenAPI document read by tools someone else wrote (issue 29): the
//! specification's validator (`openapi-spec-validator`, PyPI) accepts it, and
//! `openapi-python-client` (PyPI) generates a client with a function for every operation,
//! which then registers, uploads files (multipart, chunked and tus) and reads them back
//! against a running `chronicle up` (`openapi_client/drive.py`).
//!
//! Before this test the document repeated `operationId`s (`list` ×7), which the validator
//! rejects, and the generator skipped the upload operations, whose bodies had no schema.

mod common;

use std::{collections::BTreeSet, path::Path, process::Command};

use common::start_gateway_logging_to;
use serde_json::Value;

/// Runs `command`, failing the test with its output when it fails; gives its stdout and
/// stderr.
fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what} starts (scripts/setup installs it): {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{said}");
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_has_every_operation_and_uploads_and_reads_files_back() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = std::fs::File::create(dir.path().join("chronicle.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_chronicle"));
    command
        .arg("up")
        .env("CHRONICLE_DATA_DIR", dir.path().join("data"))
        .env("CHRONICLE_RATE_LIMIT_PER_SECOND", "0")
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL");
    let (_running, base, _) =
        tokio::task::block_in_place(|| start_gateway_logging_to(command, log));

    let text = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let document: Value = serde_json::from_str(&text).unwrap();
    let spec = dir.path().join("openapi.json");
    std::fs::write(&spec, &text).unwrap();

    // The specification's rules, checked by its validator (unique operationIds among them).
    let said = run(
        Command::new("openapi-spec-validator").arg(&spec),
        "openapi-spec-validator",
    );
    assert!(said.contains("OK"), "{said}");

    // A client generated from it, with a module for every operation of the document.
    let generated = dir.path().join("generated");
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_client");
    let said = run(
        Command::new("openapi-python-client")
            .arg("generate")
            .arg("--path")
            .arg(&spec)
            .arg("--output-path")
            .arg(generated.join("chronicle_client"))
            .arg("--meta")
            .arg("none")
            .arg("--config")
            .arg(here.join("generator.yaml")),
        "openapi-python-client",
    );
    let mut missing = Vec::new();
    let mut ids = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Some(id) = operation["operationId"].as_str() else {
                continue;
            };
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            let tag = operation["tags"][0].as_str().unwrap();
            let module = generated.join(format!("chronicle_client/api/{tag}/{id}.py"));
            if !module.exists() {
                missing.push(format!("{} {path} ({id})", method.to_uppercase()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the generated client lacks {missing:?}; the generator said:\n{said}"
    );

    // The generated client, used as an integrator would.
    let said = run(
        Command::new("python3")
            .arg(here.join("drive.py"))
            .arg(&generated)
            .arg(&base),
        "the generated client",
    );
    assert!(said.contains("3 uploads read back"), "{said}");
}
