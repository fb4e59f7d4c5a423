//! The tus 1.0 endpoint (issue 12, the API contract Files) against real servers: driven by tuspy, the
//! tus project's Python client from PyPI (installed by scripts/setup), unchanged, so what it
//! expects of a tus server is what we are held to; and the protocol's edges with reqwest.

use chronicle_tests::sha256_hex;
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use chronicle_tests::{eventually, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_mul(seed) ^ (i / 4096) as u8)
        .collect()
}

/// `python3 tests/tus/tuspy_client.py <step>` against `app`, uploading `file` in `chunk`-byte
/// `PATCH`es, keeping upload URLs in `storage`.
fn tuspy(app: &TestApp, step: &str, file: &Path, chunk: usize, storage: &Path) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tus/tuspy_client.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .arg(step)
        .env("TUS_URL", app.url("/api/v1/files/tus"))
        .env("TUS_TOKEN", &app.token)
        .env("TUS_FILE", file)
        .env("TUS_CHUNK", chunk.to_string())
        .env("TUS_STORAGE", storage)
        .stderr(Stdio::inherit());
    command
}

/// Runs a tuspy step to its end: its last JSON line.
async fn run(mut command: Command) -> Value {
    let out = tokio::task::spawn_blocking(move || command.output().expect("python3 runs"))
        .await
        .unwrap();
    assert!(out.status.success(), "tuspy failed: {:?}", out.status);
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("a line")).expect("JSON")
}

async fn content_of(app: &TestApp, file_id: &str) -> Vec<u8> {
    let r = app.get(&format!("/api/v1/files/{file_id}/content")).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.unwrap().to_vec()
}

async fn tus_objects(app: &TestApp) -> Vec<String> {
    crate::common::file_objects(app.nats.client().await)
        .await
        .into_iter()
        .filter(|name| name.starts_with("tus."))
        .collect()
}

#[tokio::test]
async fn tuspy_uploads_in_checksummed_chunks_and_the_upload_is_a_file_like_any_other() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 * 1024 * 1024 + 5, 3);
    let path = dir.path().join("report.bin");
    std::fs::write(&path, &bytes).unwrap();
    let storage = dir.path().join("urls.json");
    let done = run(tuspy(&app, "upload", &path, 1024 * 1024, &storage)).await;
    assert_eq!(done["offset"], bytes.len());
    let file_id = done["file_id"]
        .as_str()
        .expect("Chronicle-File-Id")
        .to_owned();
    assert!(done["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/api/v1/files/tus/{file_id}")));
    let meta: Value = app.get_json(&format!("/api/v1/files/{file_id}")).await;
    assert_eq!(meta["name"], "report.bin");
    assert_eq!(meta["size"], bytes.len());
    assert_eq!(meta["sha256"], sha256_hex(&bytes));
    assert!(content_of(&app, &file_id).await == bytes);
    // Four PATCHes, four parts, named by the hash as one.
    assert_eq!(tus_objects(&app).await.len(), 4);

    // The same bytes again: another file, the bytes stored once.
    let again = run(tuspy(&app, "upload", &path, 1024 * 1024, &storage)).await;
    let second = again["file_id"].as_str().unwrap();
    assert_ne!(second, file_id);
    assert!(content_of(&app, second).await == bytes);
    eventually(
        "the second copy's parts dropped",
        Duration::from_secs(10),
        || async { (tus_objects(&app).await.len() == 4).then_some(()) },
    )
    .await;
    eventually("both files listed", Duration::from_secs(10), || async {
        let page: Value = app.get("/api/v1/files").await.json().await.unwrap();
        (page["items"].as_array().unwrap().len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_tuspy_upload_killed_half_way_resumes_from_the_offset_the_server_holds() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4 * 1024 * 1024 + 123, 7);
    let path = dir.path().join("big.bin");
    std::fs::write(&path, &bytes).unwrap();
    let storage = dir.path().join("urls.json");
    let mut half = tuspy(&app, "half", &path, 256 * 1024, &storage)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let stdout = half.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let said: Value = serde_json::from_str(&line).expect("the half-way line");
    // kill -9: the client gets no chance to say anything.
    half.kill().unwrap();
    half.wait().unwrap();
    let at = said["offset"].as_u64().unwrap();
    assert!(at >= bytes.len() as u64 / 2 && at < bytes.len() as u64);
    let mut resume = tuspy(&app, "resume", &path, 256 * 1024, &storage);
    let out = tokio::task::spawn_blocking(move || resume.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["url"], said["url"], "the same upload resumed");
    assert_eq!(
        lines[0]["resumed_from"], at,
        "from the offset the server held"
    );
    let file_id = lines[1]["file_id"].as_str().expect("a file");
    assert!(content_of(&app, file_id).await == bytes);
}

#[tokio::test]
async fn a_chunk_that_does_not_match_its_checksum_is_460_and_nothing_of_it_is_kept() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bin");
    std::fs::write(&path, data(100_000, 5)).unwrap();
    let said = run(tuspy(
        &app,
        "corrupt",
        &path,
        64 * 1024,
        &dir.path().join("u.json"),
    ))
    .await;
    assert_eq!(said["status"], 460, "{said}");
    assert_eq!(said["offset"], 0);
    assert!(tus_objects(&app).await.is_empty());
}

/// A tus request with the caller's token and `Tus-Resumable`.
fn tus(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.request(method, path).header("tus-resumable", "1.0.0")
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn the_protocol_edges_answer_as_tus_says_and_change_nothing() {
    let app = TestApp::spawn().await;
    let before = app.event_count().await;
    let options = app
        .http
        .request(Method::OPTIONS, app.url("/api/v1/files/tus"))
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&options, "tus-version"), "1.0.0");
    for extension in [
        "creation",
        "creation-with-upload",
        "expiration",
        "checksum",
        "termination",
    ] {
        assert!(header(&options, "tus-extension")
            .split(',')
            .any(|e| e == extension));
    }
    assert_eq!(header(&options, "tus-checksum-algorithm"), "sha1,sha256");
    assert_eq!(header(&options, "tus-max-size"), "5368709120");

    // Another version: 412 with the one we speak.
    let r = app
        .request(Method::POST, "/api/v1/files/tus")
        .header("tus-resumable", "0.2.2")
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(header(&r, "tus-version"), "1.0.0");
    // Hostile declarations.
    for (length, metadata, status) in [
        ("-1", "", StatusCode::BAD_REQUEST),
        ("99999999999999999999", "", StatusCode::BAD_REQUEST),
        ("5368709121", "", StatusCode::PAYLOAD_TOO_LARGE),
        ("0", "", StatusCode::UNPROCESSABLE_ENTITY),
        (
            "5",
            "filename Li4vLi4vZXRjL3Bhc3N3ZA==",
            StatusCode::UNPROCESSABLE_ENTITY,
        ), // ../../etc/passwd
        ("5", "filename YQBi", StatusCode::UNPROCESSABLE_ENTITY), // a NUL b
        ("5", "filename ***", StatusCode::BAD_REQUEST),
    ] {
        let mut request =
            tus(&app, Method::POST, "/api/v1/files/tus").header("upload-length", length);
        if !metadata.is_empty() {
            request = request.header("upload-metadata", metadata);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), status, "{length} {metadata}");
        assert_eq!(header(&r, "tus-resumable"), "1.0.0");
    }
    let r = tus(&app, Method::POST, "/api/v1/files/tus")
        .header("upload-length", "5")
        .header("upload-defer-length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Without a token: 401.
    let r = app
        .http
        .post(app.url("/api/v1/files/tus"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.event_count().await, before, "nothing was appended");

    // creation-with-upload: the first bytes come with the POST.
    let r = tus(&app, Method::POST, "/api/v1/files/tus")
        .header("upload-length", "10")
        .header("content-type", "application/offset+octet-stream")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "upload-offset"), "5");
    assert!(header(&r, "upload-expires").ends_with(" GMT"));
    let location = header(&r, "location").to_owned();
    // The wrong offset, the wrong media type, bytes past the length: refused, nothing kept.
    let patch = |offset: &str, content_type: &str, body: &'static str| {
        tus(&app, Method::PATCH, &location)
            .header("upload-offset", offset)
            .header("content-type", content_type)
            .body(body)
    };
    let r = patch("0", "application/offset+octet-stream", "hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = patch("5", "text/plain", "world").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = patch("5", "application/offset+octet-stream", "world, and more")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        tus_objects(&app).await.len(),
        1,
        "only the first bytes are kept"
    );
    // Someone else's upload does not exist for them.
    let (_, other) = app.register_and_login("someone_else").await;
    let r = app
        .http
        .head(app.url(&location))
        .bearer_auth(&other)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = tus(&app, Method::HEAD, &location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "upload-offset"), "5");
    assert_eq!(header(&r, "upload-length"), "10");
    assert_eq!(header(&r, "cache-control"), "no-store");
    // A SHA-256 checksum that matches: the rest goes in, and the upload is a file.
    let digest = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        Sha256::digest(b"world"),
    );
    let r = patch("5", "application/offset+octet-stream", "world")
        .header("upload-checksum", format!("sha256 {digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "upload-offset"), "10");
    let file_id = header(&r, "chronicle-file-id").to_owned();
    assert!(content_of(&app, &file_id).await == b"helloworld");

    // Termination: the upload is gone, and its bytes.
    let r = tus(&app, Method::POST, "/api/v1/files/tus")
        .header("upload-length", "10")
        .header("content-type", "application/offset+octet-stream")
        .body("abc")
        .send()
        .await
        .unwrap();
    let location = header(&r, "location").to_owned();
    assert_eq!(tus_objects(&app).await.len(), 3);
    let r = tus(&app, Method::DELETE, &location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = tus(&app, Method::HEAD, &location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(tus_objects(&app).await.len(), 2);
}

#[tokio::test]
async fn an_upload_whole_but_not_yet_a_file_becomes_one_when_asked_about() {
    let app = TestApp::spawn().await;
    let r = tus(&app, Method::POST, "/api/v1/files/tus")
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    let location = header(&r, "location").to_owned();
    let id = location.rsplit('/').next().unwrap().to_owned();
    // The last bytes stored and recorded, as a gateway does just before it dies.
    let js = async_nats::jetstream::new(app.nats.client().await);
    let content = chronicle_bus::ContentStore::open(&js, 1).await.unwrap();
    let part = format!("tus.{id}.last");
    content
        .put_part(&part, &mut &b"hello"[..], 5)
        .await
        .unwrap();
    let commands = app.db.executor().await;
    commands
        .execute::<chronicle_files::TusUpload>(
            &id,
            chronicle_files::TusCommand::Store {
                offset: 0,
                length: 5,
                part,
                by: app.user_id.clone(),
            },
            &(),
            &chronicle_commands::CommandContext::new(),
        )
        .await
        .unwrap();
    // The client asks where it stands: the upload is whole, and a file now.
    let r = tus(&app, Method::HEAD, &location).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "upload-offset"), "5");
    assert_eq!(header(&r, "chronicle-file-id"), id);
    assert!(content_of(&app, &id).await == b"hello");
    // Sending the end again changes nothing.
    let r = tus(&app, Method::PATCH, &location)
        .header("upload-offset", "5")
        .header("content-type", "application/offset+octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "chronicle-file-id"), id);
}
