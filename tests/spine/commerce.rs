//! Commerce through HTTP on real servers (the API contract Commerce, issue 5): the order lifecycle,
//! the saga's reservations under races and crashes, coupons, payments and the payment
//! deadline.

use std::{collections::BTreeMap, time::Duration};

use chronicle_bus::FaultAction;
use chronicle_sagas::OrderSagaConfig;
use chronicle_tests::{eventually, TestApp, TestOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{invalid_fields, post_named_item, problem};

const SETTLE: Duration = Duration::from_secs(20);

/// Places an order with the default user's token: its id.
async fn place(app: &TestApp, body: Value) -> String {
    place_as(app, &app.token, body).await
}

async fn place_as(app: &TestApp, token: &str, body: Value) -> String {
    let r = app.post_as(token, "/api/v1/orders", &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let placed: Value = r.json().await.unwrap();
    assert_eq!(placed["status"], "pending");
    assert_eq!(placed["version"], 1);
    let id = placed["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/orders/{id}"));
    id
}

/// The order once the saga has decided it (no longer `pending`).
async fn settled(app: &TestApp, id: &str) -> Value {
    settled_as(app, &app.token, id).await
}

async fn settled_as(app: &TestApp, token: &str, id: &str) -> Value {
    eventually(&format!("order {id} to settle"), SETTLE, || async {
        let r = app
            .http
            .get(app.url(&format!("/api/v1/orders/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .ok()?;
        let order: Value = r.json().await.ok()?;
        (order["status"].is_string() && order["status"] != "pending").then_some(order)
    })
    .await
}

async fn order_with_status(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(&format!("order {id} to be {status}"), SETTLE, || async {
        let order: Value = app
            .get(&format!("/api/v1/orders/{id}"))
            .await
            .json()
            .await
            .ok()?;
        (order["status"] == status).then_some(order)
    })
    .await
}

/// The item once its read model shows `reserved` units held.
async fn item_with_reserved(app: &TestApp, sku: &str, reserved: i64) -> Value {
    eventually(&format!("{sku} to hold {reserved}"), SETTLE, || async {
        let item: Value = app
            .get(&format!("/api/v1/inventory/items/{sku}"))
            .await
            .json()
            .await
            .ok()?;
        (item["reserved"] == reserved).then_some(item)
    })
    .await
}

/// Every event of one aggregate: `(event_type, payload, metadata)`.
async fn events_of(app: &TestApp, aggregate_type: &str, id: &str) -> Vec<(String, Value, Value)> {
    sqlx::query_as::<_, (String, Value, Value)>(
        "SELECT event_type, payload, metadata FROM commerce.events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// The types of an order's events, in order.
async fn order_event_types(app: &TestApp, id: &str) -> Vec<String> {
    events_of(app, "order", id)
        .await
        .into_iter()
        .map(|(event_type, _, _)| event_type)
        .collect()
}

async fn command(app: &TestApp, id: &str, action: &str, body: Option<Value>) -> reqwest::Response {
    let request = app.request(Method::POST, &format!("/api/v1/orders/{id}/{action}"));
    match body {
        Some(body) => request.json(&body),
        None => request,
    }
    .send()
    .await
    .unwrap()
}

#[tokio::test]
async fn an_order_goes_pending_reserved_paid_shipped_and_stock_follows() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "A", 1250, 10).await;
    post_named_item(&app, "B", 300, 5).await;
    let id = place(
        &app,
        json!({"lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}]}),
    )
    .await;

    let order = settled(&app, &id).await;
    assert_eq!(order["status"], "reserved");
    assert_eq!(order["customer_id"], app.user_id.as_str());
    assert_eq!(
        order["lines"],
        json!([{"sku": "A", "quantity": 2, "unit_price_cents": 1250}, {"sku": "B", "quantity": 1, "unit_price_cents": 300}])
    );
    assert_eq!(order["total_cents"], 2800);
    let a = item_with_reserved(&app, "A", 2).await;
    assert_eq!(
        (a["on_hand"].as_i64(), a["available"].as_i64()),
        (Some(10), Some(8))
    );

    problem(
        command(&app, &id, "ship", None).await,
        StatusCode::CONFLICT,
        "invalid_state",
    )
    .await;
    let wrong = problem(
        command(&app, &id, "pay", Some(json!({"amount_cents": 2799}))).await,
        StatusCode::CONFLICT,
        "wrong_amount",
    )
    .await;
    assert!(wrong["detail"].as_str().unwrap().contains("2800"));

    // Payment requested (version 3), then charged (version 4).
    let paid = command(&app, &id, "pay", Some(json!({"amount_cents": 2800}))).await;
    assert_eq!(paid.status(), StatusCode::OK);
    assert_eq!(paid.headers()["etag"], "\"4\"");
    let paid: Value = paid.json().await.unwrap();
    assert_eq!(paid, json!({"id": id, "version": 4, "status": "paid"}));
    // Paying again charges nothing and records nothing: the same answer.
    let again = command(&app, &id, "pay", Some(json!({"amount_cents": 2800}))).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap(), paid);
    assert_eq!(events_of(&app, "order", &id).await.len(), 4);

    let shipped = command(&app, &id, "ship", None).await;
    assert_eq!(shipped.status(), StatusCode::OK);
    // Shipping commits the reservations: the units leave the warehouse.
    let a = item_with_reserved(&app, "A", 0).await;
    assert_eq!(a["on_hand"], 8);
    let b = eventually("B shipped", SETTLE, || async {
        let b: Value = app
            .get("/api/v1/inventory/items/B")
            .await
            .json()
            .await
            .ok()?;
        (b["on_hand"] == 4).then_some(b)
    })
    .await;
    assert_eq!(b["reserved"], 0);
    problem(
        command(&app, &id, "cancel", None).await,
        StatusCode::CONFLICT,
        "invalid_state",
    )
    .await;

    let order: Value = app
        .get_json(&format!("/api/v1/orders/{id}?min_version=5"))
        .await;
    let history: Vec<&str> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert!(h["at"].as_str().unwrap().ends_with('Z'));
            h["status"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        history,
        ["pending", "reserved", "paying", "paid", "shipped"]
    );

    let mine: Value = app.get("/api/v1/orders").await.json().await.unwrap();
    assert_eq!(mine["items"][0]["id"], id.as_str());
    let none: Value = app.get_json("/api/v1/orders?status=pending").await;
    assert_eq!(none["items"], json!([]));
    assert_eq!(
        invalid_fields(app.get("/api/v1/orders?status=lost").await).await,
        ["status"]
    );
}

#[tokio::test]
async fn an_order_the_stock_cannot_cover_is_rejected_and_holds_nothing() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "A", 100, 10).await;
    post_named_item(&app, "B", 100, 1).await;
    // Line A can be reserved, line B cannot: A's reservation must be given back.
    let id = place(
        &app,
        json!({"lines": [{"sku": "A", "quantity": 3}, {"sku": "B", "quantity": 2}]}),
    )
    .await;
    let order = settled(&app, &id).await;
    assert_eq!(order["status"], "rejected");
    assert_eq!(order["reason"], "insufficient_stock");
    let a_events: Vec<String> = events_of(&app, "inventory_item", "A")
        .await
        .into_iter()
        .map(|(t, _, _)| t)
        .collect();
    assert_eq!(
        a_events,
        ["ItemCreated", "StockReserved", "ReservationReleased"]
    );
    assert_eq!(events_of(&app, "inventory_item", "B").await.len(), 1);
    let a = item_with_reserved(&app, "A", 0).await;
    assert_eq!(a["available"], 10);
    // A rejected order is final.
    problem(
        command(&app, &id, "cancel", None).await,
        StatusCode::CONFLICT,
        "invalid_state",
    )
    .await;
}

#[tokio::test]
async fn cancelling_releases_the_reservations_and_only_the_customer_may_act() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "A", 100, 10).await;
    let id = place(&app, json!({"lines": [{"sku": "A", "quantity": 4}]})).await;
    assert_eq!(settled(&app, &id).await["status"], "reserved");
    item_with_reserved(&app, "A", 4).await;

    let (_, mallory) = app.register_and_login("mallory").await;
    let before = app.event_count().await;
    for (method, action, body) in [
        (Method::GET, "", None),
        (Method::POST, "/pay", Some(json!({"amount_cents": 400}))),
        (Method::POST, "/cancel", None),
        (Method::POST, "/ship", None),
    ] {
        let mut r = app
            .http
            .request(method, app.url(&format!("/api/v1/orders/{id}{action}")))
            .bearer_auth(&mallory);
        if let Some(body) = body {
            r = r.json(&body);
        }
        problem(r.send().await.unwrap(), StatusCode::FORBIDDEN, "forbidden").await;
    }
    let theirs: Value = app
        .get_as(&mallory, "/api/v1/orders")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["items"], json!([]));
    assert_eq!(app.event_count().await, before, "refusals append nothing");

    let cancelled = command(&app, &id, "cancel", None).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(
        cancelled.json::<Value>().await.unwrap()["status"],
        "cancelled"
    );
    let a = item_with_reserved(&app, "A", 0).await;
    assert_eq!(a["available"], 10);
    let order = order_with_status(&app, &id, "cancelled").await;
    assert_eq!(order["reason"], "cancelled_by_customer");
    problem(
        command(&app, &id, "pay", Some(json!({"amount_cents": 400}))).await,
        StatusCode::CONFLICT,
        "invalid_state",
    )
    .await;
}

#[tokio::test]
async fn bad_orders_are_refused_with_the_field_and_append_nothing() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "A", 100, 10).await;
    let before = app.event_count().await;
    assert_eq!(
        invalid_fields(app.post("/api/v1/orders", json!({"lines": []})).await).await,
        ["lines"]
    );
    assert_eq!(
        invalid_fields(
            app.post(
                "/api/v1/orders",
                json!({"lines": [{"sku": "a.b", "quantity": 1}, {"sku": "A", "quantity": 0}]})
            )
            .await
        )
        .await,
        ["lines[0].sku", "lines[1].quantity"]
    );
    assert_eq!(
        invalid_fields(
            app.post(
                "/api/v1/orders",
                json!({"lines": [{"sku": "NOPE", "quantity": 1}]})
            )
            .await
        )
        .await,
        ["lines"]
    );
    assert_eq!(
        invalid_fields(
            app.post(
                "/api/v1/orders",
                json!({"lines": [{"sku": "A", "quantity": 1}], "coupon_code": "NOPE"})
            )
            .await
        )
        .await,
        ["coupon_code"]
    );
    problem(
        app.get("/api/v1/orders/not-a-uuid").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    problem(
        app.get(&format!("/api/v1/orders/{}", uuid::Uuid::now_v7()))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    problem(
        command(&app, &uuid::Uuid::now_v7().to_string(), "cancel", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(app.event_count().await, before);

    // The same SKU on two lines is one line.
    let id = place(
        &app,
        json!({"lines": [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 2}]}),
    )
    .await;
    let order = settled(&app, &id).await;
    assert_eq!(
        order["lines"],
        json!([{"sku": "A", "quantity": 3, "unit_price_cents": 100}])
    );
}

#[tokio::test]
async fn fifty_orders_racing_for_five_units_reserve_exactly_five() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "LAST", 100, 5).await;
    let ids: Vec<String> = futures::future::join_all(
        (0..50).map(|_| place(&app, json!({"lines": [{"sku": "LAST", "quantity": 1}]}))),
    )
    .await;
    let mut outcomes = BTreeMap::new();
    for id in &ids {
        let order = settled(&app, id).await;
        *outcomes
            .entry(order["status"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
        if order["status"] == "rejected" {
            assert_eq!(order["reason"], "insufficient_stock");
        }
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([("rejected".into(), 45), ("reserved".into(), 5)])
    );
    let item = item_with_reserved(&app, "LAST", 5).await;
    assert_eq!(item["available"], 0);

    // Never negative at any point: replay the item's events.
    let mut available: i64 = 0;
    for (event_type, payload, _) in events_of(&app, "inventory_item", "LAST").await {
        // postgres-es stores the event externally tagged: `{"StockReserved": {...}}`.
        let payload = &payload[&event_type];
        match event_type.as_str() {
            "ItemCreated" => available = payload["initial_stock"].as_i64().unwrap(),
            "StockReserved" => available -= payload["quantity"].as_i64().unwrap(),
            "ReservationReleased" => available += payload["quantity"].as_i64().unwrap(),
            other => panic!("unexpected {other}"),
        }
        assert!(available >= 0, "available went to {available}");
    }
    assert_eq!(available, 0);
}

/// The saga handles its batches in lanes (one per order, item or coupon) side by side:
/// orders for eight items at once, four for each item's two units, reserve exactly two per
/// item, and orders spanning two items link their lanes without losing or doubling a unit.
#[tokio::test]
async fn orders_for_many_items_at_once_each_reserve_exactly_what_their_item_holds() {
    let app = TestApp::spawn().await;
    let skus: Vec<String> = (0..8).map(|i| format!("MANY-{i}")).collect();
    for sku in &skus {
        post_named_item(&app, sku, 100, 2).await;
    }
    // Four one-line orders per item, and one order for two units of two neighbours each.
    let mut bodies: Vec<Value> = (0..32)
        .map(|k| json!({"lines": [{"sku": skus[k % 8], "quantity": 1}]}))
        .collect();
    bodies.extend((0..8).step_by(2).map(|i| {
        json!({"lines": [{"sku": skus[i], "quantity": 1}, {"sku": skus[i + 1], "quantity": 1}]})
    }));
    let ids: Vec<String> =
        futures::future::join_all(bodies.into_iter().map(|body| place(&app, body))).await;
    let mut reserved_units = BTreeMap::<String, i64>::new();
    for id in &ids {
        let order = settled(&app, id).await;
        match order["status"].as_str().unwrap() {
            "reserved" => {
                for line in order["lines"].as_array().unwrap() {
                    *reserved_units
                        .entry(line["sku"].as_str().unwrap().to_owned())
                        .or_default() += line["quantity"].as_i64().unwrap();
                }
            }
            "rejected" => assert_eq!(order["reason"], "insufficient_stock", "{order}"),
            other => panic!("order {id} settled as {other}"),
        }
    }
    for sku in &skus {
        assert_eq!(
            reserved_units.get(sku),
            Some(&2),
            "{sku}: {reserved_units:?}"
        );
        let item = item_with_reserved(&app, sku, 2).await;
        assert_eq!(item["available"], 0, "{item}");
    }
}

#[tokio::test]
async fn a_coupon_with_three_redemptions_discounts_exactly_three_of_twenty_orders() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "A", 1000, 100).await;
    let created = app
        .post(
            "/api/v1/coupons",
            json!({"code": "THREE", "percent_off": 25, "max_redemptions": 3}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    problem(
        app.post(
            "/api/v1/coupons",
            json!({"code": "THREE", "percent_off": 10, "max_redemptions": 1}),
        )
        .await,
        StatusCode::CONFLICT,
        "coupon_exists",
    )
    .await;
    assert_eq!(
        invalid_fields(
            app.post(
                "/api/v1/coupons",
                json!({"code": "X", "percent_off": 0, "max_redemptions": 0})
            )
            .await
        )
        .await,
        ["percent_off", "max_redemptions"]
    );

    let body = json!({"lines": [{"sku": "A", "quantity": 1}], "coupon_code": "THREE"});
    let answers =
        futures::future::join_all((0..20).map(|_| app.post("/api/v1/orders", body.clone()))).await;
    let mut discounted = 0;
    let mut refused_at_once = 0;
    for answer in answers {
        if answer.status() == StatusCode::CONFLICT {
            // The gateway already knew the coupon was used up.
            problem(answer, StatusCode::CONFLICT, "coupon_exhausted").await;
            refused_at_once += 1;
            continue;
        }
        let id = chronicle_tests::created_id(answer).await;
        let order = settled(&app, &id).await;
        match order["status"].as_str().unwrap() {
            "reserved" => {
                assert_eq!(order["discount_cents"], 250);
                assert_eq!(order["total_cents"], 750);
                discounted += 1;
            }
            "rejected" => assert_eq!(order["reason"], "coupon_exhausted"),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(discounted, 3, "{refused_at_once} were refused at placement");
    let coupon: Value = app.get("/api/v1/coupons/THREE").await.json().await.unwrap();
    assert_eq!(coupon["redemptions"], 3);
    assert_eq!(coupon["max_redemptions"], 3);
    // The rejected orders hold no stock.
    item_with_reserved(&app, "A", 3).await;
}

#[tokio::test]
async fn a_rejected_or_cancelled_order_gives_its_coupon_redemption_back() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "A", 1000, 100).await;
    post_named_item(&app, "SCARCE", 1000, 0).await;
    app.post(
        "/api/v1/coupons",
        json!({"code": "ONE", "percent_off": 10, "max_redemptions": 1}),
    )
    .await;
    let rejected = place(
        &app,
        json!({"lines": [{"sku": "SCARCE", "quantity": 1}], "coupon_code": "ONE"}),
    )
    .await;
    assert_eq!(settled(&app, &rejected).await["status"], "rejected");
    let kept = place(
        &app,
        json!({"lines": [{"sku": "A", "quantity": 1}], "coupon_code": "ONE"}),
    )
    .await;
    assert_eq!(settled(&app, &kept).await["status"], "reserved");
    assert_eq!(
        command(&app, &kept, "cancel", None).await.status(),
        StatusCode::OK
    );
    let coupon = eventually("the redemption back", SETTLE, || async {
        let c: Value = app.get("/api/v1/coupons/ONE").await.json().await.ok()?;
        (c["redemptions"] == 0).then_some(c)
    })
    .await;
    assert_eq!(
        coupon["version"], 5,
        "created, redeemed, released, redeemed, released"
    );
}

#[tokio::test]
async fn a_saga_crash_between_two_lines_settles_the_order_exactly_once_after_restart() {
    let mut app = TestApp::spawn().await;
    post_named_item(&app, "A", 100, 10).await;
    post_named_item(&app, "B", 100, 10).await;
    app.saga_faults
        .arm("saga.between_lines", FaultAction::Crash);
    let id = place(
        &app,
        json!({"lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 3}]}),
    )
    .await;
    assert!(stopped_at_fault(app.saga_stopped().await));
    // It died holding line A only, the order still pending.
    assert_eq!(
        events_of(&app, "inventory_item", "A")
            .await
            .last()
            .unwrap()
            .0,
        "StockReserved"
    );
    assert_eq!(events_of(&app, "inventory_item", "B").await.len(), 1);
    assert_eq!(events_of(&app, "order", &id).await.len(), 1);

    app.start_saga();
    assert_eq!(settled(&app, &id).await["status"], "reserved");
    for (sku, quantity) in [("A", 2), ("B", 3)] {
        let types: Vec<String> = events_of(&app, "inventory_item", sku)
            .await
            .into_iter()
            .map(|(t, _, _)| t)
            .collect();
        assert_eq!(
            types,
            ["ItemCreated", "StockReserved"],
            "{sku} reserved once"
        );
        item_with_reserved(&app, sku, quantity).await;
    }
    let order_events: Vec<String> = events_of(&app, "order", &id)
        .await
        .into_iter()
        .map(|(t, _, _)| t)
        .collect();
    assert_eq!(order_events, ["OrderPlaced", "OrderReserved"]);
}

#[tokio::test]
async fn a_saga_crash_before_the_ack_redelivers_and_changes_nothing_twice() {
    let mut app = TestApp::spawn().await;
    post_named_item(&app, "A", 100, 10).await;
    app.saga_faults.arm("saga.after_commit", FaultAction::Crash);
    let id = place(&app, json!({"lines": [{"sku": "A", "quantity": 2}]})).await;
    assert!(stopped_at_fault(app.saga_stopped().await));
    assert_eq!(events_of(&app, "order", &id).await.len(), 2);
    app.start_saga();
    // The saga handles events one at a time, in order: once a second order is settled, the
    // redelivered OrderPlaced and the OrderReserved before it have been handled.
    let second = place(&app, json!({"lines": [{"sku": "A", "quantity": 1}]})).await;
    settled(&app, &second).await;
    let types: Vec<String> = events_of(&app, "inventory_item", "A")
        .await
        .into_iter()
        .map(|(t, _, _)| t)
        .collect();
    assert_eq!(types, ["ItemCreated", "StockReserved", "StockReserved"]);
    assert_eq!(events_of(&app, "order", &id).await.len(), 2);
}

#[tokio::test]
async fn the_saga_links_every_event_it_causes_to_the_order() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "A", 100, 10).await;
    let id = place(&app, json!({"lines": [{"sku": "A", "quantity": 1}]})).await;
    settled(&app, &id).await;
    let order = events_of(&app, "order", &id).await;
    let placed = &order[0].2;
    let reserved_stock = events_of(&app, "inventory_item", "A").await.pop().unwrap();
    for caused in [&reserved_stock.2, &order[1].2] {
        assert_eq!(caused["correlation_id"], placed["correlation_id"]);
        assert_eq!(caused["causation_id"], placed["event_id"]);
        assert_eq!(caused["actor"], "saga:orders");
    }
    assert_eq!(placed["actor"], app.user_id.as_str());
}

#[tokio::test]
async fn payments_that_are_declined_or_time_out_leave_the_order_reserved() {
    let app = TestApp::spawn_options(TestOptions {
        payments: chronicle::PaymentRules {
            decline_above_cents: Some(5_000),
            hang_above_cents: Some(50_000),
            timeout: Duration::from_millis(300),
        },
        ..TestOptions::default()
    })
    .await;
    post_named_item(&app, "A", 10_000, 10).await;
    post_named_item(&app, "B", 100_000, 10).await;
    let declined = place(&app, json!({"lines": [{"sku": "A", "quantity": 1}]})).await;
    settled(&app, &declined).await;
    problem(
        command(
            &app,
            &declined,
            "pay",
            Some(json!({"amount_cents": 10_000})),
        )
        .await,
        StatusCode::CONFLICT,
        "payment_declined",
    )
    .await;
    let hangs = place(&app, json!({"lines": [{"sku": "B", "quantity": 1}]})).await;
    settled(&app, &hangs).await;
    problem(
        command(&app, &hangs, "pay", Some(json!({"amount_cents": 100_000}))).await,
        StatusCode::GATEWAY_TIMEOUT,
        "payment_timeout",
    )
    .await;
    for id in [&declined, &hangs] {
        let types = order_event_types(&app, id).await;
        assert_eq!(
            types,
            [
                "OrderPlaced",
                "OrderReserved",
                "PaymentRequested",
                "PaymentFailed"
            ],
            "the attempt and its failure are recorded, no payment"
        );
        assert_eq!(
            order_with_status(&app, id, "reserved").await["status"],
            "reserved"
        );
        assert_eq!(held_for(&app, id).await, (0, 0), "no money taken");
    }
}

#[tokio::test]
async fn an_unpaid_order_is_cancelled_at_its_deadline_and_a_paid_one_is_not() {
    let app = TestApp::spawn_options(TestOptions {
        saga: OrderSagaConfig {
            ack_wait: Duration::from_secs(2),
            ..OrderSagaConfig::with_payment_timeout(Duration::from_secs(3))
        },
        ..TestOptions::default()
    })
    .await;
    post_named_item(&app, "A", 100, 10).await;
    let unpaid = place(&app, json!({"lines": [{"sku": "A", "quantity": 2}]})).await;
    let paid = place(&app, json!({"lines": [{"sku": "A", "quantity": 1}]})).await;
    settled(&app, &paid).await;
    assert_eq!(
        command(&app, &paid, "pay", Some(json!({"amount_cents": 100})))
            .await
            .status(),
        StatusCode::OK
    );
    let order = order_with_status(&app, &unpaid, "cancelled").await;
    assert_eq!(order["reason"], "payment_timeout");
    // The unpaid order's two units are back; the paid order's one stays reserved.
    item_with_reserved(&app, "A", 1).await;
    let (event_type, _, metadata) = events_of(&app, "order", &unpaid).await.pop().unwrap();
    assert_eq!(
        (event_type.as_str(), &metadata["actor"]),
        ("OrderCancelled", &json!("system:orders")),
        "cancelled by the deadline's job, run as its owner"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still: Value = app.get_json(&format!("/api/v1/orders/{paid}")).await;
    assert_eq!(still["status"], "paid");
    // The deadlines are scheduler jobs: the unpaid order's ran once and succeeded (then went
    // with the order's cancellation); the paid order's was deleted when it was paid.
    let deadline = |order: &str| {
        let job = chronicle_sagas::deadline_job(order);
        let pool = app.pool.clone();
        async move {
            for _ in 0..100 {
                let row: Option<(String, i64, i64)> = sqlx::query_as(
                    "SELECT j.status, \
                       (SELECT count(*) FROM scheduler.scheduler_runs r WHERE r.job_id = j.job_id), \
                       (SELECT count(*) FROM scheduler.scheduler_runs r WHERE r.job_id = j.job_id AND outcome = 'succeeded') \
                     FROM scheduler.scheduler_jobs j WHERE job_id = $1",
                )
                .bind(&job)
                .fetch_optional(&pool)
                .await
                .unwrap();
                if let Some(row) = row.filter(|(status, ..)| status == "deleted") {
                    return row;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the deadline job of {job} never settled");
        }
    };
    assert_eq!(deadline(&unpaid).await, ("deleted".to_owned(), 1, 1));
    assert_eq!(deadline(&paid).await, ("deleted".to_owned(), 0, 0));
}

#[tokio::test]
async fn an_idempotency_key_places_one_order_however_often_it_is_sent() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "A", 100, 10).await;
    let send = || {
        app.request(Method::POST, "/api/v1/orders")
            .header("idempotency-key", "order-once")
            .json(&json!({"lines": [{"sku": "A", "quantity": 1}]}))
            .send()
    };
    let answers = futures::future::join_all((0..5).map(|_| send())).await;
    let mut ids = Vec::new();
    for answer in answers {
        let answer = answer.unwrap();
        ids.push(chronicle_tests::created_id(answer).await);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer names the same order");
    let count: i64 = app
        .scalar("SELECT count(*) FROM commerce.events WHERE event_type = 'OrderPlaced'")
        .await;
    assert_eq!(count, 1);
}

#[tokio::test]
async fn the_event_stream_of_one_scripted_order() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "A", 1250, 10).await;
    post_named_item(&app, "B", 300, 5).await;
    app.post(
        "/api/v1/coupons",
        json!({"code": "SAVE10", "percent_off": 10, "max_redemptions": 5}),
    )
    .await;
    let id = place(
        &app,
        json!({"lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}], "coupon_code": "SAVE10"}),
    )
    .await;
    let order = settled(&app, &id).await;
    let total = order["total_cents"].clone();
    assert_eq!(
        command(&app, &id, "pay", Some(json!({"amount_cents": total})))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        command(&app, &id, "ship", None).await.status(),
        StatusCode::OK
    );
    eventually("B shipped", SETTLE, || async {
        let b: Value = app
            .get("/api/v1/inventory/items/B")
            .await
            .json()
            .await
            .ok()?;
        (b["on_hand"] == 4).then_some(())
    })
    .await;
    eventually("A shipped", SETTLE, || async {
        let a: Value = app
            .get("/api/v1/inventory/items/A")
            .await
            .json()
            .await
            .ok()?;
        (a["on_hand"] == 8).then_some(())
    })
    .await;

    // Every event of the scenario, with causation shown as the label of the causing event.
    let rows: Vec<(String, String, i64, String, Value, Value)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, payload, metadata FROM commerce.events \
         WHERE aggregate_type IN ('order', 'inventory_item', 'coupon') \
         ORDER BY aggregate_type, aggregate_id, sequence",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let label = |t: &str, a: &str, s: i64| format!("{t}/{a}#{s}");
    let labels: BTreeMap<String, String> = rows
        .iter()
        .map(|(t, a, s, _, _, m)| (m["event_id"].as_str().unwrap().to_owned(), label(t, a, *s)))
        .collect();
    let placed_correlation =
        &rows.iter().find(|r| r.3 == "OrderPlaced").unwrap().5["correlation_id"];
    let stream: Vec<Value> = rows
        .iter()
        .map(|(t, a, s, event_type, payload, metadata)| {
            json!({
                "event": label(t, a, *s),
                "type": event_type,
                "payload": payload[event_type],
                "actor": metadata["actor"],
                "caused_by": metadata["causation_id"].as_str().map(|c| labels.get(c).cloned().unwrap_or_else(|| "a request".into())),
                "in_order_correlation": &metadata["correlation_id"] == placed_correlation,
            })
        })
        .collect();
    let payment_id = order_with_status(&app, &id, "shipped").await["payment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = serde_json::to_string(&stream)
        .unwrap()
        .replace(&id, "[order]")
        .replace(&app.user_id, "[customer]")
        .replace(&payment_id, "[payment]");
    let stream: Value = serde_json::from_str(&text).unwrap();
    insta::assert_json_snapshot!(stream);
}

#[tokio::test]
async fn replaying_the_orders_read_model_gives_the_same_rows_byte_for_byte() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "A", 700, 3).await;
    let shipped = place(&app, json!({"lines": [{"sku": "A", "quantity": 1}]})).await;
    let cancelled = place(&app, json!({"lines": [{"sku": "A", "quantity": 1}]})).await;
    let rejected = place(&app, json!({"lines": [{"sku": "A", "quantity": 5}]})).await;
    settled(&app, &shipped).await;
    settled(&app, &cancelled).await;
    command(&app, &shipped, "pay", Some(json!({"amount_cents": 700}))).await;
    command(&app, &shipped, "ship", None).await;
    command(&app, &cancelled, "cancel", None).await;
    for (id, status) in [
        (&shipped, "shipped"),
        (&cancelled, "cancelled"),
        (&rejected, "rejected"),
    ] {
        order_with_status(&app, id, status).await;
    }
    let rows = || async {
        app.scalars::<String>("SELECT row_to_json(o)::text FROM commerce.orders o ORDER BY id")
            .await
    };
    let live = rows().await;
    assert_eq!(live.len(), 3);
    sqlx::query("UPDATE commerce.orders SET status = 'damaged'")
        .execute(&app.pool)
        .await
        .unwrap();
    let stats = app
        .replay("orders", chronicle_projections::ReplayFrom::Log, 2)
        .await;
    // Placed, reserved, paying, paid, shipped; placed, reserved, cancelled; placed, rejected.
    assert_eq!(stats.events, 5 + 3 + 2);
    assert_eq!(rows().await, live);
}

/// `(money the provider holds, money the order events say is held)` over every order:
/// charged minus refunded on each side.
async fn money(app: &TestApp) -> (i64, i64) {
    let ledger: i64 = app.scalar("SELECT coalesce(sum(charged_cents - refunded_cents), 0)::bigint FROM commerce.simulated_payments").await;
    let recorded: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(CASE event_type \
           WHEN 'OrderPaid' THEN (payload->'OrderPaid'->>'amount_cents')::bigint \
           WHEN 'LatePaymentCharged' THEN (payload->'LatePaymentCharged'->>'amount_cents')::bigint \
           WHEN 'PaymentRefunded' THEN -(payload->'PaymentRefunded'->>'amount_cents')::bigint \
           ELSE 0 END), 0)::bigint \
         FROM commerce.events WHERE aggregate_type = 'order'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    (ledger, recorded)
}

/// The money of one order at the provider: `(charged, refunded)`.
async fn held_for(app: &TestApp, order_id: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT charged_cents, refunded_cents FROM commerce.simulated_payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&app.pool)
    .await
    .unwrap()
    .unwrap_or((0, 0))
}

/// Issue 10: the charge happened inside the command, so a payment racing a cancel from
/// another process could take money that no event recorded. Here the customer pays (the
/// gateway's process) while the payment deadline cancels (the saga, on a bus of its own),
/// over many orders spread across the deadline: whatever wins, the money the provider holds
/// is exactly what the events say, every paid order holds its total and every cancelled
/// one holds nothing.
#[tokio::test]
async fn paying_while_the_deadline_cancels_from_another_process_never_loses_track_of_money() {
    let app = TestApp::spawn_options(TestOptions {
        saga: OrderSagaConfig {
            ack_wait: Duration::from_secs(2),
            ..OrderSagaConfig::with_payment_timeout(Duration::from_millis(300))
        },
        saga_in_its_own_process: true,
        ..Default::default()
    })
    .await;
    post_named_item(&app, "M", 1250, 1_000).await;
    let mut orders = Vec::new();
    for i in 0..30u64 {
        let id = place(&app, json!({"lines": [{"sku": "M", "quantity": 1}]})).await;
        // Paid from well before the deadline to well after it.
        tokio::time::sleep(Duration::from_millis(i * 15)).await;
        let paid = app
            .post(
                &format!("/api/v1/orders/{id}/pay"),
                json!({"amount_cents": 1250}),
            )
            .await;
        assert!(
            [StatusCode::OK, StatusCode::CONFLICT].contains(&paid.status()),
            "{}",
            paid.status()
        );
        orders.push(id);
    }
    let mut outcomes = std::collections::BTreeMap::new();
    for id in &orders {
        let status = eventually("the order to settle", Duration::from_secs(20), || async {
            let order: Value = app
                .get(&format!("/api/v1/orders/{id}"))
                .await
                .json()
                .await
                .ok()?;
            let status = order["status"].as_str()?.to_owned();
            let (charged, refunded) = held_for(&app, id).await;
            let settled = match status.as_str() {
                "paid" => charged - refunded == 1250,
                "cancelled" => charged == refunded,
                _ => false,
            };
            settled.then_some(status)
        })
        .await;
        *outcomes.entry(status).or_insert(0) += 1;
    }
    eventually(
        "the events to record every move of money",
        Duration::from_secs(20),
        || async {
            let (ledger, recorded) = money(&app).await;
            (ledger == recorded).then_some(())
        },
    )
    .await;
    let (ledger, _) = money(&app).await;
    assert_eq!(ledger, 1250 * outcomes.get("paid").copied().unwrap_or(0));
    assert!(
        outcomes.contains_key("paid") && outcomes.contains_key("cancelled"),
        "{outcomes:?}"
    );
}

/// A gateway that died between the charge and its record left the provider holding money
/// for an order no event calls paid: when the deadline cancels the order, the saga records
/// the charge and refunds it.
#[tokio::test]
async fn a_charge_no_event_recorded_is_found_and_refunded_when_the_order_is_cancelled() {
    let app = TestApp::spawn_options(TestOptions {
        saga: OrderSagaConfig {
            ack_wait: Duration::from_secs(2),
            ..OrderSagaConfig::with_payment_timeout(Duration::from_millis(500))
        },
        ..Default::default()
    })
    .await;
    post_named_item(&app, "M", 1250, 5).await;
    let id = place(&app, json!({"lines": [{"sku": "M", "quantity": 1}]})).await;
    // The charge, as the dead gateway made it, straight at the provider.
    let provider = chronicle::SimulatedPayments::new(
        app.databases()
            .of(chronicle_commands::contexts::COMMERCE)
            .clone(),
        Default::default(),
    );
    chronicle_commerce::PaymentProvider::charge(&provider, &id, 1250)
        .await
        .unwrap();
    eventually(
        "the charge to be refunded and recorded",
        Duration::from_secs(20),
        || async {
            let (charged, refunded) = held_for(&app, &id).await;
            let (ledger, recorded) = money(&app).await;
            (charged == 1250 && refunded == 1250 && ledger == 0 && recorded == 0).then_some(())
        },
    )
    .await;
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM commerce.events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        types,
        [
            "OrderPlaced",
            "OrderReserved",
            "OrderCancelled",
            "LatePaymentCharged",
            "PaymentRefunded"
        ]
    );
}

#[tokio::test]
async fn cancelling_a_paid_order_refunds_it() {
    let app = TestApp::spawn().await;
    post_named_item(&app, "M", 1250, 5).await;
    let id = place(&app, json!({"lines": [{"sku": "M", "quantity": 2}]})).await;
    assert_eq!(settled(&app, &id).await["status"], "reserved");
    let paid = app
        .post(
            &format!("/api/v1/orders/{id}/pay"),
            json!({"amount_cents": 2500}),
        )
        .await;
    assert_eq!(paid.status(), StatusCode::OK);
    assert_eq!(held_for(&app, &id).await, (2500, 0));
    let cancelled = app
        .post(&format!("/api/v1/orders/{id}/cancel"), json!({}))
        .await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    eventually("the refund", Duration::from_secs(20), || async {
        let (ledger, recorded) = money(&app).await;
        (held_for(&app, &id).await == (2500, 2500) && ledger == 0 && recorded == 0).then_some(())
    })
    .await;
}

/// Whether the saga ended at an armed fault point (as a crash would end it).
fn stopped_at_fault(ended: anyhow::Result<()>) -> bool {
    ended.is_err_and(|e| {
        matches!(
            e.downcast_ref::<chronicle_bus::SubscriberError>(),
            Some(chronicle_bus::SubscriberError::Fault(_))
        )
    })
}

/// Payment deadlines from before the scheduler (rows the saga polled for itself) become
/// scheduler jobs when the saga starts, once each, and then run like any deadline.
#[tokio::test]
async fn deadlines_the_saga_kept_before_the_scheduler_become_jobs_when_it_starts() {
    let mut app = TestApp::spawn().await;
    let order = uuid::Uuid::now_v7().to_string();
    let due = chrono::Utc::now() - chrono::Duration::seconds(1);
    sqlx::query(
        "INSERT INTO commerce.saga_order_deadlines (order_id, due_at, correlation_id, causation_id) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&order)
    .bind(due)
    .bind(uuid::Uuid::now_v7())
    .bind(uuid::Uuid::now_v7())
    .execute(&app.pool)
    .await
    .unwrap();
    app.start_saga();
    let job = chronicle_sagas::deadline_job(&order);
    let (outcome, due_at): (String, chrono::DateTime<chrono::Utc>) = eventually(
        "the adopted deadline's run",
        Duration::from_secs(15),
        || async {
            sqlx::query_as("SELECT outcome, due_at FROM scheduler.scheduler_runs WHERE job_id = $1")
                .bind(&job)
                .fetch_optional(&app.pool)
                .await
                .unwrap()
                .filter(|(outcome, _): &(String, _)| outcome != "running")
        },
    )
    .await;
    // No such order: the deadline finds nothing to cancel, which is not a failure.
    assert_eq!(outcome, "succeeded");
    assert_eq!(due_at.timestamp_micros(), due.timestamp_micros());
    let left: i64 = app
        .scalar("SELECT count(*) FROM commerce.saga_order_deadlines")
        .await;
    assert_eq!(left, 0, "adopted once, then gone");
}

/// A client that goes away while its payment is being charged (a browser reloaded, a phone
/// that lost its signal) does not leave the order `paying` for ever: the request runs to its
/// end without it, here to a charge that times out, and the order can be paid again.
#[tokio::test]
async fn a_client_gone_mid_payment_never_leaves_the_order_paying() {
    let app = TestApp::spawn_options(TestOptions {
        payments: chronicle::PaymentRules {
            hang_above_cents: Some(50_000),
            timeout: Duration::from_millis(1_500),
            ..chronicle::PaymentRules::default()
        },
        ..TestOptions::default()
    })
    .await;
    post_named_item(&app, "B", 100_000, 10).await;
    let id = place(&app, json!({"lines": [{"sku": "B", "quantity": 1}]})).await;
    settled(&app, &id).await;
    let pay = command(&app, &id, "pay", Some(json!({"amount_cents": 100_000})));
    let gone = tokio::time::timeout(Duration::from_millis(400), pay).await;
    assert!(
        gone.is_err(),
        "the client gave up before the charge answered"
    );
    let types = chronicle_tests::eventually(
        "the payment to end without its client",
        Duration::from_secs(10),
        || async {
            let types = order_event_types(&app, &id).await;
            (types.last().map(String::as_str) == Some("PaymentFailed")).then_some(types)
        },
    )
    .await;
    assert_eq!(
        types,
        [
            "OrderPlaced",
            "OrderReserved",
            "PaymentRequested",
            "PaymentFailed"
        ]
    );
    let order: Value = app
        .get_json(&format!("/api/v1/orders/{id}?min_version=4"))
        .await;
    assert_eq!(order["status"], "reserved", "{order}");
}
