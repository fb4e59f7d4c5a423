//! Catalog edits through HTTP on real servers (the API contract, "Catalog edits and the cart"; ADR
//! 0015): staff rename, reprice, describe and discontinue items; the catalog is searched by
//! the words of the name and the description; a placed order keeps its price; a
//! discontinued item stays readable, cannot be ordered, and its reservations are honoured.

use std::time::Duration;

use chronicle_tests::{eventually, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{assert_replays_byte_for_byte, invalid_fields, problem};

const SETTLE: Duration = Duration::from_secs(20);

async fn patch(app: &TestApp, sku: &str, body: Value) -> reqwest::Response {
    app.request(Method::PATCH, &format!("/api/v1/inventory/items/{sku}"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn discontinue(app: &TestApp, sku: &str) -> reqwest::Response {
    app.request(
        Method::POST,
        &format!("/api/v1/inventory/items/{sku}/discontinue"),
    )
    .send()
    .await
    .unwrap()
}

/// The item once the read model reflects `version`.
async fn item_at(app: &TestApp, sku: &str, version: u64) -> Value {
    let r = app
        .get(&format!(
            "/api/v1/inventory/items/{sku}?min_version={version}"
        ))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// The SKUs of every page of `query` (`/api/v1/inventory/items?...`), followed by
/// `next_cursor` as a client would, one item a page.
async fn catalog(app: &TestApp, token: &str, query: &str) -> Vec<String> {
    let mut skus = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("/api/v1/inventory/items?limit=1&{query}");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let r = app.get_as(token, &url).await;
        assert_eq!(r.status(), StatusCode::OK, "{url}");
        let page: Value = r.json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            skus.push(item["sku"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return skus,
        }
        assert!(skus.len() < 100, "paging does not end: {skus:?}");
    }
}

async fn events_of(app: &TestApp, sku: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM commerce.events \
         WHERE aggregate_type = 'inventory_item' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(sku)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

async fn order(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(&format!("order {id} {status}"), SETTLE, || async {
        let order: Value = app.get_json(&format!("/api/v1/orders/{id}")).await;
        (order["status"] == status).then_some(order)
    })
    .await
}

async fn place(app: &TestApp, sku: &str, quantity: u64) -> reqwest::Response {
    app.post(
        "/api/v1/orders",
        json!({"lines": [{"sku": sku, "quantity": quantity}]}),
    )
    .await
}

#[tokio::test]
async fn staff_rename_reprice_and_describe_an_item_and_a_placed_order_keeps_its_price() {
    let app = TestApp::spawn().await;
    app.create_item("K-1", "Kettle", 1000, 10).await;
    let placed: Value = place(&app, "K-1", 2).await.json().await.unwrap();
    let before = placed["id"].as_str().unwrap().to_owned();
    order(&app, &before, "reserved").await;

    let changed = patch(
        &app,
        "K-1",
        json!({"name": "Copper kettle", "price_cents": 1500, "description": "Boils 1.5 l"}),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::OK);
    let changed: Value = changed.json().await.unwrap();
    let version = changed["version"].as_u64().unwrap();
    let item = item_at(&app, "K-1", version).await;
    assert_eq!(
        (
            &item["name"],
            &item["price_cents"],
            &item["description"],
            &item["discontinued"]
        ),
        (
            &json!("Copper kettle"),
            &json!(1500),
            &json!("Boils 1.5 l"),
            &json!(false)
        )
    );
    // Asking for what is already so changes nothing: no event, the same version.
    let again: Value = patch(&app, "K-1", json!({"price_cents": 1500}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["version"].as_u64(), Some(version));

    // The order placed before keeps its price; one placed now pays the new one.
    let kept = order(&app, &before, "reserved").await;
    assert_eq!(kept["lines"][0]["unit_price_cents"], 1000);
    assert_eq!(kept["total_cents"], 2000);
    let after: Value = place(&app, "K-1", 2).await.json().await.unwrap();
    let after = order(&app, after["id"].as_str().unwrap(), "reserved").await;
    assert_eq!(after["lines"][0]["unit_price_cents"], 1500);
    assert_eq!(after["total_cents"], 3000);
    assert_eq!(
        events_of(&app, "K-1").await,
        [
            "ItemCreated",
            "StockReserved",
            "ItemRenamed",
            "ItemRepriced",
            "ItemDescribed",
            "StockReserved"
        ]
    );
}

#[tokio::test]
async fn a_discontinued_item_stays_readable_leaves_the_catalog_and_cannot_be_ordered_but_its_reservation_ships(
) {
    let app = TestApp::spawn_with_staff(&["tester"]).await;
    app.create_item("D-1", "Old lamp", 700, 5).await;
    app.create_item("D-2", "New lamp", 900, 5).await;
    let placed: Value = place(&app, "D-1", 2).await.json().await.unwrap();
    let id = placed["id"].as_str().unwrap().to_owned();
    order(&app, &id, "reserved").await;

    let withdrawn = discontinue(&app, "D-1").await;
    assert_eq!(withdrawn.status(), StatusCode::OK);
    let version = withdrawn.json::<Value>().await.unwrap()["version"]
        .as_u64()
        .unwrap();
    problem(
        discontinue(&app, "D-1").await,
        StatusCode::CONFLICT,
        "item_discontinued",
    )
    .await;
    let item = item_at(&app, "D-1", version).await;
    assert_eq!(item["discontinued"], true);
    assert_eq!(item["name"], "Old lamp");

    // Left out of the catalog, unless staff ask; a customer may not ask.
    assert_eq!(catalog(&app, &app.token, "").await, ["D-2"]);
    assert_eq!(
        catalog(&app, &app.token, "discontinued=true").await,
        ["D-1", "D-2"]
    );
    let (_, customer) = app.register_and_login("carla").await;
    assert_eq!(catalog(&app, &customer, "").await, ["D-2"]);
    let asked = app
        .get_as(&customer, "/api/v1/inventory/items?discontinued=true")
        .await;
    problem(asked, StatusCode::FORBIDDEN, "forbidden").await;

    // Not ordered again, and the refusal appends nothing.
    let before = events_of(&app, "D-1").await;
    let refused = problem(
        place(&app, "D-1", 1).await,
        StatusCode::CONFLICT,
        "item_discontinued",
    )
    .await;
    assert!(refused["detail"].as_str().unwrap().contains("D-1"));
    assert_eq!(events_of(&app, "D-1").await, before);

    // The reservation made before is honoured: paid, shipped, the units leave.
    let pay = app
        .post(
            &format!("/api/v1/orders/{id}/pay"),
            json!({"amount_cents": 1400}),
        )
        .await;
    assert_eq!(pay.status(), StatusCode::OK);
    let ship = app
        .send(Method::POST, &format!("/api/v1/orders/{id}/ship"))
        .await;
    assert_eq!(ship.status(), StatusCode::OK);
    eventually("the shipped units to leave", SETTLE, || async {
        let item: Value = app.get_json("/api/v1/inventory/items/D-1").await;
        (item["on_hand"] == 3 && item["reserved"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_catalog_is_searched_by_the_words_of_the_name_and_the_description() {
    let app = TestApp::spawn().await;
    app.create_item("S-1", "Red kettle", 100, 1).await;
    app.create_item("S-2", "Blue teapot", 100, 1).await;
    app.create_item("S-3", "Green mug", 100, 1).await;
    let described: Value = patch(&app, "S-2", json!({"description": "Pairs with any kettle"}))
        .await
        .json()
        .await
        .unwrap();
    item_at(&app, "S-2", described["version"].as_u64().unwrap()).await;

    assert_eq!(catalog(&app, &app.token, "q=kettle").await, ["S-1", "S-2"]);
    assert_eq!(catalog(&app, &app.token, "q=kettles").await, ["S-1", "S-2"]);
    assert_eq!(catalog(&app, &app.token, "q=teapot").await, ["S-2"]);
    assert_eq!(catalog(&app, &app.token, "q=kettle%20-red").await, ["S-2"]);
    assert!(catalog(&app, &app.token, "q=saucer").await.is_empty());
    assert_eq!(
        catalog(&app, &app.token, "q=%20").await,
        ["S-1", "S-2", "S-3"]
    );
    let nul = app.get("/api/v1/inventory/items?q=tea%00pot").await;
    assert_eq!(invalid_fields(nul).await, ["q"]);
}

#[tokio::test]
async fn bad_edits_are_refused_with_the_field_and_append_nothing() {
    let app = TestApp::spawn().await;
    app.create_item("B-1", "Plate", 100, 1).await;
    for (body, field) in [
        (json!({"price_cents": -1}), "price_cents"),
        (json!({"price_cents": 1_000_000_000_001_i64}), "price_cents"),
        (json!({"name": ""}), "name"),
        (json!({"name": "nul\u{0}"}), "name"),
        (json!({"name": "x".repeat(201)}), "name"),
        (json!({"description": "x".repeat(2_001)}), "description"),
        (json!({"description": "bell\u{7}"}), "description"),
        (json!({}), "body"),
    ] {
        assert_eq!(
            invalid_fields(patch(&app, "B-1", body.clone()).await).await,
            [field],
            "{body}"
        );
    }
    for body in [
        json!({"name": "Dish", "colour": "red"}),
        json!({"price_cents": 1e300}),
        json!({"price_cents": "12"}),
    ] {
        problem(
            patch(&app, "B-1", body).await,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        )
        .await;
    }
    problem(
        patch(&app, "NOPE", json!({"name": "Dish"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    problem(
        discontinue(&app, "NOPE").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(events_of(&app, "B-1").await, ["ItemCreated"]);
    // A stale If-Match is refused too, before anything is appended.
    let stale = app
        .request(Method::PATCH, "/api/v1/inventory/items/B-1")
        .header("if-match", "\"7\"")
        .json(&json!({"name": "Dish"}))
        .send()
        .await
        .unwrap();
    problem(stale, StatusCode::PRECONDITION_FAILED, "version_mismatch").await;
    assert_eq!(events_of(&app, "B-1").await, ["ItemCreated"]);
}

#[tokio::test]
async fn replaying_the_inventory_after_edits_gives_the_same_rows_byte_for_byte() {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        app.create_item(&format!("R-{i}"), &format!("Item {i}"), 100 + i, 3)
            .await;
    }
    patch(
        &app,
        "R-1",
        json!({"name": "Renamed", "description": "With words"}),
    )
    .await;
    patch(&app, "R-2", json!({"price_cents": 999})).await;
    let last = discontinue(&app, "R-3")
        .await
        .json::<Value>()
        .await
        .unwrap();
    item_at(&app, "R-3", last["version"].as_u64().unwrap()).await;
    assert_replays_byte_for_byte(
        &app,
        "inventory",
        &["inventory_items"],
        "UPDATE commerce.inventory_items SET description = 'damaged', discontinued = NOT discontinued",
        2,
    )
    .await;
}

/// A read model whose table its projector has not made yet (a gateway of a new deployment
/// that starts first) answers 503 `unavailable`, as a server coming back does, never 500.
#[tokio::test]
async fn a_read_model_not_made_yet_is_unavailable_not_an_error() {
    let app = TestApp::spawn().await;
    app.create_item("U-1", "Umbrella", 100, 1).await;
    sqlx::query("DROP TABLE commerce.inventory_items")
        .execute(&app.pool)
        .await
        .unwrap();
    for path in [
        "/api/v1/inventory/items/U-1",
        "/api/v1/inventory/items/U-1?min_version=1",
        "/api/v1/inventory/items",
    ] {
        problem(
            app.get(path).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        )
        .await;
    }
}

/// The read model of a database from before catalog edits gains its new columns at the next
/// start, its rows read as undescribed and on sale, and the search finds them.
#[tokio::test]
async fn an_inventory_table_from_before_the_edits_gains_their_columns_at_start() {
    let app = TestApp::spawn().await;
    let commerce = app.databases().of("commerce");
    sqlx::raw_sql(
        "DROP TABLE inventory_items;
         CREATE TABLE inventory_items (
             sku text PRIMARY KEY, name text NOT NULL, price_cents bigint NOT NULL,
             on_hand bigint NOT NULL, reserved bigint NOT NULL,
             available bigint GENERATED ALWAYS AS (on_hand - reserved) STORED,
             version bigint NOT NULL, created_at timestamptz NOT NULL,
             updated_at timestamptz NOT NULL);
         INSERT INTO inventory_items VALUES ('OLD-1', 'Old widget', 10, 1, 0, DEFAULT, 1, now(), now());",
    )
    .execute(commerce)
    .await
    .unwrap();
    for _ in 0..2 {
        chronicle::contexts::read_model("inventory")
            .unwrap()
            .setup(app.databases())
            .await
            .unwrap();
    }
    let item: Value = app.get_json("/api/v1/inventory/items/OLD-1").await;
    assert_eq!(
        (&item["description"], &item["discontinued"]),
        (&json!(""), &json!(false))
    );
    assert_eq!(catalog(&app, &app.token, "q=widgets").await, ["OLD-1"]);
}
