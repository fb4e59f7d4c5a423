//! Files over HTTP (issue 12) with reqwest's multipart client: upload, metadata, the bytes
//! whole and by range, deduplication, owner-only access, hostile names, deletion and the
//! reference counts, and an upload slower than the handler timeout.

use chronicle_tests::sha256_hex;
use chronicle_tests::ReadJson;
use std::time::Duration;

use chronicle_tests::{eventually, TestApp};
use reqwest::{
    header,
    multipart::{Form, Part},
    Method, StatusCode,
};
use serde_json::Value;

async fn upload(app: &TestApp, token: &str, bytes: Vec<u8>, name: &str) -> reqwest::Response {
    crate::common::post_file(&app.http, &app.base, token, bytes, name, "text/plain").await
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 241) as u8).collect()
}

async fn live_references(app: &TestApp, sha256: &str) -> i64 {
    sqlx::query_scalar("SELECT live_files FROM files.file_blobs WHERE sha256 = $1")
        .bind(sha256)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

async fn content_store(app: &TestApp) -> chronicle_bus::ContentStore {
    let js = async_nats::jetstream::new(app.nats.client().await);
    chronicle_bus::ContentStore::open(&js, 1).await.unwrap()
}

async fn objects(app: &TestApp) -> Vec<String> {
    crate::common::file_objects(app.nats.client().await).await
}

#[tokio::test]
async fn an_upload_is_served_back_whole_by_range_and_only_to_its_owner() {
    let app = TestApp::spawn().await;
    // Larger than the gateway's 1 MiB body limit for JSON: files have their own.
    let bytes = data(3 * 1024 * 1024 + 5);
    let r = upload(&app, &app.token, bytes.clone(), "report \"final\".txt").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let stored: Value = r.json().await.unwrap();
    let id = stored["id"].as_str().unwrap().to_owned();
    assert_eq!(stored["size"], bytes.len());
    assert_eq!(stored["deduplicated"], false);
    let sha256 = stored["sha256"].as_str().unwrap().to_owned();
    assert_eq!(sha256.len(), 64);

    let meta: Value = app.get_json(&format!("/api/v1/files/{id}")).await;
    assert_eq!(meta["name"], "report \"final\".txt");
    assert_eq!(meta["owner_id"], app.user_id.as_str());
    assert_eq!(meta["content_type"], "text/plain");
    assert_eq!(meta["sha256"], sha256.as_str());

    let whole = app.get(&format!("/api/v1/files/{id}/content")).await;
    assert_eq!(whole.status(), StatusCode::OK);
    let etag = whole.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{sha256}\""));
    let disposition = whole.headers()[header::CONTENT_DISPOSITION]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\"report _final_.txt\""),
        "{disposition}"
    );
    assert!(
        whole.bytes().await.unwrap() == bytes,
        "the bytes come back exactly"
    );

    let part = app
        .request(Method::GET, &format!("/api/v1/files/{id}/content"))
        .header(header::RANGE, "bytes=1048570-1048579")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()[header::CONTENT_RANGE],
        format!("bytes 1048570-1048579/{}", bytes.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), bytes[1_048_570..=1_048_579]);
    let beyond = app
        .request(Method::GET, &format!("/api/v1/files/{id}/content"))
        .header(header::RANGE, format!("bytes={}-", bytes.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        beyond.headers()[header::CONTENT_RANGE],
        format!("bytes */{}", bytes.len()).as_str()
    );
    let cached = app
        .request(Method::GET, &format!("/api/v1/files/{id}/content"))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    // Another user: the file does not exist for them.
    let (_, mallory) = app.register_and_login("mallory").await;
    for (method, path) in [
        (Method::GET, format!("/api/v1/files/{id}")),
        (Method::GET, format!("/api/v1/files/{id}/content")),
        (Method::DELETE, format!("/api/v1/files/{id}")),
    ] {
        let r = app
            .http
            .request(method, app.url(&path))
            .bearer_auth(&mallory)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let theirs: Value = app
        .get_as(&mallory, "/api/v1/files")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn identical_bytes_are_stored_once_and_counted_per_live_file() {
    let app = TestApp::spawn().await;
    let bytes = data(100_000);
    let first: Value = upload(&app, &app.token, bytes.clone(), "a.bin")
        .await
        .json()
        .await
        .unwrap();
    let second: Value = upload(&app, &app.token, bytes.clone(), "b.bin")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["deduplicated"], true);
    assert_eq!(second["sha256"], first["sha256"]);
    assert_ne!(second["id"], first["id"]);
    let sha256 = first["sha256"].as_str().unwrap().to_owned();
    let listed = eventually("both files listed", Duration::from_secs(10), || async {
        let page: Value = app.get("/api/v1/files").await.json().await.unwrap();
        (page["items"].as_array().unwrap().len() == 2).then_some(page)
    })
    .await;
    assert_eq!(listed["items"][0]["name"], "b.bin", "newest first");
    assert_eq!(live_references(&app, &sha256).await, 2);

    let gone = app
        .send(
            Method::DELETE,
            &format!("/api/v1/files/{}", first["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let again = app
        .send(
            Method::DELETE,
            &format!("/api/v1/files/{}", first["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    eventually("one reference left", Duration::from_secs(10), || async {
        (live_references(&app, &sha256).await == 1).then_some(())
    })
    .await;
    // Past the janitor's grace period (2 s in tests, sweeping every 200 ms), bytes one live
    // file still refers to stay.
    let content = content_store(&app).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(content.contains(&sha256).await.unwrap());
    // The other file still serves the shared bytes.
    let kept = app
        .get(&format!(
            "/api/v1/files/{}/content",
            second["id"].as_str().unwrap()
        ))
        .await;
    assert!(kept.bytes().await.unwrap() == bytes);
    app.request(
        Method::DELETE,
        &format!("/api/v1/files/{}", second["id"].as_str().unwrap()),
    )
    .send()
    .await
    .unwrap();
    eventually("no reference left", Duration::from_secs(10), || async {
        (live_references(&app, &sha256).await == 0).then_some(())
    })
    .await;
    // With no live file left, the janitor removes the bytes: their name, then every part
    // (a sweep seen half way has removed the name and not yet the parts).
    eventually("the bytes removed", Duration::from_secs(20), || async {
        (!content.contains(&sha256).await.unwrap()).then_some(())
    })
    .await;
    eventually("every part removed", Duration::from_secs(10), || async {
        objects(&app).await.is_empty().then_some(())
    })
    .await;

    // A replay of the log rebuilds the same rows, byte for byte.
    crate::common::assert_replays_byte_for_byte(
        &app,
        "file_metadata",
        &["files", "file_blobs"],
        "UPDATE files.file_blobs SET live_files = 99",
        2,
    )
    .await;
}

#[tokio::test]
async fn hostile_names_and_empty_or_nameless_uploads_are_refused_and_append_nothing() {
    let app = TestApp::spawn().await;
    let before = app.event_count().await;
    for name in ["../../etc/passwd", &"x".repeat(10_000), "a/b", ".."] {
        let r = upload(&app, &app.token, b"hello".to_vec(), name).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{name:?}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "name", "{problem}");
    }
    // A NUL in the part's header is not a multipart request the parser reads at all.
    let r = upload(&app, &app.token, b"hello".to_vec(), "a\u{0}b.txt").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let empty = upload(&app, &app.token, Vec::new(), "empty.txt").await;
    assert_eq!(empty.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let nameless = app
        .request(Method::POST, "/api/v1/files")
        .multipart(Form::new().text("other", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(nameless.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.event_count().await, before);

    // An accepted file's bytes are in the object store, never in the log.
    let r = upload(
        &app,
        &app.token,
        b"the-bytes-of-a-file-xyzzy".to_vec(),
        "ok.txt",
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let leaked: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM ({}) e \
         WHERE payload::text LIKE '%xyzzy%' OR metadata::text LIKE '%xyzzy%'",
        chronicle_tests::every_context("payload, metadata", "events")
    ))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);
    assert_eq!(app.event_count().await, before + 1);
}

#[tokio::test]
async fn an_upload_may_outlast_the_handler_timeout_but_not_go_silent() {
    let app =
        TestApp::spawn_with(|config| config.handler_timeout = Duration::from_millis(500)).await;
    // Ten pieces 200 ms apart: two seconds, four handler timeouts, never silent for one.
    let slow = |gap: Duration, pieces: usize| {
        let stream = futures::stream::unfold(0, move |n| async move {
            if n == pieces {
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((Ok::<_, std::io::Error>(vec![b'x'; 1000]), n + 1))
        });
        Form::new().part(
            "file",
            Part::stream(reqwest::Body::wrap_stream(stream)).file_name("slow.txt"),
        )
    };
    let r = app
        .request(Method::POST, "/api/v1/files")
        .multipart(slow(Duration::from_millis(200), 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let stored: Value = r.json().await.unwrap();
    assert_eq!(stored["size"], 10_000);
    // Silent for longer than the timeout mid-body: refused.
    let r = app
        .request(Method::POST, "/api/v1/files")
        .multipart(slow(Duration::from_millis(1_500), 2))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
}

#[tokio::test]
async fn a_share_link_serves_without_auth_until_it_expires_or_is_revoked() {
    let app = TestApp::spawn().await;
    let bytes = data(5_000);
    let stored: Value = upload(&app, &app.token, bytes.clone(), "shared.bin")
        .await
        .json()
        .await
        .unwrap();
    let id = stored["id"].as_str().unwrap().to_owned();
    let shares_path = format!("/api/v1/files/{id}/shares");
    let share = |seconds: i64| {
        app.post(
            &shares_path,
            serde_json::json!({"expires_in_seconds": seconds}),
        )
    };
    for bad in [0, -5, 31 * 24 * 3600] {
        assert_eq!(
            share(bad).await.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}"
        );
    }
    let made = share(3_600).await;
    assert_eq!(made.status(), StatusCode::CREATED);
    let link: Value = made.json().await.unwrap();
    let token = link["token"].as_str().unwrap().to_owned();
    assert_eq!(link["url"], format!("/api/v1/shared/{token}").as_str());
    assert!(link["expires_at"].is_string());

    // Anyone with the link, no token of theirs.
    let anonymous = reqwest::Client::new();
    let served = anonymous
        .get(app.url(&format!("/api/v1/shared/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert!(served.bytes().await.unwrap() == bytes);
    let part = anonymous
        .get(app.url(&format!("/api/v1/shared/{token}")))
        .header(header::RANGE, "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap(), bytes[4_990..]);
    let nothing = anonymous
        .get(app.url("/api/v1/shared/not-a-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(nothing.status(), StatusCode::NOT_FOUND);

    // Only the owner makes or revokes links.
    let (_, mallory) = app.register_and_login("mallory").await;
    let theirs = app
        .post_as(
            &mallory,
            &format!("/api/v1/files/{id}/shares"),
            &serde_json::json!({"expires_in_seconds": 60}),
        )
        .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);

    // The metadata lists the link by the hash of its token; the token is nowhere stored.
    let listed = eventually("the share listed", Duration::from_secs(10), || async {
        let meta: Value = app.get_json(&format!("/api/v1/files/{id}")).await;
        (meta["shares"].as_array().unwrap().len() == 1).then_some(meta)
    })
    .await;
    assert_eq!(listed["shares"][0]["id"].as_str().unwrap().len(), 64);
    let stored_tokens: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM ({}) e WHERE payload::text LIKE '%' || $1 || '%' \
         OR aggregate_id = $1",
        chronicle_tests::every_context("payload, aggregate_id", "events")
    ))
    .bind(&token)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored_tokens, 0, "no share token in the log");

    let revoked = app
        .send(
            Method::DELETE,
            &format!("/api/v1/files/{id}/shares/{token}"),
        )
        .await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let after = anonymous
        .get(app.url(&format!("/api/v1/shared/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::GONE);
    assert_eq!(
        after.json::<Value>().await.unwrap()["code"],
        "share_revoked"
    );

    // A link past its expiry is gone.
    let brief: Value = share(1).await.json().await.unwrap();
    let brief = brief["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let expired = anonymous
        .get(app.url(&format!("/api/v1/shared/{brief}")))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), StatusCode::GONE);
    assert_eq!(
        expired.json::<Value>().await.unwrap()["code"],
        "share_expired"
    );
}

/// A group room of the app's user with `member`, and a file of the app's user holding `bytes`
/// (not attached yet).
async fn room_and_file(app: &TestApp, member: &str, bytes: Vec<u8>) -> (String, String) {
    let room: Value = app
        .post(
            "/api/v1/rooms",
            serde_json::json!({"kind": "group", "members": [member]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let stored: Value = upload(app, &app.token, bytes, "plan.pdf")
        .await
        .json()
        .await
        .unwrap();
    (
        room["id"].as_str().unwrap().to_owned(),
        stored["id"].as_str().unwrap().to_owned(),
    )
}

/// Chat attachments (the API contract, Chat): a sender attaches files they own; the room's members may
/// read them, nobody else; a deleted file leaves the room.
#[tokio::test]
async fn an_attached_file_is_readable_by_the_rooms_members_until_deleted() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let (_, carol_token) = app.register_and_login("carol").await;
    let bytes = data(2_000);
    let (room, file) = room_and_file(&app, &bob, bytes.clone()).await;
    let bobs: Value = upload(&app, &bob_token, b"bob's".to_vec(), "b.txt")
        .await
        .json()
        .await
        .unwrap();

    // Only your own files: bob's file and a made-up id are refused, nothing sent.
    for other in [
        bobs["id"].as_str().unwrap().to_owned(),
        uuid::Uuid::now_v7().to_string(),
    ] {
        let r = app
            .post(
                &format!("/api/v1/rooms/{room}/messages"),
                serde_json::json!({"body": "see", "client_msg_id": "x", "file_ids": [other]}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let sent = app
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            serde_json::json!({"body": "the plan", "client_msg_id": "p-1", "file_ids": [file]}),
        )
        .await;
    assert_eq!(sent.status(), StatusCode::CREATED);
    assert_eq!(sent.json::<Value>().await.unwrap()["seq"], 1);

    // Bob, a member, reads it once the room's history has it; carol, not a member, never.
    let as_user = |token: String, path: String| {
        let app = &app;
        async move {
            app.http
                .get(app.url(&path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    // At once, before the history read model has the message (issue 29: 404 until it caught
    // up): the message's own commit lets the room's members read its files.
    let at_once = as_user(bob_token.clone(), format!("/api/v1/files/{file}/content")).await;
    assert_eq!(at_once.status(), StatusCode::OK);
    assert!(at_once.bytes().await.unwrap() == bytes);
    let history = eventually(
        "the message with its attachment",
        Duration::from_secs(10),
        || async {
            let page: Value = as_user(bob_token.clone(), format!("/api/v1/rooms/{room}/messages"))
                .await
                .json()
                .await
                .unwrap();
            (page["items"].as_array().unwrap().len() == 1).then_some(page)
        },
    )
    .await;
    assert_eq!(history["items"][0]["file_ids"], serde_json::json!([file]));
    let read = as_user(bob_token.clone(), format!("/api/v1/files/{file}/content")).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert!(read.bytes().await.unwrap() == bytes);
    let meta: Value = as_user(bob_token.clone(), format!("/api/v1/files/{file}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(meta["name"], "plan.pdf");
    assert_eq!(meta["shares"], serde_json::json!([]));
    let outsider = as_user(carol_token.clone(), format!("/api/v1/files/{file}/content")).await;
    assert_eq!(outsider.status(), StatusCode::NOT_FOUND);
    // Reading is not owning: bob cannot delete it.
    let r = app
        .send_as(
            &bob_token,
            reqwest::Method::DELETE,
            &format!("/api/v1/files/{file}"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Deleted by its owner: gone from the room too.
    let r = app
        .send(Method::DELETE, &format!("/api/v1/files/{file}"))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        as_user(bob_token.clone(), format!("/api/v1/files/{file}/content"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    eventually(
        "the attachment gone from the history",
        Duration::from_secs(10),
        || async {
            let page: Value = as_user(bob_token.clone(), format!("/api/v1/rooms/{room}/messages"))
                .await
                .json()
                .await
                .unwrap();
            page["items"][0].get("file_ids").is_none().then_some(())
        },
    )
    .await;
}

async fn put_chunk(app: &TestApp, upload: &str, index: u64, bytes: Vec<u8>) -> reqwest::Response {
    app.request(
        Method::PUT,
        &format!("/api/v1/files/uploads/{upload}/chunks/{index}"),
    )
    .body(bytes)
    .send()
    .await
    .unwrap()
}

#[tokio::test]
async fn a_chunked_upload_resumes_in_any_order_and_completes_only_as_declared() {
    let app = TestApp::spawn().await;
    let bytes = data(2 * 8 * 1024 * 1024 + 1_000);
    let declare = |sha256: String| {
        app.post(
            "/api/v1/files/uploads",
            serde_json::json!({"name": "big.bin", "size": bytes.len(), "sha256": sha256,
                "content_type": "application/octet-stream"}),
        )
    };
    let started: Value = declare(sha256_hex(&bytes)).await.json().await.unwrap();
    let upload = started["upload_id"].as_str().unwrap().to_owned();
    let chunk = started["chunk_size"].as_u64().unwrap() as usize;
    assert_eq!(chunk, 8 * 1024 * 1024);
    let piece = |i: usize| bytes[i * chunk..((i + 1) * chunk).min(bytes.len())].to_vec();

    // The last chunk first; a wrong length is refused; someone else sees no upload.
    assert_eq!(
        put_chunk(&app, &upload, 2, piece(2)).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put_chunk(&app, &upload, 0, piece(2)).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        put_chunk(&app, &upload, 3, piece(2)).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (_, mallory) = app.register_and_login("mallory").await;
    let theirs = app
        .get_as(&mallory, &format!("/api/v1/files/uploads/{upload}"))
        .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    let early = app
        .send(
            Method::POST,
            &format!("/api/v1/files/uploads/{upload}/complete"),
        )
        .await;
    assert_eq!(early.status(), StatusCode::CONFLICT);

    // Resume: the listing says what is missing.
    let status: Value = app
        .get_json(&format!("/api/v1/files/uploads/{upload}"))
        .await;
    assert_eq!(status["received"], serde_json::json!([2]));
    assert_eq!(status["missing"], serde_json::json!([0, 1]));
    for i in [1, 0, 1] {
        assert_eq!(
            put_chunk(&app, &upload, i, piece(i as usize))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
    }
    // A chunk already in, sent again short: the good copy stays.
    assert_eq!(
        put_chunk(&app, &upload, 0, b"short".to_vec())
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let done = app
        .send(
            Method::POST,
            &format!("/api/v1/files/uploads/{upload}/complete"),
        )
        .await;
    assert_eq!(done.status(), StatusCode::CREATED);
    let done: Value = done.json().await.unwrap();
    assert_eq!(done["sha256"], sha256_hex(&bytes).as_str());
    let file = done["id"].as_str().unwrap().to_owned();
    let again: Value = app
        .request(
            Method::POST,
            &format!("/api/v1/files/uploads/{upload}/complete"),
        )
        .read_json()
        .await;
    assert_eq!(again, done, "completing twice gives the same file");
    let served = app.get(&format!("/api/v1/files/{file}/content")).await;
    assert!(served.bytes().await.unwrap() == bytes);

    // The same bytes declared again by their owner: a file at once, nothing sent (issue 29:
    // only once the read model had counted the first file).
    let known: Value = declare(sha256_hex(&bytes)).await.json().await.unwrap();
    assert_eq!(known["deduplicated"], true, "{known}");
    assert_ne!(known["id"], done["id"]);
    // Mallory declaring the same hash gets an upload, not the file.
    let hers: Value = app
        .http
        .post(app.url("/api/v1/files/uploads"))
        .bearer_auth(&mallory)
        .json(&serde_json::json!({"name": "x.bin", "size": bytes.len(),
            "sha256": sha256_hex(&bytes), "content_type": "application/octet-stream"}))
        .read_json()
        .await;
    assert!(hers["upload_id"].is_string(), "{hers}");
}

#[tokio::test]
async fn a_chunked_upload_whose_bytes_do_not_hash_as_declared_stores_nothing() {
    let app = TestApp::spawn().await;
    let bytes = data(70_000);
    let started: Value = app
        .post(
            "/api/v1/files/uploads",
            serde_json::json!({"name": "liar.bin", "size": bytes.len(),
                "sha256": "00".repeat(32), "content_type": "application/octet-stream"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let upload = started["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(
        put_chunk(&app, &upload, 0, bytes.clone()).await.status(),
        StatusCode::NO_CONTENT
    );
    let files_before: i64 = app
        .scalar("SELECT count(*) FROM files.events WHERE aggregate_type = 'file'")
        .await;
    let r = app
        .send(
            Method::POST,
            &format!("/api/v1/files/uploads/{upload}/complete"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "checksum_mismatch"
    );
    let files_after: i64 = app
        .scalar("SELECT count(*) FROM files.events WHERE aggregate_type = 'file'")
        .await;
    assert_eq!(files_after, files_before, "no file");
    // And the bytes that were not what was declared are not kept.
    let js = async_nats::jetstream::new(app.nats.client().await);
    let store = js.get_object_store("files").await.unwrap();
    if let Ok(info) = store.info(sha256_hex(&bytes)).await {
        assert!(info.deleted, "the bytes are deleted");
    }
}

/// A PNG of `width` x `height` pixels.
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 77])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A decompression bomb: a valid PNG of a few hundred bytes whose header declares a
/// 60,000 x 60,000 image (3.6 billion pixels).
fn png_bomb() -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc_input);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&60_000u32.to_be_bytes());
    header.extend_from_slice(&60_000u32.to_be_bytes());
    header.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit greyscale
    chunk(&mut out, b"IHDR", &header);
    // zlib, one stored block of 256 zero bytes: the start of the first rows.
    let mut idat = vec![0x78, 0x01, 0x01, 0x00, 0x01, 0xff, 0xfe];
    idat.extend_from_slice(&[0u8; 256]);
    idat.extend_from_slice(&[0x01, 0x00, 0x00, 0x01]); // adler32 of 256 zeros
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

async fn upload_typed(app: &TestApp, bytes: Vec<u8>, name: &str, mime: &str) -> Value {
    let r = crate::common::post_file(&app.http, &app.base, &app.token, bytes, name, mime).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

#[tokio::test]
async fn thumbnails_are_made_once_per_box_and_only_of_images_within_the_limits() {
    let app = TestApp::spawn().await;
    let picture = upload_typed(&app, png(400, 300), "photo.png", "image/png").await;
    let id = picture["id"].as_str().unwrap();
    let sha256 = picture["sha256"].as_str().unwrap();
    let r = app
        .get(&format!("/api/v1/files/{id}/thumbnail?width=100"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "image/png");
    let etag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
    let small = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    // 100 is served by the 128 wide thumbnail; the aspect ratio is kept.
    assert_eq!((small.width(), small.height()), (128, 96));
    assert!(objects(&app).await.contains(&format!("thumb.{sha256}.128")));
    // Asked again: the same bytes, from the store; unchanged for a cache.
    let again = app
        .get(&format!("/api/v1/files/{id}/thumbnail?width=128"))
        .await;
    assert_eq!(again.headers()[header::ETAG].to_str().unwrap(), etag);
    let cached = app
        .request(
            Method::GET,
            &format!("/api/v1/files/{id}/thumbnail?width=128"),
        )
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    for width in ["0", "1025", "-1", "99999999999"] {
        let r = app
            .get(&format!("/api/v1/files/{id}/thumbnail?width={width}"))
            .await;
        assert!(
            r.status().is_client_error(),
            "width {width}: {}",
            r.status()
        );
    }
    // In a box: `contain` fits inside it (100x50 is served by 128x64), `cover` fills it
    // exactly and crops around the centre (a box larger than the picture scales it up);
    // each is kept beside the bytes under its own name, and is its own ETag.
    for (query, size, name) in [
        ("width=100&height=50", (85, 64), "128x64.contain"),
        (
            "width=128&height=128&fit=cover",
            (128, 128),
            "128x128.cover",
        ),
        ("height=40&fit=cover", (64, 64), "64x64.cover"),
        (
            "width=1024&height=32&fit=cover",
            (1024, 32),
            "1024x32.cover",
        ),
        ("width=128&fit=contain", (128, 96), "128"),
    ] {
        let r = app
            .get(&format!("/api/v1/files/{id}/thumbnail?{query}"))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{query}");
        assert_eq!(
            r.headers()[header::ETAG].to_str().unwrap(),
            format!("\"{sha256}.{name}\""),
            "{query}"
        );
        let made = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
        assert_eq!((made.width(), made.height()), size, "{query}");
        assert!(objects(&app)
            .await
            .contains(&format!("thumb.{sha256}.{name}")));
    }
    for (query, field) in [
        ("width=64&fit=stretch", "fit"),
        ("width=64&height=0", "height"),
        ("width=64&height=1025&fit=cover", "height"),
        ("width=2000&height=64", "width"),
    ] {
        let r = app
            .get(&format!("/api/v1/files/{id}/thumbnail?{query}"))
            .await;
        assert_eq!(crate::common::invalid_fields(r).await, [field], "{query}");
    }
    // Someone else: no such file.
    let (_, other) = app.register_and_login("stranger").await;
    let r = app
        .get_as(&other, &format!("/api/v1/files/{id}/thumbnail"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Text is not an image, whatever it claims to be.
    for (mime, name) in [("text/plain", "notes.txt"), ("image/png", "fake.png")] {
        let text = upload_typed(&app, b"just words".to_vec(), name, mime).await;
        let r = app
            .get(&format!(
                "/api/v1/files/{}/thumbnail",
                text["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{mime}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["code"], "not_an_image");
    }
    // A decompression bomb is refused from its header.
    let bomb = upload_typed(&app, png_bomb(), "bomb.png", "image/png").await;
    let r = app
        .get(&format!(
            "/api/v1/files/{}/thumbnail",
            bomb["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "image_too_large", "{problem}");
    assert!(!objects(&app)
        .await
        .iter()
        .any(|o| o.starts_with(&format!("thumb.{}", bomb["sha256"].as_str().unwrap()))));
    // The picture deleted, the janitor removes its bytes and its thumbnails.
    let r = app
        .send(Method::DELETE, &format!("/api/v1/files/{id}"))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    eventually(
        "bytes and thumbnails removed",
        Duration::from_secs(20),
        || async {
            let left = objects(&app).await;
            (!left.iter().any(|o| o.contains(sha256))).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn one_chunk_sent_twice_at_once_with_different_bytes_never_makes_a_file_unlike_its_hash() {
    let app = TestApp::spawn().await;
    for round in 0..4 {
        // Other bytes each round (the caller's own bytes would be deduplicated at once).
        let good = data(200_000 + round);
        let mut bad = good.clone();
        bad[100_000] ^= 0xff;
        let sha256 = {
            use sha2::Digest;
            sha2::Sha256::digest(&good)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let started: Value = app
            .post(
                "/api/v1/files/uploads",
                serde_json::json!({"name": format!("race{round}.bin"), "size": good.len(),
                    "sha256": sha256, "content_type": "application/octet-stream"}),
            )
            .await
            .json()
            .await
            .unwrap();
        let id = started["upload_id"].as_str().unwrap().to_owned();
        let path = format!("/api/v1/files/uploads/{id}/chunks/0");
        let (a, b) = tokio::join!(
            app.request(Method::PUT, &path).body(good.clone()).send(),
            app.request(Method::PUT, &path).body(bad.clone()).send()
        );
        assert_eq!(a.unwrap().status(), StatusCode::NO_CONTENT);
        assert_eq!(b.unwrap().status(), StatusCode::NO_CONTENT);
        let done = app
            .send(
                Method::POST,
                &format!("/api/v1/files/uploads/{id}/complete"),
            )
            .await;
        // Whichever copy was recorded is the one hashed and kept: the good one makes the
        // file, the bad one is refused; never a file whose bytes are not its hash.
        match done.status() {
            StatusCode::CREATED => {
                let file: Value = done.json().await.unwrap();
                let served = app
                    .get(&format!(
                        "/api/v1/files/{}/content",
                        file["id"].as_str().unwrap()
                    ))
                    .await;
                assert!(served.bytes().await.unwrap() == good, "round {round}");
            }
            StatusCode::UNPROCESSABLE_ENTITY => {}
            other => panic!("round {round}: {other}"),
        }
        // One object per upload at most: the losing copy is not kept.
        let chunks = objects(&app)
            .await
            .into_iter()
            .filter(|o| o.starts_with(&format!("chunk.{id}.")))
            .count();
        assert!(chunks <= 1, "round {round}: {chunks} chunk objects");
    }
}

/// Found by the fault harness (issue 17): each download read the file's manifest through
/// the object store's `get`, which makes a JetStream consumer per call, and a burst of
/// downloads ran into nats-server's consumer limit, answered as a 400 blaming the client.
/// Every download of a burst is served, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_downloads_is_served_whole_every_time() {
    let app = TestApp::spawn().await;
    let mut files = Vec::new();
    for i in 0..4u8 {
        let bytes: Vec<u8> = data(700 + usize::from(i))
            .into_iter()
            .map(|b| b ^ i)
            .collect();
        let r = upload(&app, &app.token, bytes.clone(), &format!("f{i}.bin")).await;
        let id = chronicle_tests::created_id(r).await;
        files.push((id, bytes));
    }
    use futures::StreamExt;
    let downloads = futures::stream::iter((0..1_200).map(|n| {
        let (id, bytes) = files[n % files.len()].clone();
        let app = &app;
        async move {
            let r = app.get(&format!("/api/v1/files/{id}/content")).await;
            let status = r.status();
            let body = r.bytes().await.unwrap();
            (
                n,
                status,
                body == bytes,
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    let failed: Vec<_> = downloads
        .iter()
        .filter(|(_, status, same, _)| *status != StatusCode::OK || !same)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 1,200 downloads failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
}

#[tokio::test]
async fn bytes_just_stored_are_deduplicated_at_once_for_their_owner_only_while_live() {
    // Regression (issue 29): right after `POST /api/v1/files` (201), declaring the same
    // sha256 opened an upload session, because the check read a read model still behind.
    let app = TestApp::spawn().await;
    let (_, mallory) = app.register_and_login("mallory").await;
    let declare = |token: String, sha256: String| {
        let app = &app;
        async move {
            let r = app
                .http
                .post(app.url("/api/v1/files/uploads"))
                .bearer_auth(token)
                .json(&serde_json::json!({"name": "again.bin", "size": 5_000,
                    "sha256": sha256, "content_type": "application/octet-stream"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.unwrap()
        }
    };
    for round in 0..5u8 {
        let bytes: Vec<u8> = data(5_000).into_iter().map(|b| b ^ round).collect();
        let sha256 = sha256_hex(&bytes);
        let stored: Value = upload(&app, &app.token, bytes, "first.bin")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(stored["sha256"], sha256.as_str());
        let again = declare(app.token.clone(), sha256.clone()).await;
        assert_eq!(again["deduplicated"], true, "round {round}: {again}");
        assert_ne!(again["id"], stored["id"]);
        // Someone else's bytes are never confirmed to exist.
        let hers = declare(mallory.clone(), sha256.clone()).await;
        assert!(hers["upload_id"].is_string(), "{hers}");
        // Both files deleted: nothing of the owner's holds those bytes any more.
        for id in [&stored["id"], &again["id"]] {
            let r = app
                .send(
                    Method::DELETE,
                    &format!("/api/v1/files/{}", id.as_str().unwrap()),
                )
                .await;
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
        }
        // At once too: the read model may still list them, the files say they are gone.
        let gone = declare(app.token.clone(), sha256.clone()).await;
        assert!(gone["upload_id"].is_string(), "round {round}: {gone}");
    }
}

#[tokio::test]
async fn a_member_removed_from_the_room_reads_its_attachments_no_more_at_once() {
    // What decides is the room itself, not the history read model, which may still list
    // the member for a moment after the removal.
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let (room, file) = room_and_file(&app, &bob, data(3_000)).await;
    let sent = app
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            serde_json::json!({"body": "the plan", "client_msg_id": "p-1", "file_ids": [file]}),
        )
        .await;
    assert_eq!(sent.status(), StatusCode::CREATED);
    let bobs_read = || async {
        app.http
            .get(app.url(&format!("/api/v1/files/{file}/content")))
            .bearer_auth(&bob_token)
            .send()
            .await
            .unwrap()
            .status()
    };
    // Once the history read model lists the attachment too, both paths say yes.
    eventually(
        "the attachment in the history",
        Duration::from_secs(10),
        || async {
            let page: Value = app
                .get_json(&format!("/api/v1/rooms/{room}/messages"))
                .await;
            (page["items"][0]["file_ids"] == serde_json::json!([file])).then_some(())
        },
    )
    .await;
    assert_eq!(bobs_read().await, StatusCode::OK);
    let removed = app
        .send(
            Method::DELETE,
            &format!("/api/v1/rooms/{room}/members/{bob}"),
        )
        .await;
    assert_eq!(removed.status(), StatusCode::OK);
    assert_eq!(bobs_read().await, StatusCode::NOT_FOUND);
}
