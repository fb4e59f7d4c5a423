//! The files janitor (issue 12) against real servers: abandoned uploads lose their chunks,
//! unreferenced bytes go only with the read model caught up, and a claim made while bytes
//! are being removed waits for the removal instead of pointing a file at nothing.

use chronicle_commands::contexts::FILES;
use chronicle_tests::sha256_hex;
use std::time::Duration;

use chronicle_projections::file_metadata;
use chronicle_sagas::{FilesJanitor, FilesJanitorConfig};
use chronicle_tests::{eventually, TestApp, TestOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::post_file;

async fn objects(app: &TestApp) -> Vec<String> {
    crate::common::file_objects(app.nats.client().await).await
}

/// A chunked upload of `bytes` (one chunk) with its chunk sent, not completed: its id.
async fn upload_with_its_chunk(app: &TestApp, bytes: &[u8]) -> String {
    let started: Value = app
        .post(
            "/api/v1/files/uploads",
            json!({"name": "part.bin", "size": bytes.len(), "sha256": sha256_hex(bytes),
                "content_type": "application/octet-stream"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = started["upload_id"].as_str().unwrap().to_owned();
    let put = app
        .request(Method::PUT, &format!("/api/v1/files/uploads/{id}/chunks/0"))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    id
}

#[tokio::test]
async fn an_abandoned_upload_loses_its_chunks_and_is_closed() {
    let app = TestApp::spawn_options(TestOptions {
        gateway: Box::new(|config| {
            config
                .contexts
                .get_mut::<chronicle_gateway::FilesConfig>()
                .upload_ttl = Duration::from_secs(1)
        }),
        ..TestOptions::default()
    })
    .await;
    let bytes = vec![7u8; 100_000];
    let id = upload_with_its_chunk(&app, &bytes).await;
    let chunks = objects(&app).await;
    assert!(
        chunks.len() == 1 && chunks[0].starts_with(&format!("chunk.{id}.0.")),
        "{chunks:?}"
    );
    // A tus upload left half way, too.
    let tus = app
        .request(Method::POST, "/api/v1/files/tus")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .header("content-type", "application/offset+octet-stream")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(tus.status(), StatusCode::CREATED);
    let location = tus.headers()["location"].to_str().unwrap().to_owned();
    let tus_id = location.rsplit('/').next().unwrap().to_owned();
    assert_eq!(objects(&app).await.len(), 2);
    // Past its expiry (1 s) and the grace period (2 s), the chunk goes and the upload is
    // expired: it neither completes nor takes chunks.
    eventually("the chunk removed", Duration::from_secs(20), || async {
        objects(&app).await.is_empty().then_some(())
    })
    .await;
    eventually("the upload expired", Duration::from_secs(10), || async {
        let events: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM files.events WHERE aggregate_id = $1 AND event_type = 'UploadExpired'",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let tus: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM files.events WHERE aggregate_id = $1 AND event_type = 'TusUploadExpired'",
        )
        .bind(&tus_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (events == 1 && tus == 1).then_some(())
    })
    .await;
    let head = app
        .request(Method::HEAD, &location)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::GONE);
    let complete = app
        .send(
            Method::POST,
            &format!("/api/v1/files/uploads/{id}/complete"),
        )
        .await;
    assert_eq!(complete.status(), StatusCode::CONFLICT);
    let problem: Value = complete.json().await.unwrap();
    assert_eq!(problem["code"], "upload_closed", "{problem}");
    let put = app
        .request(Method::PUT, &format!("/api/v1/files/uploads/{id}/chunks/0"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CONFLICT);
    assert!(objects(&app).await.is_empty());
}

/// A system whose own janitor never removes anything (an hour of grace), and a janitor the
/// test sweeps with by hand, without grace.
async fn app_and_janitor() -> (TestApp, FilesJanitor) {
    let app = TestApp::spawn_options(TestOptions {
        janitor: FilesJanitorConfig {
            grace: Duration::from_secs(3600),
            ..FilesJanitorConfig::default()
        },
        ..TestOptions::default()
    })
    .await;
    let janitor = FilesJanitor::new(
        app.databases().of(FILES).clone(),
        app.nats.client().await,
        app.db.executor().await,
        FilesJanitorConfig {
            grace: Duration::ZERO,
            every: Duration::from_secs(3600),
            catch_up: Duration::from_secs(5),
            orphan_age: Duration::ZERO,
            orphans_every: Duration::from_secs(3600),
        },
    );
    (app, janitor)
}

/// Uploads `bytes` and deletes the file: its hash, once the read model counts no live file.
async fn stored_then_deleted(app: &TestApp, bytes: &[u8]) -> String {
    let stored: Value = post_file(
        &app.http,
        &app.base,
        &app.token,
        bytes.to_vec(),
        "x.bin",
        "application/octet-stream",
    )
    .await
    .json()
    .await
    .unwrap();
    let id = stored["id"].as_str().unwrap();
    let deleted = app
        .send(Method::DELETE, &format!("/api/v1/files/{id}"))
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let sha256 = stored["sha256"].as_str().unwrap().to_owned();
    eventually("no live file", Duration::from_secs(10), || async {
        let deleted: Option<bool> = sqlx::query_scalar(
            "SELECT deleted_at IS NOT NULL FROM files.files WHERE sha256 = $1 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(&sha256)
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        (deleted == Some(true)).then_some(())
    })
    .await;
    sha256
}

#[tokio::test]
async fn unreferenced_bytes_wait_while_the_read_model_has_a_parked_event() {
    let (app, janitor) = app_and_janitor().await;
    let sha256 = stored_then_deleted(&app, b"bytes nobody needs").await;
    // An event the read model could not apply might be a file pointing at these bytes.
    sqlx::query(
        "INSERT INTO files.parked_events (subscriber, stream_seq, subject, event_type, error, attempts) \
         VALUES ($1, 999999, 'events.files.file.x', 'FileStored', 'test', 1)",
    )
    .bind(chronicle_projections::Projection::name(&file_metadata::FileMetadataProjection))
    .execute(&app.pool)
    .await
    .unwrap();
    let swept = janitor.sweep().await.unwrap();
    assert!(swept.postponed);
    assert!(swept.bytes_removed.is_empty());
    assert_eq!(
        objects(&app).await.len(),
        2,
        "the manifest and its part stay"
    );
    sqlx::query("DELETE FROM files.parked_events")
        .execute(&app.pool)
        .await
        .unwrap();
    let swept = janitor.sweep().await.unwrap();
    assert!(!swept.postponed);
    assert_eq!(swept.bytes_removed, vec![sha256.clone()]);
    assert!(objects(&app).await.is_empty());
    // Swept again: nothing more to do.
    assert!(janitor.sweep().await.unwrap().bytes_removed.is_empty());
}

#[tokio::test]
async fn a_claim_made_during_a_removal_waits_for_it_and_then_stores_the_bytes_anew() {
    let (app, _janitor) = app_and_janitor().await;
    let bytes = b"bytes removed while someone uploads them again".to_vec();
    let sha256 = stored_then_deleted(&app, &bytes).await;
    let cutoff = chrono::Utc::now();
    // The janitor's removal holds the claim's row...
    let mut removal = app.databases().of(FILES).begin().await.unwrap();
    assert!(
        file_metadata::lock_unreferenced(&mut removal, &sha256, cutoff)
            .await
            .unwrap()
    );
    // ...so an upload of the same bytes, which claims them before it names them, waits.
    let uploading = {
        let (http, base, token) = (app.http.clone(), app.base.clone(), app.token.clone());
        let bytes = bytes.clone();
        tokio::spawn(async move {
            let r = post_file(
                &http,
                &base,
                &token,
                bytes,
                "again.bin",
                "application/octet-stream",
            )
            .await;
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!uploading.is_finished(), "the claim waits for the removal");
    // The removal finishes: the bytes are gone when the claim goes through.
    let content =
        chronicle_bus::ContentStore::open(&async_nats::jetstream::new(app.nats.client().await), 1)
            .await
            .unwrap();
    content.delete(&sha256).await.unwrap();
    file_metadata::mark_removed(&mut removal, &sha256)
        .await
        .unwrap();
    removal.commit().await.unwrap();
    let stored = uploading.await.unwrap();
    assert_eq!(stored["sha256"], sha256.as_str());
    assert_eq!(
        stored["deduplicated"], false,
        "stored anew, not pointed at nothing"
    );
    let served = app
        .get(&format!(
            "/api/v1/files/{}/content",
            stored["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(served.status(), StatusCode::OK);
    assert!(served.bytes().await.unwrap() == bytes);
    // Freshly claimed, the bytes are not the janitor's to take.
    let mut again = app.databases().of(FILES).begin().await.unwrap();
    assert!(!file_metadata::lock_unreferenced(
        &mut again,
        &sha256,
        chrono::Utc::now() - chrono::TimeDelta::seconds(60)
    )
    .await
    .unwrap());
}

#[tokio::test]
async fn parts_no_manifest_lists_and_no_open_upload_holds_are_removed_and_no_other() {
    let (app, janitor) = app_and_janitor().await;
    // A file: a manifest and its part.
    let file: Value = post_file(
        &app.http,
        &app.base,
        &app.token,
        b"kept bytes".to_vec(),
        "kept.bin",
        "application/octet-stream",
    )
    .await
    .json()
    .await
    .unwrap();
    // An open upload with a chunk in.
    let upload = upload_with_its_chunk(&app, &[9u8; 70_000]).await;
    eventually("the upload projected", Duration::from_secs(10), || async {
        let open: Option<bool> =
            sqlx::query_scalar("SELECT open FROM files.file_uploads WHERE id = $1")
                .bind(&upload)
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        (open == Some(true)).then_some(())
    })
    .await;
    // Bytes written and never named, as a gateway dying in between leaves them.
    let js = async_nats::jetstream::new(app.nats.client().await);
    let content = chronicle_bus::ContentStore::open(&js, 1).await.unwrap();
    content
        .put_part("part.orphan", &mut &b"lost"[..], 10)
        .await
        .unwrap();
    content
        .put_part(
            "tus.0190a0a0-0000-7000-8000-000000000000.x",
            &mut &b"lost too"[..],
            10,
        )
        .await
        .unwrap();
    let before = objects(&app).await;
    let mut removed = janitor.sweep_orphans().await.unwrap();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            "part.orphan".to_owned(),
            "tus.0190a0a0-0000-7000-8000-000000000000.x".to_owned()
        ]
    );
    let after = objects(&app).await;
    assert_eq!(after.len(), before.len() - 2, "{after:?}");
    // What is named or held is untouched: the file serves, the upload completes.
    let served = app
        .get(&format!(
            "/api/v1/files/{}/content",
            file["id"].as_str().unwrap()
        ))
        .await;
    assert!(served.bytes().await.unwrap() == b"kept bytes"[..]);
    let done = app
        .send(
            Method::POST,
            &format!("/api/v1/files/uploads/{upload}/complete"),
        )
        .await;
    assert_eq!(done.status(), StatusCode::CREATED);
}
