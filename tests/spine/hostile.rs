//! Hostile input (issue 10's findings): nothing a client sends, and no event stored in the
//! log, may stop a read model from advancing (architecture.md invariants 7 and 8).

use std::time::Duration;

use async_nats::{jetstream, HeaderMap};
use chronicle_tests::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{invalid_fields, problem};

/// The finding: a display name with a NUL was accepted (201) and froze the `users` read
/// model for everyone. Now it is refused, and nothing is appended.
#[tokio::test]
async fn a_display_name_with_a_nul_or_an_escape_is_refused_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let before = app.event_count().await;
    for name in ["a\u{0}b", "\u{1b}[31mred", "bell\u{7}"] {
        let response = app
            .http
            .post(app.url("/api/v1/auth/register"))
            .json(
                &json!({"username": "mallory", "password": "correct horse", "display_name": name}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(invalid_fields(response).await, ["display_name"]);
        let response = app
            .send_json(
                reqwest::Method::PATCH,
                &format!("/api/v1/users/{}", app.user_id),
                &json!({"display_name": name}),
            )
            .await;
        assert_eq!(invalid_fields(response).await, ["display_name"]);
    }
    // Tabs and newlines are text.
    let response = app.register("tabby", "correct horse").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(app.event_count().await, before + 1);
}

/// The finding: `initial_stock` of i64::MAX then a receipt of 1 wrapped the aggregate to a
/// negative stock and froze the `inventory` read model.
#[tokio::test]
async fn stock_past_its_limit_is_refused_and_can_never_wrap() {
    let app = TestApp::spawn().await;
    let before = app.event_count().await;
    for stock in [json!(i64::MAX), json!(1_000_000_000_001u64), json!(-1)] {
        let response = app
            .post(
                "/api/v1/inventory/items",
                json!({"sku": "BIG", "name": "Big", "price_cents": 1, "initial_stock": stock}),
            )
            .await;
        assert_eq!(invalid_fields(response).await, ["initial_stock"], "{stock}");
    }
    // Past i64: a wrong type, 400.
    let response = app
        .request(reqwest::Method::POST, "/api/v1/inventory/items")
        .header("content-type", "application/json")
        .body(r#"{"sku":"BIG","name":"Big","price_cents":1,"initial_stock":9223372036854775808}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = app
        .post(
            "/api/v1/inventory/items",
            json!({"sku": "BIG", "name": "Big", "price_cents": 1_000_000_000_001i64, "initial_stock": 1}),
        )
        .await;
    assert_eq!(invalid_fields(response).await, ["price_cents"]);
    assert_eq!(app.event_count().await, before, "nothing appended");

    // At the limit it is accepted; one more unit is refused, never wrapped.
    let response = app
        .post(
            "/api/v1/inventory/items",
            json!({"sku": "BIG", "name": "Big", "price_cents": 1, "initial_stock": 1_000_000_000_000u64}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    problem(
        app.post(
            "/api/v1/inventory/items/BIG/receive",
            json!({"quantity": 1}),
        )
        .await,
        StatusCode::CONFLICT,
        "stock_limit_exceeded",
    )
    .await;
    for quantity in [json!(0), json!(1_000_001), json!(i64::MAX)] {
        let response = app
            .post(
                "/api/v1/inventory/items/BIG/receive",
                json!({"quantity": quantity}),
            )
            .await;
        assert_eq!(invalid_fields(response).await, ["quantity"], "{quantity}");
    }
    assert_eq!(app.event_count().await, before + 1);
    let item: Value = app
        .get_json("/api/v1/inventory/items/BIG?min_version=1")
        .await;
    assert_eq!(item["on_hand"], 1_000_000_000_000u64);

    // Orders cannot overflow either: 100 lines of a million units at 10^12 cents each.
    let response = app
        .post(
            "/api/v1/inventory/items",
            json!({"sku": "DEAR", "name": "Dear", "price_cents": 1_000_000_000_000u64, "initial_stock": 0}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let lines: Vec<Value> = (0..2)
        .map(|_| json!({"sku": "DEAR", "quantity": 1_000_000}))
        .collect();
    let response = app.post("/api/v1/orders", json!({"lines": lines})).await;
    assert_eq!(
        response.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "a merged line past the quantity limit is refused"
    );
}

/// Publishes `payload` on `subject` straight into the stream, as a stored event from an
/// older version or another producer would be there.
async fn inject(app: &TestApp, subject: &str, event_type: &str, payload: Vec<u8>) {
    let js = jetstream::new(app.nats.client().await);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
    headers.insert("Chronicle-Event-Type", event_type);
    js.publish_with_headers(subject.to_owned(), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn envelope(
    context: &str,
    aggregate_type: &str,
    id: &str,
    event_type: &str,
    payload: Value,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": uuid::Uuid::now_v7(),
        "event_type": event_type,
        "event_version": "1",
        "context": context,
        "aggregate_type": aggregate_type,
        "aggregate_id": id,
        "sequence": 1,
        "recorded_at": "2026-12-01T00:00:00Z",
        "correlation_id": uuid::Uuid::now_v7(),
        "payload": payload,
    }))
    .unwrap()
}

/// Every kind of bad event, on every subject a projection or saga reads.
async fn poison_every_reader(app: &TestApp) {
    let user = uuid::Uuid::now_v7().to_string();
    let order = uuid::Uuid::now_v7().to_string();
    let post = uuid::Uuid::now_v7().to_string();
    let room = uuid::Uuid::now_v7().to_string();
    let file = uuid::Uuid::now_v7().to_string();
    let job = uuid::Uuid::now_v7().to_string();
    let rule = uuid::Uuid::now_v7().to_string();
    let targets = [
        (
            "monitoring",
            "rule",
            rule.as_str(),
            "AlertFiring",
            json!({"alert_id": 7, "value": "NaN", "at": "soon"}),
        ),
        (
            "scheduler",
            "job",
            job.as_str(),
            "JobCreated",
            json!({"job_id": job, "owner_id": "a\u{0}", "spec": {"name": 7},
                "created_at": "2026-01-01T00:00:00Z", "next_due_at": "yesterday"}),
        ),
        (
            "files",
            "file",
            file.as_str(),
            "FileStored",
            json!({"file_id": file, "owner_id": "a\u{0}", "name": "../\u{0}", "size": u64::MAX,
                "content_type": 7, "sha256": "x", "stored_at": "2026-01-01T00:00:00Z"}),
        ),
        (
            "chat",
            "room",
            room.as_str(),
            "RoomCreated",
            json!({"room_id": room, "kind": "group", "name": "a\u{0}", "members": "nobody", "created_by": 7}),
        ),
        (
            "identity",
            "user",
            user.as_str(),
            "UserRegistered",
            json!({"username": "nul", "display_name": "a\u{0}b"}),
        ),
        (
            "commerce",
            "inventory_item",
            "HUGE",
            "ItemCreated",
            json!({"sku": "HUGE", "name": "x", "price_cents": 1, "initial_stock": u64::MAX}),
        ),
        (
            "commerce",
            "order",
            order.as_str(),
            "OrderPlaced",
            json!({"customer_id": "x\u{0}", "lines": "not a list"}),
        ),
        (
            "blog",
            "post",
            post.as_str(),
            "PostDrafted",
            json!({"title": 42}),
        ),
        (
            "commerce",
            "cart",
            user.as_str(),
            "LineSet",
            json!({"sku": "a\u{0}", "quantity": -1}),
        ),
    ];
    for (context, aggregate_type, id, event_type, payload) in targets {
        let subject = format!("events.{context}.{aggregate_type}.{id}");
        // A payload that is not what its type says.
        inject(
            app,
            &subject,
            event_type,
            envelope(context, aggregate_type, id, event_type, payload),
        )
        .await;
        // An event type nobody knows.
        inject(
            app,
            &subject,
            "NoSuchEvent",
            envelope(context, aggregate_type, id, "NoSuchEvent", json!({})),
        )
        .await;
        // Not JSON at all, and JSON that is not an envelope.
        inject(app, &subject, event_type, b"\x00\xff not json".to_vec()).await;
        inject(app, &subject, event_type, b"{\"hello\": [1, 2]}".to_vec()).await;
    }
}

/// The `roles` claim of a token.
fn roles(token: &str) -> Vec<String> {
    use base64::Engine;
    let claims = token.split('.').nth(1).expect("a JWT has three parts");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .expect("base64url claims");
    let claims: Value = serde_json::from_slice(&claims).expect("JSON claims");
    serde_json::from_value(claims["roles"].clone()).expect("a list of roles")
}

async fn status_of(app: &TestApp) -> Vec<Value> {
    app.get("/api/v1/projections").await.json().await.unwrap()
}

#[tokio::test]
async fn no_stored_event_of_any_kind_stops_a_read_model_or_the_saga() {
    let app = TestApp::spawn().await;
    poison_every_reader(&app).await;

    // After the poison, every context still works end to end.
    let (_, _) = app.register_and_login("after").await;
    app.create_item("OK-1", "Fine", 100, 5).await;
    let placed: Value = app
        .post(
            "/api/v1/orders",
            json!({"lines": [{"sku": "OK-1", "quantity": 2}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let order_id = placed["id"].as_str().unwrap().to_owned();
    let post: Value = app
        .post(
            "/api/v1/posts",
            json!({"title": "Still here", "body_markdown": "yes", "tags": []}),
        )
        .await
        .json()
        .await
        .unwrap();
    let post_id = post["id"].as_str().unwrap().to_owned();

    let order = app
        .get(&format!("/api/v1/orders/{order_id}?min_version=2"))
        .await;
    assert_eq!(order.headers()["chronicle-consistency"], "fresh");
    assert_eq!(
        order.json::<Value>().await.unwrap()["status"],
        "reserved",
        "the saga went on"
    );
    let item = app.get("/api/v1/inventory/items/OK-1?min_version=2").await;
    assert_eq!(item.headers()["chronicle-consistency"], "fresh");
    let post = app
        .get(&format!("/api/v1/posts/{post_id}?min_version=1"))
        .await;
    assert_eq!(post.headers()["chronicle-consistency"], "fresh");
    eventually(
        "the new user to be readable",
        Duration::from_secs(10),
        || async {
            let users: i64 = sqlx::query_scalar("SELECT count(*) FROM identity.users")
                .fetch_one(&app.pool)
                .await
                .ok()?;
            (users == 2).then_some(())
        },
    )
    .await;

    // Every reader reports what it parked, with the error; none is stuck.
    let statuses = eventually(
        "every reader to report its parked events",
        Duration::from_secs(20),
        || async {
            let statuses = status_of(&app).await;
            statuses
                .iter()
                .all(|s| s["parked"].as_u64().unwrap_or(0) >= 2 && s["lag_events"] == 0)
                .then_some(statuses)
        },
    )
    .await;
    for status in &statuses {
        assert_eq!(status["status"], "failed", "{status}");
        assert!(
            status["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{status}"
        );
    }
    let users = statuses.iter().find(|s| s["name"] == "users").unwrap();
    let parked: Vec<Value> = app.get_json("/api/v1/projections/users/parked").await;
    assert_eq!(parked.len() as u64, users["parked"].as_u64().unwrap());
    assert!(
        parked
            .iter()
            .any(|p| p["error"].as_str().unwrap().contains("0x00")),
        "the NUL's own error is kept: {parked:?}"
    );
    for field in [
        "stream_seq",
        "subject",
        "event_type",
        "error",
        "attempts",
        "first_failed_at",
        "last_failed_at",
    ] {
        assert!(!parked[0][field].is_null(), "{field} in {}", parked[0]);
    }

    // A retry while the cause remains changes nothing and says so.
    let retried: Value = app
        .post("/api/v1/projections/users/retry", json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(retried["applied"], 0);
    assert_eq!(retried["still_parked"], users["parked"]);
}

#[tokio::test]
async fn the_parked_event_routes_are_for_staff_only() {
    let app = TestApp::spawn_with_staff(&["boss"]).await;
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/projections/users/parked"),
        (reqwest::Method::POST, "/api/v1/projections/users/retry"),
    ] {
        let response = app.request(method, path).send().await.unwrap();
        problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let (_, boss) = app.register_and_login("boss").await;
    let response = app.get_as(&boss, "/api/v1/projections/users/parked").await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .get_as(&boss, "/api/v1/projections/nothing/parked")
        .await;
    problem(response, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn only_staff_create_items_receive_stock_and_create_coupons() {
    let app = TestApp::spawn_with_staff(&["boss"]).await;
    let before = app.event_count().await;
    let attempts = [
        (
            "/api/v1/inventory/items",
            json!({"sku": "S-1", "name": "x", "price_cents": 1, "initial_stock": 1}),
        ),
        (
            "/api/v1/inventory/items/S-1/receive",
            json!({"quantity": 1}),
        ),
        (
            "/api/v1/coupons",
            json!({"code": "TEN", "percent_off": 10, "max_redemptions": 5}),
        ),
    ];
    for (path, body) in &attempts {
        problem(
            app.post(path, body.clone()).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    assert_eq!(app.event_count().await, before, "a refusal appends nothing");

    let (_, boss) = app.register_and_login("boss").await;
    assert_eq!(roles(&boss), ["customer", "staff"]);
    assert_eq!(roles(&app.token), ["customer"]);
    for (path, body) in &attempts {
        let response = app.post_as(&boss, path, body).await;
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }
}

/// An id in a path that holds a NUL, or is 10,000 characters long, names nothing: every
/// route that takes one answers 404 (or 414/400), never 500.
#[tokio::test]
async fn ids_in_paths_that_name_nothing_are_never_a_server_error() {
    let app = TestApp::spawn().await;
    let long = "x".repeat(10_000);
    let mut failed = Vec::new();
    for id in ["%00", "a%00b", long.as_str()] {
        for (method, path) in [
            (reqwest::Method::GET, format!("/api/v1/posts/{id}")),
            (reqwest::Method::GET, format!("/api/v1/posts/{id}/comments")),
            (reqwest::Method::GET, format!("/api/v1/orders/{id}")),
            (reqwest::Method::POST, format!("/api/v1/orders/{id}/cancel")),
            (
                reqwest::Method::GET,
                format!("/api/v1/inventory/items/{id}"),
            ),
            (reqwest::Method::GET, format!("/api/v1/coupons/{id}")),
            (reqwest::Method::GET, format!("/api/v1/users/{id}")),
            (reqwest::Method::GET, format!("/api/v1/rooms/{id}/messages")),
            (reqwest::Method::GET, format!("/api/v1/files/{id}")),
            (reqwest::Method::GET, format!("/api/v1/files/{id}/content")),
            (reqwest::Method::GET, format!("/api/v1/files/uploads/{id}")),
            (reqwest::Method::HEAD, format!("/api/v1/files/tus/{id}")),
            (reqwest::Method::GET, format!("/api/v1/jobs/{id}")),
            (reqwest::Method::GET, format!("/api/v1/jobs/{id}/runs")),
            (reqwest::Method::POST, format!("/api/v1/jobs/{id}/pause")),
        ] {
            let response = app
                .request(method.clone(), &path)
                .header("tus-resumable", "1.0.0")
                .send()
                .await
                .unwrap();
            if response.status().is_server_error() {
                failed.push(format!(
                    "{method} {}: {}",
                    &path[..path.len().min(48)],
                    response.status()
                ));
            }
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// SQL and HTML in every free-text field (issue 17, security): stored and read back byte for
/// byte (queries are parameterised, nothing is escaped on the way in), and the one field the
/// server renders, a post's Markdown, comes out inert. A field with a narrower alphabet
/// refuses the text with a 422 naming it; never a 5xx.
#[tokio::test]
async fn sql_and_html_in_every_string_field_are_stored_verbatim_and_rendered_inert() {
    // 64 characters at most: the shortest limit of the fields it goes to (a display name).
    const NASTY: &str = "');DROP TABLE events;--<script>x()</script><img src=x onerror=y>";
    let app = &TestApp::spawn().await;
    let (bobby, bobby_token) = app.register_and_login("bobby").await;
    let id_of = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let made = |path: &'static str, body: Value| async move {
        let answer = app.post(path, body).await;
        let status = answer.status();
        let value: Value = answer.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{path}: {value}");
        value
    };
    let read = |path: String| async move {
        let answer = app.get(&path).await;
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        answer.json::<Value>().await.unwrap()
    };
    // The page at `path` once it lists something (the read model may lag the command).
    let listed = |path: String| async move {
        chronicle_tests::eventually("the read model", Duration::from_secs(10), || async {
            let answer = app.get(&path).await;
            let page: Value = answer.json().await.ok()?;
            (!page["items"].as_array()?.is_empty()).then_some(page)
        })
        .await
    };
    let mut verbatim = Vec::new();

    let post = id_of(
        &made(
            "/api/v1/posts",
            json!({"title": NASTY, "body_markdown": NASTY, "tags": ["sql"]}),
        )
        .await,
    );
    let p = read(format!("/api/v1/posts/{post}?min_version=1")).await;
    verbatim.push(("post title", p["title"].clone()));
    verbatim.push(("post body_markdown", p["body_markdown"].clone()));
    let html = p["body_html"].as_str().unwrap();
    for live in ["<script", "onerror", "javascript:"] {
        assert!(!html.contains(live), "rendered HTML carries {live}: {html}");
    }
    assert!(html.contains("DROP TABLE events"), "{html}");
    assert_eq!(NASTY.chars().count(), 64);
    app.post(&format!("/api/v1/posts/{post}/publish"), json!({}))
        .await;
    let comment = app
        .post(
            &format!("/api/v1/posts/{post}/comments"),
            json!({"body": NASTY}),
        )
        .await;
    assert_eq!(comment.status(), StatusCode::CREATED);
    let comments = listed(format!("/api/v1/posts/{post}/comments")).await;
    verbatim.push(("comment body", comments["items"][0]["body"].clone()));

    let room = id_of(
        &made(
            "/api/v1/rooms",
            json!({"kind": "group", "name": NASTY, "members": []}),
        )
        .await,
    );
    let sent = app
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": NASTY, "client_msg_id": "nasty"}),
        )
        .await;
    assert_eq!(sent.status(), StatusCode::CREATED);
    let history = listed(format!("/api/v1/rooms/{room}/messages")).await;
    verbatim.push(("message body", history["items"][0]["body"].clone()));
    let rooms = read("/api/v1/rooms".to_owned()).await;
    verbatim.push(("room name", rooms["items"][0]["name"].clone()));

    let rename = |token: String| {
        app.http
            .patch(app.url(&format!("/api/v1/users/{bobby}")))
            .bearer_auth(token)
            .json(&json!({"display_name": NASTY}))
            .send()
    };
    // Another user's profile: refused, whatever the text.
    assert_eq!(
        rename(app.token.clone()).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let renamed = rename(bobby_token).await.unwrap();
    assert_eq!(renamed.status(), StatusCode::OK);
    let version = renamed.json::<Value>().await.unwrap()["version"].clone();
    let profile = read(format!("/api/v1/users/{bobby}?min_version={version}")).await;
    verbatim.push(("display name", profile["display_name"].clone()));

    made(
        "/api/v1/inventory/items",
        json!({"sku": "NASTY-1", "name": NASTY, "price_cents": 1, "initial_stock": 1}),
    )
    .await;
    let described = app
        .send_json(
            reqwest::Method::PATCH,
            "/api/v1/inventory/items/NASTY-1",
            &json!({"description": NASTY}),
        )
        .await;
    assert_eq!(described.status(), StatusCode::OK);
    let item = read("/api/v1/inventory/items/NASTY-1?min_version=2".to_owned()).await;
    verbatim.push(("item name", item["name"].clone()));
    verbatim.push(("item description", item["description"].clone()));

    let job = id_of(
        &made(
            "/api/v1/jobs",
            json!({"name": NASTY, "schedule": {"after_seconds": 3600},
                "action": {"kind": "command", "command": "noop"}}),
        )
        .await,
    );
    let job = read(format!("/api/v1/jobs/{job}?min_version=1")).await;
    verbatim.push(("job name", job["name"].clone()));

    for (field, stored) in &verbatim {
        assert_eq!(stored.as_str(), Some(NASTY), "{field} came back changed");
    }
    // Narrower alphabets refuse it, naming the field, and never fail.
    for (path, body, field) in [
        (
            "/api/v1/inventory/items",
            json!({"sku": NASTY, "name": "x", "price_cents": 1, "initial_stock": 1}),
            "sku",
        ),
        (
            "/api/v1/coupons",
            json!({"code": NASTY, "percent_off": 10, "max_redemptions": 1}),
            "code",
        ),
        (
            "/api/v1/auth/register",
            json!({"username": NASTY, "password": "long enough", "display_name": "x"}),
            "username",
        ),
    ] {
        let fields = crate::common::invalid_fields(app.post(path, body).await).await;
        assert_eq!(fields, [field], "{path}");
    }
    let tables: i64 = app.scalar("SELECT count(*) FROM blog.events").await;
    assert!(tables > 0, "the events table is still there");
}
