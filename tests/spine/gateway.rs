//! The inventory routes of the API contract through HTTP, with every documented error.

use std::time::Duration;

use chronicle_tests::TestApp;
use reqwest::StatusCode;

use crate::common::{invalid_fields, problem};
use serde_json::{json, Value};

fn item(sku: &str, stock: i64) -> Value {
    json!({"sku": sku, "name": format!("Item {sku}"), "price_cents": 1250, "initial_stock": stock})
}

#[tokio::test]
async fn creating_an_item_answers_201_with_its_version_and_then_reads_back_fresh() {
    let app = TestApp::spawn().await;
    let response = app.post("/api/v1/inventory/items", item("ABC-1", 10)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["etag"], "\"1\"");
    assert_eq!(
        response.headers()["location"],
        "/api/v1/inventory/items/ABC-1"
    );
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"id": "ABC-1", "version": 1})
    );

    let read = app.get("/api/v1/inventory/items/ABC-1?min_version=1").await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()["chronicle-consistency"], "fresh");
    assert_eq!(read.headers()["etag"], "\"1\"");
    assert_eq!(
        read.json::<Value>().await.unwrap(),
        json!({"sku": "ABC-1", "name": "Item ABC-1", "price_cents": 1250, "description": "",
               "discontinued": false, "on_hand": 10, "reserved": 0, "available": 10,
               "version": 1})
    );
}

#[tokio::test]
async fn receiving_stock_raises_the_version_and_on_hand() {
    let app = TestApp::spawn().await;
    app.post("/api/v1/inventory/items", item("ABC-1", 1)).await;
    let response = app
        .post(
            "/api/v1/inventory/items/ABC-1/receive",
            json!({"quantity": 4}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"2\"");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"id": "ABC-1", "version": 2})
    );
    let read: Value = app
        .get_json("/api/v1/inventory/items/ABC-1?min_version=2")
        .await;
    assert_eq!(
        (read["on_hand"].clone(), read["version"].clone()),
        (json!(5), json!(2))
    );
}

#[tokio::test]
async fn a_duplicate_sku_is_409_sku_exists_and_appends_nothing() {
    let app = TestApp::spawn().await;
    app.post("/api/v1/inventory/items", item("ABC-1", 1)).await;
    let response = app.post("/api/v1/inventory/items", item("ABC-1", 5)).await;
    problem(response, StatusCode::CONFLICT, "sku_exists").await;
    assert_eq!(app.event_count().await, 1 + 1);
}

#[tokio::test]
async fn unknown_items_and_routes_are_404_and_wrong_methods_405() {
    let app = TestApp::spawn().await;
    problem(
        app.get("/api/v1/inventory/items/NOPE").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let receive = app
        .post(
            "/api/v1/inventory/items/NOPE/receive",
            json!({"quantity": 1}),
        )
        .await;
    problem(receive, StatusCode::NOT_FOUND, "not_found").await;
    problem(
        app.get("/api/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let delete = app
        .send_anonymous(reqwest::Method::DELETE, "/api/v1/inventory/items")
        .await;
    problem(delete, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
async fn invalid_fields_are_422_with_one_error_per_field_and_append_nothing() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/api/v1/inventory/items",
            json!({"sku": "has space", "name": " ", "price_cents": -5, "initial_stock": -1}),
        )
        .await;
    assert_eq!(
        invalid_fields(response).await,
        ["sku", "name", "price_cents", "initial_stock"]
    );

    app.post("/api/v1/inventory/items", item("ABC-1", 1)).await;
    let zero = app
        .post(
            "/api/v1/inventory/items/ABC-1/receive",
            json!({"quantity": 0}),
        )
        .await;
    let body = problem(zero, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "quantity");
    assert_eq!(app.event_count().await, 1 + 1);
}

#[tokio::test]
async fn malformed_json_wrong_types_and_wrong_content_type_are_client_errors() {
    let app = TestApp::spawn().await;
    let send = |body: &'static str, content_type: &'static str| {
        app.request(reqwest::Method::POST, "/api/v1/inventory/items")
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    problem(
        send("{\"sku\": ", "application/json").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    problem(
        send(
            r#"{"sku":"A","name":"B","price_cents":"ten","initial_stock":1}"#,
            "application/json",
        )
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    problem(
        send(r#"{"sku":"A"}"#, "application/json").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    problem(
        send(
            r#"{"sku":"A","name":"B","price_cents":1,"initial_stock":1}"#,
            "text/plain",
        )
        .await
        .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let bad_query = app
        .get("/api/v1/inventory/items?low_stock_below=many")
        .await;
    problem(bad_query, StatusCode::BAD_REQUEST, "invalid_query").await;
    assert_eq!(app.event_count().await, 1);
}

/// What axum's own extractors and layers refuse (a body over the limit, a body that is not
/// multipart, a GET of `/ws` that is no handshake, a query of the wrong type) is problem+json
/// too, with a code; found by schemathesis as `text/plain` answers (issue 17).
#[tokio::test]
async fn a_framework_refusal_is_problem_json_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let before = app.event_count().await;
    let too_large = app
        .request(reqwest::Method::POST, "/api/v1/monitoring/samples")
        .header("content-type", "text/plain")
        .body(vec![b'a'; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    let body = problem(
        too_large,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("length limit"),
        "{body}"
    );
    let not_multipart = app
        .request(reqwest::Method::POST, "/api/v1/files")
        .header("content-type", "text/plain")
        .body("--97204f357770a42b1f6323ef5e911b44--\r\n")
        .send()
        .await
        .unwrap();
    problem(
        not_multipart,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let no_handshake = app
        .send_anonymous(reqwest::Method::GET, &format!("/ws?token={}", app.token))
        .await;
    problem(
        no_handshake,
        StatusCode::BAD_REQUEST,
        "not_a_websocket_handshake",
    )
    .await;
    let no_token = app.http.get(app.url("/ws")).send().await.unwrap();
    problem(no_token, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let bad_width = app.get("/api/v1/files/any/thumbnail?width=wide").await;
    problem(bad_width, StatusCode::BAD_REQUEST, "invalid_query").await;
    assert_eq!(app.event_count().await, before);
}

#[tokio::test]
async fn a_stale_if_match_is_412_and_appends_nothing_while_a_current_one_succeeds() {
    let app = TestApp::spawn().await;
    app.post("/api/v1/inventory/items", item("ABC-1", 1)).await;
    app.post(
        "/api/v1/inventory/items/ABC-1/receive",
        json!({"quantity": 1}),
    )
    .await;
    let receive = |etag: &'static str| {
        app.request(
            reqwest::Method::POST,
            "/api/v1/inventory/items/ABC-1/receive",
        )
        .header("if-match", etag)
        .json(&json!({"quantity": 1}))
        .send()
    };
    let stale = receive("\"1\"").await.unwrap();
    let body = problem(stale, StatusCode::PRECONDITION_FAILED, "version_mismatch").await;
    assert_eq!(body["current_version"], 2);
    assert_eq!(app.event_count().await, 1 + 2);
    let current = receive("\"2\"").await.unwrap();
    assert_eq!(current.status(), StatusCode::OK);
    assert_eq!(current.headers()["etag"], "\"3\"");
    problem(
        receive("yesterday").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_if_match",
    )
    .await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_response_and_refuses_another_body() {
    let app = TestApp::spawn().await;
    let send = |body: Value| {
        app.request(reqwest::Method::POST, "/api/v1/inventory/items")
            .header("idempotency-key", "create-abc-1")
            .json(&body)
            .send()
    };
    let first = send(item("ABC-1", 3)).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_body: Value = first.json().await.unwrap();
    let again = send(item("ABC-1", 3)).await.unwrap();
    assert_eq!(
        again.status(),
        StatusCode::CREATED,
        "the replay keeps the first status"
    );
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first_body);
    assert_eq!(app.event_count().await, 1 + 1);

    let other = send(item("ABC-1", 4)).await.unwrap();
    problem(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    let too_long = app
        .request(reqwest::Method::POST, "/api/v1/inventory/items")
        .header("idempotency-key", "k".repeat(256))
        .json(&item("ABC-2", 1))
        .send()
        .await
        .unwrap();
    problem(
        too_long,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(app.event_count().await, 1 + 1);
}

#[tokio::test]
async fn min_version_beyond_the_read_model_answers_stale_after_the_wait() {
    let app = TestApp::spawn().await;
    app.post("/api/v1/inventory/items", item("ABC-1", 1)).await;
    let started = std::time::Instant::now();
    let read = app.get("/api/v1/inventory/items/ABC-1?min_version=9").await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()["chronicle-consistency"], "stale");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "it waited for the version"
    );
    assert_eq!(read.json::<Value>().await.unwrap()["version"], 1);
}

/// The caller's jobs and files come newest first in cursor pages of two, each once, as a
/// client following `next_cursor` reads them.
#[tokio::test]
async fn jobs_and_files_page_by_cursor_newest_first_each_once() {
    let app = TestApp::spawn().await;
    let mut jobs = Vec::new();
    let mut files = Vec::new();
    for k in 0..5 {
        let job = app
            .post(
                "/api/v1/jobs",
                json!({"name": format!("j{k}"), "schedule": {"cron": "0 0 * * * *"},
                       "action": {"kind": "command", "command": "noop"}}),
            )
            .await;
        jobs.push(chronicle_tests::created_id(job).await);
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(format!("file {k}").into_bytes())
                .file_name(format!("f{k}.txt")),
        );
        let file = app
            .request(reqwest::Method::POST, "/api/v1/files")
            .multipart(form)
            .send()
            .await
            .unwrap();
        files.push(chronicle_tests::created_id(file).await);
    }
    jobs.reverse();
    files.reverse();
    for (path, made) in [("/api/v1/jobs", &jobs), ("/api/v1/files", &files)] {
        chronicle_tests::eventually(
            &format!("{path} lists all five"),
            Duration::from_secs(20),
            || async { (app.page_through(path, 2, "id").await == *made).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn listing_pages_by_cursor_return_each_item_once_and_filter_low_stock() {
    let app = TestApp::spawn().await;
    for i in 0..7 {
        let r = app
            .post("/api/v1/inventory/items", item(&format!("SKU-{i}"), i))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // Read-your-writes on the last one, so the list below sees all seven.
    app.get("/api/v1/inventory/items/SKU-6?min_version=1").await;
    let seen = app.page_through("/api/v1/inventory/items", 3, "sku").await;
    assert_eq!(seen, (0..7).map(|i| format!("SKU-{i}")).collect::<Vec<_>>());

    let low: Value = app
        .get_json("/api/v1/inventory/items?low_stock_below=3")
        .await;
    let low: Vec<&str> = low["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap())
        .collect();
    assert_eq!(low, ["SKU-0", "SKU-1", "SKU-2"]);

    problem(
        app.get("/api/v1/inventory/items?limit=0").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    problem(
        app.get("/api/v1/inventory/items?cursor=not-ours").await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    )
    .await;
}

#[tokio::test]
async fn health_reports_each_backing_server_and_degrades_when_nats_is_down() {
    let mut app = TestApp::spawn().await;
    let ok = app.get("/health").await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        ok.json::<Value>().await.unwrap(),
        json!({"status": "ok", "postgres": "up", "nats": "up"})
    );

    app.nats.server.kill();
    let degraded = chronicle_tests::eventually(
        "health to notice NATS is gone",
        Duration::from_secs(10),
        || async {
            let r = app.get("/health").await;
            (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
        },
    )
    .await;
    assert_eq!(
        degraded.json::<Value>().await.unwrap(),
        json!({"status": "degraded", "postgres": "up", "nats": "down"})
    );
}

#[tokio::test]
async fn projections_report_their_checkpoint_and_lag() {
    let app = TestApp::spawn().await;
    app.post("/api/v1/inventory/items", item("ABC-1", 1)).await;
    app.get("/api/v1/inventory/items/ABC-1?min_version=1").await;
    let status: Value = app.get("/api/v1/projections").await.json().await.unwrap();
    // The stream holds the default user's registration, then the item.
    let names: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    // Every reader of the log the component list has, in its order: each read model's
    // projector, then the sagas (a new context's readers join without this test learning
    // their names).
    let readers: Vec<String> = chronicle::components::subscribers()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, readers);
    for reader in ["inventory", "chat_history", "saga-orders", "alert-notifier"] {
        assert!(names.contains(&reader), "{reader} in {names:?}");
    }
    assert_eq!(status[0]["status"], "live");
    assert_eq!(status[0]["parked"], 0);
    assert_eq!(status[0]["stream_last_seq"], 2);
    assert_eq!(status[0]["checkpoint"], 2);
    assert_eq!(status[0]["lag_events"], 0);
    assert!(status[0]["lag_events"].is_u64() && status[0]["lag_seconds"].is_number());
}

/// Slow and oversized requests (issue 17): a client that trickles its headers, or opens a
/// connection and says nothing, is cut off after the header read timeout; headers of a
/// megabyte are refused; other clients are served throughout.
#[tokio::test]
async fn a_trickling_silent_or_bloated_client_is_cut_off_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app =
        TestApp::spawn_with(|config| config.header_read_timeout = Duration::from_secs(1)).await;
    let address = app.base.trim_start_matches("http://").to_owned();
    // Reads until the server closes; what it said before closing.
    async fn closed(tcp: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
        let mut said = Vec::new();
        let read = tokio::time::timeout(within, async {
            let mut buffer = [0u8; 1024];
            loop {
                match tcp.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => said.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await;
        read.ok()
            .map(|()| String::from_utf8_lossy(&said).into_owned())
    }

    let mut silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut trickling = tokio::net::TcpStream::connect(&address).await.unwrap();
    trickling
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let writer = tokio::spawn(async move {
        // A header line every 200 ms, never the blank line that ends them.
        for i in 0..50 {
            if trickling
                .write_all(format!("x-slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return (trickling, true);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (trickling, false)
    });
    // Others are served meanwhile.
    for _ in 0..5 {
        assert_eq!(app.get("/health").await.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        closed(&mut silent, Duration::from_secs(5)).await.is_some(),
        "a silent connection stays open"
    );
    let (mut trickling, write_failed) = writer.await.unwrap();
    assert!(
        write_failed
            || closed(&mut trickling, Duration::from_secs(1))
                .await
                .is_some(),
        "a trickling client kept its connection"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut off after {:?}",
        started.elapsed()
    );

    let mut bloated = tokio::net::TcpStream::connect(&address).await.unwrap();
    let header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let _ = bloated.write_all(header.as_bytes()).await;
    let said = closed(&mut bloated, Duration::from_secs(5))
        .await
        .expect("a megabyte of headers ends the connection");
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 431"),
        "{}",
        &said[..said.len().min(200)]
    );
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}

/// A gateway not started with `CHRONICLE_PROFILING=1` takes no CPU profile, and says how to
/// turn it on (`chronicle/tests/profile.rs` takes one from a gateway that has it on).
#[tokio::test]
async fn a_cpu_profile_is_refused_unless_profiling_is_turned_on() {
    let app = TestApp::spawn().await;
    let off = problem(
        app.get("/debug/profile?seconds=1").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(
        off["detail"]
            .as_str()
            .unwrap()
            .contains("CHRONICLE_PROFILING=1"),
        "{off}"
    );
    let anonymous = app
        .send_anonymous(reqwest::Method::GET, "/debug/profile")
        .await;
    problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
}
