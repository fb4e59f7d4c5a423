//! The authorization matrix (issue 17, security): every operation of the served OpenAPI
//! document, asked by anonymous, another customer, staff and the owner of the resource, in
//! that order (the owner last: some rows delete or change what they name). Each cell is the
//! exact status expected; a refused caller appends nothing. A route added to the router
//! without a row here fails `every_operation_of_the_document_has_a_row`.

use chronicle_tests::sha256_hex;
use std::collections::BTreeSet;

use chronicle_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    Other,
    Staff,
    Owner,
}

/// What is sent.
enum Body {
    None,
    Json(Value),
    /// Raw bytes with their content type and extra headers.
    Raw(&'static str, Vec<u8>, Vec<(&'static str, String)>),
    /// A multipart upload of one small text file.
    File,
}

/// One operation: its document template, the concrete request, and the status each caller
/// gets (anonymous, another customer, staff, the owner).
struct Row {
    method: Method,
    template: &'static str,
    path: String,
    body: Body,
    expect: [u16; 4],
}

fn row(method: Method, template: &'static str, path: String, body: Body, expect: [u16; 4]) -> Row {
    Row {
        method,
        template,
        path,
        body,
        expect,
    }
}

/// The users and what the owner (a customer) and staff made before the matrix runs.
struct World {
    other: String,
    other_id: String,
    staff: String,
    staff_id: String,
    owner: String,
    owner_id: String,
    mia_id: String,
    order: String,
    order_to_cancel: String,
    order_paid: String,
    published: String,
    draft: String,
    post_to_delete: String,
    post_to_unpublish: String,
    comment: String,
    room: String,
    room_with_mia: String,
    file: String,
    file_to_delete: String,
    share: String,
    share_to_revoke: String,
    upload: String,
    tus: String,
    job: String,
    job_to_delete: String,
    rule: String,
}

async fn call(
    app: &TestApp,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: &Body,
) -> reqwest::Response {
    let mut request = app.http.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request = match body {
        Body::None => request,
        Body::Json(value) => request.json(value),
        Body::Raw(content_type, bytes, headers) => {
            let mut request = request
                .header("content-type", *content_type)
                .body(bytes.clone());
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            request
        }
        Body::File => request.multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(b"matrix".to_vec()).file_name("m.txt"),
        )),
    };
    request.send().await.expect("the gateway answers")
}

/// A 2xx answer's JSON.
async fn made(app: &TestApp, token: &str, method: Method, path: &str, body: Body) -> Value {
    let answer = call(app, Some(token), method.clone(), path, &body).await;
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn id(value: &Value) -> String {
    value["id"]
        .as_str()
        .or(value["upload_id"].as_str())
        .unwrap_or_else(|| panic!("no id in {value}"))
        .to_owned()
}

async fn world(app: &TestApp) -> World {
    let (other_id, other) = app.register_and_login("oscar").await;
    let (staff_id, staff) = app.register_and_login("stella").await;
    let (owner_id, owner) = app.register_and_login("olive").await;
    let (mia_id, _) = app.register_and_login("mia").await;
    let json = |value: Value| Body::Json(value);
    made(
        app,
        &staff,
        Method::POST,
        "/api/v1/inventory/items",
        json(json!({"sku": "AZ-1", "name": "Matrix", "price_cents": 100, "initial_stock": 1000})),
    )
    .await;
    made(
        app,
        &staff,
        Method::POST,
        "/api/v1/inventory/items",
        json(json!({"sku": "AZ-3", "name": "To withdraw", "price_cents": 5, "initial_stock": 1})),
    )
    .await;
    made(
        app,
        &staff,
        Method::POST,
        "/api/v1/coupons",
        json(json!({"code": "AZ10", "percent_off": 10, "max_redemptions": 5})),
    )
    .await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        let order = made(
            app,
            &owner,
            Method::POST,
            "/api/v1/orders",
            json(json!({"lines": [{"sku": "AZ-1", "quantity": 1}]})),
        )
        .await;
        let order = id(&order);
        chronicle_tests::eventually(
            "the order reserved",
            std::time::Duration::from_secs(20),
            || async {
                let read: Value = call(
                    app,
                    Some(&owner),
                    Method::GET,
                    &format!("/api/v1/orders/{order}"),
                    &Body::None,
                )
                .await
                .json()
                .await
                .ok()?;
                (read["status"] == "reserved").then_some(())
            },
        )
        .await;
        orders.push(order);
    }
    made(
        app,
        &owner,
        Method::POST,
        &format!("/api/v1/orders/{}/pay", orders[2]),
        json(json!({"amount_cents": 100})),
    )
    .await;
    let mut posts = Vec::new();
    for publish in [true, false, false, true] {
        let post = made(
            app,
            &owner,
            Method::POST,
            "/api/v1/posts",
            json(json!({"title": "Matrix", "body_markdown": "text", "tags": ["m"]})),
        )
        .await;
        let post = id(&post);
        if publish {
            made(
                app,
                &owner,
                Method::POST,
                &format!("/api/v1/posts/{post}/publish"),
                Body::None,
            )
            .await;
        }
        posts.push(post);
    }
    let comment = made(
        app,
        &owner,
        Method::POST,
        &format!("/api/v1/posts/{}/comments", posts[0]),
        json(json!({"body": "first"})),
    )
    .await;
    let room = made(
        app,
        &owner,
        Method::POST,
        "/api/v1/rooms",
        json(json!({"kind": "group", "name": "matrix", "members": []})),
    )
    .await;
    let room_with_mia = made(
        app,
        &owner,
        Method::POST,
        "/api/v1/rooms",
        json(json!({"kind": "group", "name": "mia", "members": [mia_id]})),
    )
    .await;
    made(
        app,
        &owner,
        Method::POST,
        &format!("/api/v1/rooms/{}/messages", id(&room)),
        json(json!({"body": "hello", "client_msg_id": "m-1"})),
    )
    .await;
    let file = id(&made(app, &owner, Method::POST, "/api/v1/files", Body::File).await);
    let file_to_delete = id(&made(app, &owner, Method::POST, "/api/v1/files", Body::File).await);
    let mut shares = Vec::new();
    for _ in 0..2 {
        let share = made(
            app,
            &owner,
            Method::POST,
            &format!("/api/v1/files/{file}/shares"),
            json(json!({"expires_in_seconds": 3600})),
        )
        .await;
        shares.push(share["token"].as_str().unwrap().to_owned());
    }
    let upload = made(
        app,
        &owner,
        Method::POST,
        "/api/v1/files/uploads",
        json(json!({"name": "c.bin", "size": 6,
            "sha256": sha256_hex(b"chunky"), "content_type": "application/octet-stream"})),
    )
    .await;
    let tus = call(
        app,
        Some(&owner),
        Method::POST,
        "/api/v1/files/tus",
        &Body::Raw("application/offset+octet-stream", Vec::new(), tus_create()),
    )
    .await;
    assert_eq!(tus.status(), StatusCode::CREATED);
    let tus = tus.headers()["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let job = |name: &'static str| {
        json(json!({"name": name, "schedule": {"cron": "0 0 * * * *"},
            "action": {"kind": "command", "command": "noop"}}))
    };
    let job_made = made(app, &owner, Method::POST, "/api/v1/jobs", job("m1")).await;
    let job_to_delete = made(app, &owner, Method::POST, "/api/v1/jobs", job("m2")).await;
    let rule = made(
        app,
        &staff,
        Method::POST,
        "/api/v1/monitoring/rules",
        json(
            json!({"name": "matrix", "metric": "m", "agg": "avg", "op": ">",
            "threshold": 1.0, "for_seconds": 0, "severity": "info", "channels": []}),
        ),
    )
    .await;
    World {
        other,
        other_id,
        staff,
        staff_id,
        owner,
        owner_id,
        mia_id,
        order: orders[0].clone(),
        order_to_cancel: orders[1].clone(),
        order_paid: orders[2].clone(),
        published: posts[0].clone(),
        draft: posts[1].clone(),
        post_to_delete: posts[2].clone(),
        post_to_unpublish: posts[3].clone(),
        comment: id(&comment),
        room: id(&room),
        room_with_mia: id(&room_with_mia),
        file,
        file_to_delete,
        share: shares[0].clone(),
        share_to_revoke: shares[1].clone(),
        upload: id(&upload),
        tus,
        job: id(&job_made),
        job_to_delete: id(&job_to_delete),
        rule: id(&rule),
    }
}

fn tus_create() -> Vec<(&'static str, String)> {
    vec![
        ("tus-resumable", "1.0.0".to_owned()),
        ("upload-length", "6".to_owned()),
    ]
}

fn tus_patch() -> Body {
    Body::Raw(
        "application/offset+octet-stream",
        b"mat".to_vec(),
        vec![
            ("tus-resumable", "1.0.0".to_owned()),
            ("upload-offset", "0".to_owned()),
        ],
    )
}

fn tus_only() -> Body {
    Body::Raw(
        "application/octet-stream",
        Vec::new(),
        vec![("tus-resumable", "1.0.0".to_owned())],
    )
}

/// Every operation, with what each caller gets: `[anonymous, other, staff, owner]`.
fn rows(w: &World) -> Vec<Row> {
    use Method as M;
    let j = Body::Json;
    let unknown = "0192d5a0-0000-7000-8000-000000000000";
    vec![
        // Open to everyone.
        row(
            M::GET,
            "/health",
            "/health".into(),
            Body::None,
            [200, 200, 200, 200],
        ),
        row(
            M::GET,
            "/metrics",
            "/metrics".into(),
            Body::None,
            [200, 200, 200, 200],
        ),
        // Off unless CHRONICLE_PROFILING=1, for everyone who is signed in
        // (chronicle/tests/profile.rs turns it on: staff only there).
        row(
            M::GET,
            "/debug/profile",
            "/debug/profile?seconds=1".into(),
            Body::None,
            [401, 404, 404, 404],
        ),
        row(
            M::POST,
            "/api/v1/auth/register",
            "/api/v1/auth/register".into(),
            j(json!({"username": "olive", "password": "correct horse", "display_name": "O"})),
            [409, 409, 409, 409],
        ),
        row(
            M::POST,
            "/api/v1/auth/login",
            "/api/v1/auth/login".into(),
            j(json!({"username": "olive", "password": "correct horse"})),
            [200, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/shared/{token}",
            format!("/api/v1/shared/{}", w.share),
            Body::None,
            [200, 200, 200, 200],
        ),
        // Anyone signed in: their own lists, public reads, new aggregates of their own.
        row(
            M::GET,
            "/api/v1/files",
            "/api/v1/files".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::POST,
            "/api/v1/files",
            "/api/v1/files".into(),
            Body::File,
            [401, 201, 201, 201],
        ),
        row(
            M::POST,
            "/api/v1/files/uploads",
            "/api/v1/files/uploads".into(),
            j(
                json!({"name": "n.bin", "size": 3, "sha256": sha256_hex(b"new"),
                "content_type": "application/octet-stream"}),
            ),
            [401, 201, 201, 201],
        ),
        row(
            M::OPTIONS,
            "/api/v1/files/tus",
            "/api/v1/files/tus".into(),
            Body::None,
            [204, 204, 204, 204],
        ),
        row(
            M::POST,
            "/api/v1/files/tus",
            "/api/v1/files/tus".into(),
            Body::Raw("application/offset+octet-stream", Vec::new(), tus_create()),
            [401, 201, 201, 201],
        ),
        row(
            M::OPTIONS,
            "/api/v1/files/tus/{id}",
            format!("/api/v1/files/tus/{}", w.tus),
            Body::None,
            [204, 204, 204, 204],
        ),
        row(
            M::GET,
            "/api/v1/inventory/items",
            "/api/v1/inventory/items".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/inventory/items/{sku}",
            "/api/v1/inventory/items/AZ-1".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/jobs",
            "/api/v1/jobs".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::POST,
            "/api/v1/jobs",
            "/api/v1/jobs".into(),
            j(json!({"name": "new", "schedule": {"after_seconds": 3600},
                "action": {"kind": "command", "command": "noop"}})),
            [401, 201, 201, 201],
        ),
        row(
            M::GET,
            "/api/v1/orders",
            "/api/v1/orders".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::POST,
            "/api/v1/orders",
            "/api/v1/orders".into(),
            j(json!({"lines": [{"sku": "AZ-1", "quantity": 1}]})),
            [401, 201, 201, 201],
        ),
        row(
            M::GET,
            "/api/v1/posts",
            "/api/v1/posts".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::POST,
            "/api/v1/posts",
            "/api/v1/posts".into(),
            j(json!({"title": "Mine", "body_markdown": "x", "tags": []})),
            [401, 201, 201, 201],
        ),
        row(
            M::POST,
            "/api/v1/posts/preview",
            "/api/v1/posts/preview".into(),
            j(json!({"body_markdown": "**x**"})),
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/posts/{id}",
            format!("/api/v1/posts/{}", w.published),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/posts/{id}/comments",
            format!("/api/v1/posts/{}/comments", w.published),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::POST,
            "/api/v1/posts/{id}/comments",
            format!("/api/v1/posts/{}/comments", w.published),
            j(json!({"body": "a comment"})),
            [401, 201, 201, 201],
        ),
        row(
            M::GET,
            "/api/v1/tags",
            "/api/v1/tags".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/rooms",
            "/api/v1/rooms".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::POST,
            "/api/v1/rooms",
            "/api/v1/rooms".into(),
            j(json!({"kind": "group", "name": "new", "members": []})),
            [401, 201, 201, 201],
        ),
        row(
            M::GET,
            "/api/v1/users",
            "/api/v1/users?username=owner".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/users/{id}",
            format!("/api/v1/users/{}", w.owner_id),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/users/{id}/presence",
            format!("/api/v1/users/{}/presence", w.owner_id),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/projections",
            "/api/v1/projections".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/coupons/{code}",
            "/api/v1/coupons/AZ10".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/monitoring/alerts",
            "/api/v1/monitoring/alerts".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/monitoring/metrics",
            "/api/v1/monitoring/metrics".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/monitoring/query",
            "/api/v1/monitoring/query?metric=m".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::POST,
            "/api/v1/monitoring/samples",
            "/api/v1/monitoring/samples".into(),
            Body::Raw("text/plain", b"matrix_total 1\n".to_vec(), Vec::new()),
            [401, 202, 202, 202],
        ),
        // Staff only: the owner here is a customer like the other.
        row(
            M::POST,
            "/api/v1/coupons",
            "/api/v1/coupons".into(),
            j(json!({"code": "AZ20", "percent_off": 20, "max_redemptions": 1})),
            [401, 403, 201, 403],
        ),
        row(
            M::POST,
            "/api/v1/inventory/items",
            "/api/v1/inventory/items".into(),
            j(json!({"sku": "AZ-2", "name": "Two", "price_cents": 1, "initial_stock": 1})),
            [401, 403, 201, 403],
        ),
        row(
            M::POST,
            "/api/v1/inventory/items/{sku}/receive",
            "/api/v1/inventory/items/AZ-1/receive".into(),
            j(json!({"quantity": 1})),
            [401, 403, 200, 403],
        ),
        row(
            M::PATCH,
            "/api/v1/inventory/items/{sku}",
            "/api/v1/inventory/items/AZ-1".into(),
            j(json!({"description": "The matrix's own item"})),
            [401, 403, 200, 403],
        ),
        row(
            M::POST,
            "/api/v1/inventory/items/{sku}/discontinue",
            "/api/v1/inventory/items/AZ-3/discontinue".into(),
            Body::None,
            [401, 403, 200, 403],
        ),
        // Each caller's own cart: no route names another's.
        row(
            M::GET,
            "/api/v1/cart",
            "/api/v1/cart".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::PUT,
            "/api/v1/cart/items/{sku}",
            "/api/v1/cart/items/AZ-1".into(),
            j(json!({"quantity": 1})),
            [401, 200, 200, 200],
        ),
        // Each caller checks out the line it just set: an order of its own.
        row(
            M::POST,
            "/api/v1/cart/checkout",
            "/api/v1/cart/checkout".into(),
            j(json!({})),
            [401, 201, 201, 201],
        ),
        row(
            M::DELETE,
            "/api/v1/cart/items/{sku}",
            "/api/v1/cart/items/AZ-1".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::DELETE,
            "/api/v1/cart",
            "/api/v1/cart".into(),
            Body::None,
            [401, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/projections/{name}/parked",
            "/api/v1/projections/posts/parked".into(),
            Body::None,
            [401, 403, 200, 403],
        ),
        row(
            M::POST,
            "/api/v1/projections/{name}/retry",
            "/api/v1/projections/posts/retry".into(),
            j(json!({})),
            [401, 403, 200, 403],
        ),
        row(
            M::GET,
            "/api/v1/monitoring/rules",
            "/api/v1/monitoring/rules".into(),
            Body::None,
            [401, 403, 200, 403],
        ),
        row(
            M::POST,
            "/api/v1/monitoring/rules",
            "/api/v1/monitoring/rules".into(),
            j(
                json!({"name": "two", "metric": "m", "agg": "avg", "op": ">",
                "threshold": 2.0, "for_seconds": 0, "severity": "info", "channels": []}),
            ),
            [401, 403, 201, 403],
        ),
        row(
            M::GET,
            "/api/v1/monitoring/rules/{id}",
            format!("/api/v1/monitoring/rules/{}", w.rule),
            Body::None,
            [401, 403, 200, 403],
        ),
        row(
            M::PATCH,
            "/api/v1/monitoring/rules/{id}",
            format!("/api/v1/monitoring/rules/{}", w.rule),
            j(json!({"threshold": 3.0})),
            [401, 403, 200, 403],
        ),
        row(
            M::DELETE,
            "/api/v1/monitoring/rules/{id}",
            format!("/api/v1/monitoring/rules/{}", w.rule),
            Body::None,
            [401, 403, 204, 403],
        ),
        row(
            M::POST,
            "/api/v1/monitoring/alerts/{id}/acknowledge",
            format!("/api/v1/monitoring/alerts/{unknown}/acknowledge"),
            Body::None,
            [401, 403, 404, 403],
        ),
        row(
            M::POST,
            "/api/v1/orders/{id}/ship",
            format!("/api/v1/orders/{}/ship", w.order_paid),
            Body::None,
            [401, 403, 403, 200],
        ),
        // The owner's own: another customer, and staff, are refused (403 where the API contract says
        // so: orders, posts, rooms, profiles; 404 where the resource is not revealed to
        // others: files, uploads, jobs, drafts).
        row(
            M::GET,
            "/api/v1/orders/{id}",
            format!("/api/v1/orders/{}", w.order),
            Body::None,
            [401, 403, 403, 200],
        ),
        row(
            M::POST,
            "/api/v1/orders/{id}/pay",
            format!("/api/v1/orders/{}/pay", w.order),
            j(json!({"amount_cents": 100})),
            [401, 403, 403, 200],
        ),
        row(
            M::POST,
            "/api/v1/orders/{id}/cancel",
            format!("/api/v1/orders/{}/cancel", w.order_to_cancel),
            Body::None,
            [401, 403, 403, 200],
        ),
        row(
            M::GET,
            "/api/v1/posts/{id}",
            format!("/api/v1/posts/{}", w.draft),
            Body::None,
            [401, 404, 404, 200],
        ),
        row(
            M::PATCH,
            "/api/v1/posts/{id}",
            format!("/api/v1/posts/{}", w.published),
            j(json!({"title": "Changed"})),
            [401, 403, 403, 200],
        ),
        row(
            M::POST,
            "/api/v1/posts/{id}/publish",
            format!("/api/v1/posts/{}/publish", w.draft),
            Body::None,
            [401, 403, 403, 200],
        ),
        row(
            M::POST,
            "/api/v1/posts/{id}/unpublish",
            format!("/api/v1/posts/{}/unpublish", w.post_to_unpublish),
            Body::None,
            [401, 403, 403, 200],
        ),
        row(
            M::DELETE,
            "/api/v1/posts/{id}/comments/{comment_id}",
            format!("/api/v1/posts/{}/comments/{}", w.published, w.comment),
            Body::None,
            [401, 403, 403, 204],
        ),
        row(
            M::DELETE,
            "/api/v1/posts/{id}",
            format!("/api/v1/posts/{}", w.post_to_delete),
            Body::None,
            [401, 403, 403, 204],
        ),
        row(
            M::PATCH,
            "/api/v1/users/{id}",
            format!("/api/v1/users/{}", w.owner_id),
            j(json!({"display_name": "Olive"})),
            [401, 403, 403, 200],
        ),
        row(
            M::GET,
            "/api/v1/rooms/{id}/messages",
            format!("/api/v1/rooms/{}/messages", w.room),
            Body::None,
            [401, 403, 403, 200],
        ),
        row(
            M::POST,
            "/api/v1/rooms/{id}/messages",
            format!("/api/v1/rooms/{}/messages", w.room),
            j(json!({"body": "hi", "client_msg_id": "m-2"})),
            [401, 403, 403, 201],
        ),
        row(
            M::POST,
            "/api/v1/rooms/{id}/read",
            format!("/api/v1/rooms/{}/read", w.room),
            j(json!({"up_to_seq": 1})),
            [401, 403, 403, 200],
        ),
        row(
            M::POST,
            "/api/v1/rooms/{id}/members",
            format!("/api/v1/rooms/{}/members", w.room),
            j(json!({"user_id": w.mia_id})),
            [401, 403, 403, 200],
        ),
        row(
            M::DELETE,
            "/api/v1/rooms/{id}/members/{user_id}",
            format!("/api/v1/rooms/{}/members/{}", w.room_with_mia, w.mia_id),
            Body::None,
            [401, 403, 403, 200],
        ),
        row(
            M::GET,
            "/api/v1/files/{id}",
            format!("/api/v1/files/{}", w.file),
            Body::None,
            [401, 404, 404, 200],
        ),
        row(
            M::GET,
            "/api/v1/files/{id}/content",
            format!("/api/v1/files/{}/content", w.file),
            Body::None,
            [401, 404, 404, 200],
        ),
        row(
            M::GET,
            "/api/v1/files/{id}/thumbnail",
            format!("/api/v1/files/{}/thumbnail", w.file),
            Body::None,
            [401, 404, 404, 409],
        ),
        row(
            M::POST,
            "/api/v1/files/{id}/shares",
            format!("/api/v1/files/{}/shares", w.file),
            j(json!({"expires_in_seconds": 60})),
            [401, 404, 404, 201],
        ),
        row(
            M::DELETE,
            "/api/v1/files/{id}/shares/{token}",
            format!("/api/v1/files/{}/shares/{}", w.file, w.share_to_revoke),
            Body::None,
            [401, 404, 404, 204],
        ),
        row(
            M::DELETE,
            "/api/v1/files/{id}",
            format!("/api/v1/files/{}", w.file_to_delete),
            Body::None,
            [401, 404, 404, 204],
        ),
        row(
            M::GET,
            "/api/v1/files/uploads/{id}",
            format!("/api/v1/files/uploads/{}", w.upload),
            Body::None,
            [401, 404, 404, 200],
        ),
        row(
            M::PUT,
            "/api/v1/files/uploads/{id}/chunks/{index}",
            format!("/api/v1/files/uploads/{}/chunks/0", w.upload),
            Body::Raw("application/octet-stream", b"chunky".to_vec(), Vec::new()),
            [401, 404, 404, 204],
        ),
        row(
            M::POST,
            "/api/v1/files/uploads/{id}/complete",
            format!("/api/v1/files/uploads/{}/complete", w.upload),
            Body::None,
            [401, 404, 404, 201],
        ),
        row(
            M::HEAD,
            "/api/v1/files/tus/{id}",
            format!("/api/v1/files/tus/{}", w.tus),
            tus_only(),
            [401, 404, 404, 200],
        ),
        row(
            M::PATCH,
            "/api/v1/files/tus/{id}",
            format!("/api/v1/files/tus/{}", w.tus),
            tus_patch(),
            [401, 404, 404, 204],
        ),
        row(
            M::DELETE,
            "/api/v1/files/tus/{id}",
            format!("/api/v1/files/tus/{}", w.tus),
            tus_only(),
            [401, 404, 404, 204],
        ),
        row(
            M::GET,
            "/api/v1/jobs/{id}",
            format!("/api/v1/jobs/{}", w.job),
            Body::None,
            [401, 404, 404, 200],
        ),
        row(
            M::GET,
            "/api/v1/jobs/{id}/runs",
            format!("/api/v1/jobs/{}/runs", w.job),
            Body::None,
            [401, 404, 404, 200],
        ),
        row(
            M::POST,
            "/api/v1/jobs/{id}/pause",
            format!("/api/v1/jobs/{}/pause", w.job),
            Body::None,
            [401, 404, 404, 200],
        ),
        row(
            M::POST,
            "/api/v1/jobs/{id}/resume",
            format!("/api/v1/jobs/{}/resume", w.job),
            Body::None,
            [401, 404, 404, 200],
        ),
        row(
            M::DELETE,
            "/api/v1/jobs/{id}",
            format!("/api/v1/jobs/{}", w.job_to_delete),
            Body::None,
            [401, 404, 404, 204],
        ),
        // The WebSocket takes its token in the query; a plain GET is no handshake.
        row(
            M::GET,
            "/ws",
            "/ws".into(),
            Body::None,
            [401, 400, 400, 400],
        ),
    ]
}

/// Events whose metadata names `actor` as who issued them (none: anonymous ones).
async fn appended_by(app: &TestApp, actor: Option<&str>) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM ({}) e WHERE metadata->>'actor' IS NOT DISTINCT FROM $1",
        chronicle_tests::every_context("metadata", "events")
    ))
    .bind(actor)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Every (method, template) the served document lists.
async fn documented(app: &TestApp) -> BTreeSet<(String, String)> {
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let mut operations = BTreeSet::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert((method.to_uppercase(), template.clone()));
        }
    }
    operations
}

#[tokio::test]
async fn every_operation_answers_each_caller_as_the_matrix_says() {
    let app = TestApp::spawn_with_staff(&["stella"]).await;
    let w = world(&app).await;
    let rows = rows(&w);

    let listed: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_owned()))
        .collect();
    let missing: Vec<_> = documented(&app)
        .await
        .difference(&listed)
        .cloned()
        .collect();
    assert!(missing.is_empty(), "operations without a row: {missing:?}");

    let mut wrong = Vec::new();
    let mut asked = 0;
    for r in &rows {
        for (who, expected) in [Who::Anonymous, Who::Other, Who::Staff, Who::Owner]
            .into_iter()
            .zip(r.expect)
        {
            let (token, actor) = match who {
                Who::Anonymous => (None, None),
                Who::Other => (Some(w.other.as_str()), Some(w.other_id.as_str())),
                Who::Staff => (Some(w.staff.as_str()), Some(w.staff_id.as_str())),
                Who::Owner => (Some(w.owner.as_str()), Some(w.owner_id.as_str())),
            };
            let path = if r.template == "/ws" {
                token.map_or_else(|| "/ws".to_owned(), |t| format!("/ws?token={t}"))
            } else {
                r.path.clone()
            };
            let before = appended_by(&app, actor).await;
            let answer = call(&app, token, r.method.clone(), &path, &r.body).await;
            asked += 1;
            let status = answer.status();
            let refused = status == StatusCode::UNAUTHORIZED
                || status == StatusCode::FORBIDDEN
                || (status == StatusCode::NOT_FOUND && expected == 404);
            if refused && r.method != Method::HEAD {
                let content_type = answer.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(
                    content_type, "application/problem+json",
                    "{} {path} as {who:?}",
                    r.method
                );
            }
            if status.as_u16() != expected {
                let text = answer.text().await.unwrap_or_default();
                wrong.push(format!(
                    "{} {} as {who:?}: {} (expected {expected}) {}",
                    r.method,
                    r.template,
                    status.as_u16(),
                    &text[..text.len().min(160)]
                ));
            } else if refused {
                assert_eq!(
                    appended_by(&app, actor).await,
                    before,
                    "{} {path} as {who:?} was refused but appended",
                    r.method
                );
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {asked} answers differ from the matrix:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
