//! `chronicle replay --from postgres` (issue 15): a read model rebuilt from the event store
//! instead of the stream equals the live one, and after the stream itself was lost (deleted
//! and made again by the relay) it is rebuilt whole and goes on with new events, each
//! applied once.

use std::time::Duration;

use chronicle_tests::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn item(app: &TestApp, sku: &str, stock: u64) {
    let r = app
        .post(
            "/api/v1/inventory/items",
            json!({"sku": sku, "name": "Thing", "price_cents": 100, "initial_stock": stock}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

async fn receive(app: &TestApp, sku: &str, quantity: u64) {
    let r = app
        .post(
            &format!("/api/v1/inventory/items/{sku}/receive"),
            json!({"quantity": quantity}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
}

async fn on_hand(app: &TestApp, sku: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT on_hand FROM commerce.inventory_items WHERE sku = $1")
        .bind(sku)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
}

async fn rows(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT row_to_json(i)::text FROM commerce.inventory_items i ORDER BY sku")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn rebuild(app: &TestApp) -> chronicle_projections::ReplayStats {
    let client = app.nats.client().await;
    chronicle_projections::replay_named_from_store(
        "inventory",
        app.databases(),
        &client,
        2,
        |_, _| {},
    )
    .await
    .expect("a known projection")
    .expect("the rebuild")
}

#[tokio::test]
async fn a_read_model_rebuilt_from_the_event_store_equals_the_live_one() {
    let app = TestApp::spawn().await;
    item(&app, "S-1", 10).await;
    item(&app, "S-2", 3).await;
    receive(&app, "S-1", 5).await;
    eventually("the live read model", Duration::from_secs(20), || async {
        (on_hand(&app, "S-1").await == Some(15) && on_hand(&app, "S-2").await == Some(3))
            .then_some(())
    })
    .await;
    // Wait until the relay has published everything (its position is the checkpoint).
    eventually("the outbox drained", Duration::from_secs(20), || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&app.pool)
            .await
            .ok()?;
        (left == 0).then_some(())
    })
    .await;
    let live = rows(&app).await;
    sqlx::query("UPDATE commerce.inventory_items SET on_hand = 0")
        .execute(&app.pool)
        .await
        .unwrap();
    let stats = rebuild(&app).await;
    assert_eq!(rows(&app).await, live);
    let stream_last: i64 = sqlx::query_scalar("SELECT stream_seq FROM relay_position")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        stats.last_sequence, stream_last as u64,
        "the checkpoint is the relay's position"
    );
    // The live projector goes on from there, applying each new event once.
    receive(&app, "S-2", 4).await;
    eventually("the next receipt", Duration::from_secs(20), || async {
        (on_hand(&app, "S-2").await == Some(7)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(on_hand(&app, "S-2").await, Some(7));
}

#[tokio::test]
async fn after_the_stream_is_lost_the_rebuild_from_postgres_is_whole_and_goes_on_once() {
    let app = TestApp::spawn().await;
    item(&app, "L-1", 10).await;
    receive(&app, "L-1", 5).await;
    eventually("the live read model", Duration::from_secs(20), || async {
        (on_hand(&app, "L-1").await == Some(15)).then_some(())
    })
    .await;
    // The log is lost.
    let js = async_nats::jetstream::new(app.nats.client().await);
    js.delete_stream("EVENTS").await.unwrap();
    // A command commits anyway; the relay makes the stream again and publishes it there.
    receive(&app, "L-1", 2).await;
    eventually(
        "the event in a new stream",
        Duration::from_secs(30),
        || async {
            let info = js.get_stream("EVENTS").await.ok()?.get_info().await.ok()?;
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&app.pool)
                .await
                .ok()?;
            (info.state.messages >= 1 && left == 0).then_some(())
        },
    )
    .await;
    let stats = rebuild(&app).await;
    assert_eq!(
        on_hand(&app, "L-1").await,
        Some(17),
        "every event, from the store"
    );
    assert_eq!(stats.last_sequence, 1, "the new stream's position");
    // New events reach the read model once each.
    receive(&app, "L-1", 1).await;
    eventually("the next receipt", Duration::from_secs(30), || async {
        (on_hand(&app, "L-1").await == Some(18)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(on_hand(&app, "L-1").await, Some(18));
    let item: Value = app
        .get("/api/v1/inventory/items/L-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(item["on_hand"], 18);
}
