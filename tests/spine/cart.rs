//! The cart through HTTP on real servers (the API contract, "Catalog edits and the cart"): one per
//! customer, lines set and removed, priced at the items' current prices, at most 100 lines,
//! and only what is for sale goes in.

use chronicle_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{
    assert_replays_byte_for_byte, business_series_reaches, invalid_fields, post_named_item, problem,
};

async fn set_line(app: &TestApp, token: &str, sku: &str, quantity: Value) -> reqwest::Response {
    app.http
        .put(app.url(&format!("/api/v1/cart/items/{sku}")))
        .bearer_auth(token)
        .json(&json!({"quantity": quantity}))
        .send()
        .await
        .unwrap()
}

/// The cart's version after a command that answered 200 `{"version"}`.
async fn version(response: reqwest::Response) -> u64 {
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let version = body["version"].as_u64().unwrap();
    assert_eq!(etag, format!("\"{version}\""));
    version
}

/// The caller's cart once it reflects `version`.
async fn cart(app: &TestApp, token: &str, version: u64) -> Value {
    let r = app
        .get_as(token, &format!("/api/v1/cart?min_version={version}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["chronicle-consistency"], "fresh");
    r.json().await.unwrap()
}

async fn cart_events(app: &TestApp, cart: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM commerce.events WHERE aggregate_type = 'cart' AND aggregate_id = $1",
    )
    .bind(cart)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_cart_holds_lines_priced_now_and_each_customer_sees_only_their_own() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "C-1", 250, 10).await;
    post_named_item(&app, "C-2", 1000, 1).await;
    let token = app.token.clone();
    let never: Value = app.get("/api/v1/cart").await.json().await.unwrap();
    assert_eq!(
        never,
        json!({"lines": [], "total_cents": 0, "version": 0}),
        "a cart never used is empty at version 0"
    );

    version(set_line(&app, &token, "C-1", json!(2)).await).await;
    let v = version(set_line(&app, &token, "C-2", json!(3)).await).await;
    let seen = cart(&app, &token, v).await;
    assert_eq!(
        seen,
        json!({
            "lines": [
                {"sku": "C-1", "name": "Item C-1", "quantity": 2, "unit_price_cents": 250,
                 "line_total_cents": 500, "available": 10, "discontinued": false},
                {"sku": "C-2", "name": "Item C-2", "quantity": 3, "unit_price_cents": 1000,
                 "line_total_cents": 3000, "available": 1, "discontinued": false}
            ],
            "total_cents": 3500,
            "version": 2
        })
    );

    // The total follows a price change at once.
    let repriced = app
        .send_json(
            Method::PATCH,
            "/api/v1/inventory/items/C-1",
            &json!({"price_cents": 300}),
        )
        .await;
    let item_version = repriced.json::<Value>().await.unwrap()["version"]
        .as_u64()
        .unwrap();
    app.get(&format!(
        "/api/v1/inventory/items/C-1?min_version={item_version}"
    ))
    .await;
    assert_eq!(cart(&app, &token, v).await["total_cents"], 3600);

    // Another customer has a cart of their own, and never reaches this one.
    let (_, other) = app.register_and_login("otto").await;
    let theirs: Value = app
        .get_as(&other, "/api/v1/cart")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["lines"], json!([]));
    let v_other = version(set_line(&app, &other, "C-2", json!(1)).await).await;
    assert_eq!(v_other, 1);
    assert_eq!(cart(&app, &token, v).await["lines"][1]["quantity"], 3);

    // Removing a line, removing what is not there, emptying.
    let removed = app.send(Method::DELETE, "/api/v1/cart/items/C-2").await;
    let v = version(removed).await;
    assert_eq!(v, 3);
    let nothing = app.send(Method::DELETE, "/api/v1/cart/items/C-2").await;
    assert_eq!(version(nothing).await, 3, "removing what is not there");
    let emptied = app.send(Method::DELETE, "/api/v1/cart").await;
    let v = version(emptied).await;
    assert_eq!(
        cart(&app, &token, v).await,
        json!({"lines": [], "total_cents": 0, "version": 4})
    );
}

#[tokio::test]
async fn only_what_is_for_sale_goes_in_and_bad_lines_append_nothing() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "G-1", 100, 5).await;
    post_named_item(&app, "G-2", 100, 5).await;
    let token = app.token.clone();
    let withdrawn = app
        .send(Method::POST, "/api/v1/inventory/items/G-2/discontinue")
        .await;
    assert_eq!(withdrawn.status(), StatusCode::OK);

    problem(
        set_line(&app, &token, "NOPE", json!(1)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    problem(
        set_line(&app, &token, "G-2", json!(1)).await,
        StatusCode::CONFLICT,
        "item_discontinued",
    )
    .await;
    for quantity in [json!(0), json!(-1), json!(1_000_001), json!(i64::MAX)] {
        assert_eq!(
            invalid_fields(set_line(&app, &token, "G-1", quantity.clone()).await).await,
            ["quantity"],
            "{quantity}"
        );
    }
    for body in [
        json!({"quantity": 1, "price_cents": 1}),
        json!({"quantity": 1.5}),
    ] {
        let r = app
            .send_json(Method::PUT, "/api/v1/cart/items/G-1", &body)
            .await;
        problem(r, StatusCode::BAD_REQUEST, "invalid_body").await;
    }
    assert_eq!(
        invalid_fields(set_line(&app, &token, "G%001", json!(1)).await).await,
        ["sku"]
    );
    assert_eq!(cart_events(&app, &app.user_id).await, 0, "nothing appended");

    // A stale If-Match, and a line set twice with one Idempotency-Key.
    let v = version(set_line(&app, &token, "G-1", json!(1)).await).await;
    let stale = app
        .request(Method::PUT, "/api/v1/cart/items/G-1")
        .header("if-match", "\"0\"")
        .json(&json!({"quantity": 2}))
        .send()
        .await
        .unwrap();
    problem(stale, StatusCode::PRECONDITION_FAILED, "version_mismatch").await;
    for _ in 0..2 {
        let r = app
            .request(Method::PUT, "/api/v1/cart/items/G-1")
            .header("idempotency-key", "cart-once")
            .json(&json!({"quantity": 4}))
            .send()
            .await
            .unwrap();
        assert_eq!(version(r).await, v + 1);
    }
    assert_eq!(cart_events(&app, &app.user_id).await, 2);
}

#[tokio::test]
async fn the_hundred_and_first_line_is_refused_and_the_carts_replay_byte_for_byte() {
    let app = TestApp::spawn().await;
    let token = app.token.clone();
    let mut v = 0;
    for i in 0..101 {
        let sku = format!("F-{i:03}");
        post_named_item(&app, &sku, 10 + i, 1).await;
        let r = set_line(&app, &token, &sku, json!(1)).await;
        if i < 100 {
            v = version(r).await;
        } else {
            problem(r, StatusCode::CONFLICT, "cart_full").await;
        }
    }
    let full = cart(&app, &token, v).await;
    assert_eq!(full["lines"].as_array().unwrap().len(), 100);
    // A line it holds still changes.
    let v = version(set_line(&app, &token, "F-007", json!(3)).await).await;
    cart(&app, &token, v).await;
    assert_replays_byte_for_byte(
        &app,
        "carts",
        &["carts", "cart_lines"],
        "DELETE FROM commerce.cart_lines WHERE sku > 'F-050'",
        7,
    )
    .await;
}

async fn checkout(app: &TestApp, token: &str, key: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/api/v1/cart/checkout"))
        .bearer_auth(token)
        .json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

/// How many orders `customer` has placed, and how many times their cart was checked out,
/// as the store holds them.
async fn orders_and_checkouts(app: &TestApp, customer: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM commerce.events WHERE aggregate_type = 'order' \
                   AND event_type = 'OrderPlaced' AND payload::jsonb->'OrderPlaced'->>'customer_id' = $1), \
                (SELECT count(*) FROM commerce.events WHERE aggregate_type = 'cart' \
                   AND aggregate_id = $1 AND event_type = 'CheckedOut')",
    )
    .bind(customer)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn checkout_places_one_order_from_the_cart_at_its_prices_and_empties_it() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "K-1", 250, 10).await;
    post_named_item(&app, "K-2", 1000, 10).await;
    let coupon = app
        .post(
            "/api/v1/coupons",
            json!({"code": "TEN", "percent_off": 10, "max_redemptions": 5}),
        )
        .await;
    assert_eq!(coupon.status(), StatusCode::CREATED);
    let token = app.token.clone();
    version(set_line(&app, &token, "K-1", json!(2)).await).await;
    let v = version(set_line(&app, &token, "K-2", json!(1)).await).await;

    let placed = checkout(&app, &token, None, json!({"coupon_code": "TEN"})).await;
    assert_eq!(placed.status(), StatusCode::CREATED);
    let location = placed.headers()["location"].to_str().unwrap().to_owned();
    let placed: Value = placed.json().await.unwrap();
    let id = placed["id"].as_str().unwrap().to_owned();
    assert_eq!(placed, json!({"id": id, "version": 1, "status": "pending"}));
    assert_eq!(location, format!("/api/v1/orders/{id}"));

    // The cart is empty, one version on; the order follows the saga as any other.
    assert_eq!(
        cart(&app, &token, v + 1).await,
        json!({"lines": [], "total_cents": 0, "version": v + 1})
    );
    let order = chronicle_tests::eventually(
        "the order reserved",
        std::time::Duration::from_secs(20),
        || async {
            let order: Value = app
                .get(&format!("/api/v1/orders/{id}"))
                .await
                .json()
                .await
                .ok()?;
            (order["status"] == "reserved").then_some(order)
        },
    )
    .await;
    assert_eq!(
        order["lines"],
        json!([{"sku": "K-1", "quantity": 2, "unit_price_cents": 250},
               {"sku": "K-2", "quantity": 1, "unit_price_cents": 1000}])
    );
    assert_eq!(order["total_cents"], 1350, "1,500 less 10%");
    assert_eq!(orders_and_checkouts(&app, &app.user_id).await, (1, 1));
    let checked_out: Value = app.scalar("SELECT payload::jsonb FROM commerce.events WHERE aggregate_type = 'cart' AND event_type = 'CheckedOut'").await;
    assert_eq!(checked_out["CheckedOut"]["order_id"], id.as_str());
    // The business series counts it, from the log.
    business_series_reaches(&app.pool, "business_carts_checked_out", 1).await;

    // Nothing left to check out.
    problem(
        checkout(&app, &token, None, json!({})).await,
        StatusCode::CONFLICT,
        "cart_empty",
    )
    .await;
    assert_eq!(orders_and_checkouts(&app, &app.user_id).await, (1, 1));
}

#[tokio::test]
async fn a_retried_checkout_places_one_order_with_or_without_an_idempotency_key() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "R-1", 100, 10).await;
    let token = app.token.clone();
    version(set_line(&app, &token, "R-1", json!(3)).await).await;
    let first = checkout(&app, &token, Some("checkout-1"), json!({})).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    // The same request again with its key: the same order, made once.
    for _ in 0..3 {
        let again = checkout(&app, &token, Some("checkout-1"), json!({})).await;
        assert_eq!(again.status(), StatusCode::CREATED);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.unwrap(), first);
    }
    // Without a key, or with a key sent with another body: nothing is made twice.
    problem(
        checkout(&app, &token, None, json!({})).await,
        StatusCode::CONFLICT,
        "cart_empty",
    )
    .await;
    problem(
        checkout(
            &app,
            &token,
            Some("checkout-1"),
            json!({"coupon_code": "X"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(orders_and_checkouts(&app, &app.user_id).await, (1, 1));
    // If-Match names the cart version the client saw: a stale one is refused whole.
    let v = version(set_line(&app, &token, "R-1", json!(1)).await).await;
    let stale = app
        .request(Method::POST, "/api/v1/cart/checkout")
        .header("if-match", format!("\"{}\"", v - 1))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    problem(stale, StatusCode::PRECONDITION_FAILED, "version_mismatch").await;
    assert_eq!(orders_and_checkouts(&app, &app.user_id).await, (1, 1));
}

#[tokio::test]
async fn tabs_checking_out_one_cart_at_once_place_exactly_one_order_each_round() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "T-1", 100, 1_000).await;
    let token = app.token.clone();
    for round in 1..=5i64 {
        version(set_line(&app, &token, "T-1", json!(round)).await).await;
        let tabs = (0..12).map(|_| checkout(&app, &token, None, json!({})));
        let answers = futures::future::join_all(tabs).await;
        let mut placed = 0;
        for answer in answers {
            match answer.status() {
                StatusCode::CREATED => placed += 1,
                StatusCode::CONFLICT => {
                    let body: Value = answer.json().await.unwrap();
                    assert_eq!(body["code"], "cart_empty", "{body}");
                }
                other => panic!("a tab got {other}: {}", answer.text().await.unwrap()),
            }
        }
        assert_eq!(placed, 1, "round {round}");
        assert_eq!(
            orders_and_checkouts(&app, &app.user_id).await,
            (round, round)
        );
    }
}

/// The checkout's two appends are one transaction. A crash at the store's last step before
/// a commit, at its first, second or third pass, leaves either both the cart's `CheckedOut`
/// and the order's `OrderPlaced`, or neither (the cart full): never one alone. Appended in
/// two transactions, the crash at the second pass would leave an emptied cart without its
/// order.
#[tokio::test]
async fn a_crash_at_any_commit_of_a_checkout_leaves_both_halves_or_neither() {
    use chronicle_bus::{FaultAction, Faults};
    use chronicle_commands::{
        CommandContext, CommandError, CommandExecutor, EventStore, ExecutorConfig, StoredResponse,
    };
    use chronicle_commerce::{Cart, CartCommand, Order, OrderCommand, OrderLine};

    let db = chronicle_tests::TestDb::new().await;
    let pool = db.pool().await;
    let faults = Faults::default();
    let bus = CommandExecutor::with_config(
        EventStore::new(pool.clone()).with_faults(faults.clone()),
        ExecutorConfig::default(),
    );
    let count = |aggregate_type: &'static str, event_type: &'static str, id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM events WHERE aggregate_type = $1 AND event_type = $2 \
                 AND aggregate_id = $3",
            )
            .bind(aggregate_type)
            .bind(event_type)
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    for hit in 1..=3u32 {
        let (cart, order) = (format!("u-{hit}"), format!("o-{hit}"));
        let set = CartCommand::SetLine {
            sku: "A-1".into(),
            quantity: 2,
        };
        bus.execute::<Cart>(&cart, set, &(), &CommandContext::new())
            .await
            .unwrap();
        faults.arm("store.before_commit", FaultAction::CrashAtHit(hit));
        let place = OrderCommand::Place {
            order_id: order.clone(),
            customer_id: cart.clone(),
            lines: vec![OrderLine {
                sku: "A-1".into(),
                quantity: 2,
                unit_price_cents: 100,
            }],
            coupon: None,
        };
        let checked = bus
            .execute_together::<Cart, Order>(
                (
                    &cart,
                    CartCommand::CheckOut {
                        order_id: order.clone(),
                    },
                    &(),
                ),
                (&order, place, &()),
                &CommandContext::new(),
                |c| StoredResponse {
                    status: 201,
                    body: json!({"id": c.aggregate_id}),
                },
            )
            .await;
        faults.disarm("store.before_commit");
        let halves = (
            count("cart", "CheckedOut", cart.clone()).await,
            count("order", "OrderPlaced", order.clone()).await,
        );
        match checked {
            Ok(_) => assert_eq!(halves, (1, 1), "hit {hit}: committed"),
            Err(CommandError::Store(_)) => assert_eq!(halves, (0, 0), "hit {hit}: crashed"),
            Err(e) => panic!("hit {hit}: {e:?}"),
        }
        if hit == 1 {
            assert_eq!(halves, (0, 0), "the first pass is the checkout's commit");
        }
    }
    let (events_n, outbox_n): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM outbox)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(events_n, outbox_n, "every event has its outbox row");
    // An emptied cart checks out nothing more.
    let again = bus
        .execute_together::<Cart, Order>(
            (
                "u-2",
                CartCommand::CheckOut {
                    order_id: "o-9".into(),
                },
                &(),
            ),
            (
                "o-9",
                OrderCommand::Place {
                    order_id: "o-9".into(),
                    customer_id: "u-2".into(),
                    lines: vec![],
                    coupon: None,
                },
                &(),
            ),
            &CommandContext::new(),
            |_| StoredResponse {
                status: 201,
                body: json!({}),
            },
        )
        .await;
    assert!(matches!(
        again,
        Err(CommandError::Rejected(chronicle_commands::Either::First(_)))
    ));
}

/// The event stream of one scripted cart, to its checkout: the cart's events and the
/// order's first, made by one request.
#[tokio::test]
async fn the_event_stream_of_one_scripted_cart() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "S-1", 500, 10).await;
    post_named_item(&app, "S-2", 120, 10).await;
    let token = app.token.clone();
    for (sku, quantity) in [("S-1", 1), ("S-2", 4), ("S-1", 2)] {
        version(set_line(&app, &token, sku, json!(quantity)).await).await;
    }
    let removed = app.send(Method::DELETE, "/api/v1/cart/items/S-2").await;
    version(removed).await;
    version(set_line(&app, &token, "S-2", json!(1)).await).await;
    let placed: Value = checkout(&app, &token, None, json!({}))
        .await
        .json()
        .await
        .unwrap();
    let order = placed["id"].as_str().unwrap().to_owned();
    let rows: Vec<(String, i64, String, Value, Value)> = sqlx::query_as(
        "SELECT aggregate_type, sequence, event_type, payload, metadata FROM commerce.events \
         WHERE (aggregate_type = 'cart' AND aggregate_id = $1) \
            OR (aggregate_type = 'order' AND aggregate_id = $2 AND sequence = 1) \
         ORDER BY aggregate_type, sequence",
    )
    .bind(&app.user_id)
    .bind(&order)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let placed_by = &rows.iter().find(|r| r.2 == "OrderPlaced").unwrap().4["correlation_id"];
    let stream: Vec<Value> = rows
        .iter()
        .map(|(t, s, event_type, payload, metadata)| {
            json!({
                "event": format!("{t}#{s}"),
                "type": event_type,
                "payload": payload[event_type],
                "actor": metadata["actor"],
                "with_the_order": &metadata["correlation_id"] == placed_by,
            })
        })
        .collect();
    let text = serde_json::to_string(&stream)
        .unwrap()
        .replace(&order, "[order]")
        .replace(&app.user_id, "[customer]");
    let stream: Value = serde_json::from_str(&text).unwrap();
    insta::assert_json_snapshot!(stream);
}
