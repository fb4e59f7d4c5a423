//! A gateway process killed (SIGKILL) in the middle of a chunk of a resumable upload
//! (issue 12): the upload resumes through another gateway from what the listing says is
//! missing, and completes with exactly the declared bytes.

mod common;
#[path = "common/gateways.rs"]
mod gateways;

use chronicle_tests::sha256_hex;
use chronicle_tests::ReadJson;
use std::time::Duration;

use chronicle_tests::{TestDb, TestNats};
use futures::StreamExt;
use gateways::{start, user};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_a_killed_gateway_resumes_elsewhere_with_the_right_bytes() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let data = tempfile::tempdir().unwrap();
    let (_main, main) = start("up", &db, &nats, data.path());
    let (mut doomed, doomed_base) = start("gateway", &db, &nats, data.path());
    let http = reqwest::Client::new();
    let (_, token) = user(&http, &main, "uploader").await;
    let bytes: Vec<u8> = (0..2 * 8 * 1024 * 1024 + 4_321)
        .map(|i: usize| (i % 239) as u8)
        .collect();
    let started: Value = http
        .post(format!("{doomed_base}/api/v1/files/uploads"))
        .bearer_auth(&token)
        .json(
            &json!({"name": "cut.bin", "size": bytes.len(), "sha256": sha256_hex(&bytes),
            "content_type": "application/octet-stream"}),
        )
        .read_json()
        .await;
    let upload = started["upload_id"].as_str().unwrap().to_owned();
    let chunk = started["chunk_size"].as_u64().unwrap() as usize;
    let piece = |i: usize| bytes[i * chunk..((i + 1) * chunk).min(bytes.len())].to_vec();
    let put = |base: String, i: usize, body: reqwest::Body| {
        let (http, token, upload) = (http.clone(), token.clone(), upload.clone());
        async move {
            http.put(format!("{base}/api/v1/files/uploads/{upload}/chunks/{i}"))
                .bearer_auth(token)
                .body(body)
                .send()
                .await
        }
    };
    let first = put(doomed_base.clone(), 0, piece(0).into()).await.unwrap();
    assert_eq!(first.status(), 204);

    // Chunk 1 goes out slowly; the gateway dies with half of it in.
    let half = piece(1)[..chunk / 2].to_vec();
    let slow = futures::stream::iter(
        half.chunks(64 * 1024)
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>(),
    )
    .then(|part| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::io::Error>(part)
    })
    .chain(futures::stream::pending());
    let cut = tokio::spawn(put(
        doomed_base.clone(),
        1,
        reqwest::Body::wrap_stream(slow),
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut doomed = doomed.0.take().expect("the doomed gateway runs");
    doomed.kill().expect("SIGKILL the gateway");
    doomed.wait().unwrap();
    assert!(
        cut.await.unwrap().is_err(),
        "the cut request fails with its connection"
    );

    // Resume through the surviving gateway from what is missing.
    let status: Value = http
        .get(format!("{main}/api/v1/files/uploads/{upload}"))
        .bearer_auth(&token)
        .read_json()
        .await;
    assert_eq!(status["received"], json!([0]), "{status}");
    assert_eq!(status["missing"], json!([1, 2]), "{status}");
    for i in [2, 1] {
        let r = put(main.clone(), i, piece(i).into()).await.unwrap();
        assert_eq!(r.status(), 204);
    }
    let done: Value = http
        .post(format!("{main}/api/v1/files/uploads/{upload}/complete"))
        .bearer_auth(&token)
        .read_json()
        .await;
    assert_eq!(done["sha256"], sha256_hex(&bytes).as_str(), "{done}");
    let served = http
        .get(format!(
            "{main}/api/v1/files/{}/content",
            done["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(served == bytes, "the file is exactly the bytes declared");
}
