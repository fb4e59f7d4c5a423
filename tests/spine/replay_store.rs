//! `chronicle replay --from postgres` (issue 15): a read model rebuilt from the event store
//! instead of the stream equals the live one, and after the stream itself was lost (deleted
//! and made again by the relay) it is rebuilt whole and goes on with new events, each
//! applied once.

use std::time::Duration;

use crate::common::post_receipt;
use chronicle_tests::{eventually, indexes_of, TestApp};
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

async fn on_hand(app: &TestApp, sku: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT on_hand FROM commerce.inventory_items WHERE sku = $1")
        .bind(sku)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
}

/// Waits until the live read model has `stock` of `sku` on hand.
async fn until_on_hand(app: &TestApp, sku: &str, stock: i64) {
    eventually(
        &format!("{sku} with {stock} on hand"),
        Duration::from_secs(20),
        || async { (on_hand(app, sku).await == Some(stock)).then_some(()) },
    )
    .await;
}

async fn rows(app: &TestApp) -> Vec<String> {
    app.scalars("SELECT row_to_json(i)::text FROM commerce.inventory_items i ORDER BY sku")
        .await
}

async fn rebuild(app: &TestApp) -> chronicle_projections::ReplayStats {
    app.replay("inventory", chronicle_projections::ReplayFrom::Store, 2)
        .await
}

/// The progress of a rebuild whose every stored event is published: it counts up to the
/// total, which is the number of events the rebuild applied, and ends there.
fn assert_progress_ends_whole(reported: &[(u64, u64)], events: u64) {
    assert_eq!(
        reported.last(),
        Some(&(events, events)),
        "the last report: {reported:?}"
    );
    assert!(
        reported
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 == w[1].1)
            && reported.iter().all(|(done, total)| done <= total),
        "reports count up to one total: {reported:?}"
    );
}

#[tokio::test]
async fn a_read_model_rebuilt_from_the_event_store_equals_the_live_one() {
    let app = TestApp::spawn().await;
    item(&app, "S-1", 10).await;
    item(&app, "S-2", 3).await;
    post_receipt(&app, "S-1", 5).await;
    eventually("the live read model", Duration::from_secs(20), || async {
        (on_hand(&app, "S-1").await == Some(15) && on_hand(&app, "S-2").await == Some(3))
            .then_some(())
    })
    .await;
    // Wait until the relay has published everything (its position is the checkpoint).
    eventually("the outbox drained", Duration::from_secs(20), || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce.outbox")
            .fetch_one(&app.pool)
            .await
            .ok()?;
        (left == 0).then_some(())
    })
    .await;
    let live = rows(&app).await;
    let indexes = indexes_of(&app.pool, "commerce", &["inventory_items"]).await;
    assert_eq!(
        indexes.len(),
        3,
        "the key, by availability and by words: {indexes:?}"
    );
    sqlx::query("UPDATE commerce.inventory_items SET on_hand = 0")
        .execute(&app.pool)
        .await
        .unwrap();
    // Two events a batch: the count of the store (beside the copy) ends before the rebuild.
    let (stats, reported) = app
        .replay_reporting("inventory", chronicle_projections::ReplayFrom::Store, 2)
        .await;
    assert_eq!(stats.events, 3);
    assert_progress_ends_whole(&reported, 3);
    assert_eq!(rows(&app).await, live);
    assert_eq!(
        indexes_of(&app.pool, "commerce", &["inventory_items"]).await,
        indexes,
        "the indexes left out while filling are built again"
    );
    let stream_last: i64 = app
        .scalar("SELECT stream_seq FROM commerce.relay_position")
        .await;
    assert_eq!(
        stats.last_sequence, stream_last as u64,
        "the checkpoint is the relay's position"
    );
    // The live projector goes on from there, applying each new event once.
    post_receipt(&app, "S-2", 4).await;
    until_on_hand(&app, "S-2", 7).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(on_hand(&app, "S-2").await, Some(7));
}

#[tokio::test]
async fn after_the_stream_is_lost_the_rebuild_from_postgres_is_whole_and_goes_on_once() {
    let app = TestApp::spawn().await;
    item(&app, "L-1", 10).await;
    post_receipt(&app, "L-1", 5).await;
    until_on_hand(&app, "L-1", 15).await;
    // The log is lost.
    let js = async_nats::jetstream::new(app.nats.client().await);
    js.delete_stream("EVENTS").await.unwrap();
    // A command commits anyway; the relay makes the stream again and publishes it there.
    post_receipt(&app, "L-1", 2).await;
    eventually(
        "the event in a new stream",
        Duration::from_secs(30),
        || async {
            let info = js.get_stream("EVENTS").await.ok()?.get_info().await.ok()?;
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce.outbox")
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
    post_receipt(&app, "L-1", 1).await;
    eventually("the next receipt", Duration::from_secs(30), || async {
        (on_hand(&app, "L-1").await == Some(18)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(on_hand(&app, "L-1").await, Some(18));
    let item: Value = app.get_json("/api/v1/inventory/items/L-1").await;
    assert_eq!(item["on_hand"], 18);
}

/// Rows of the chat history's tables, as JSON text.
async fn chat_rows(app: &TestApp) -> Vec<String> {
    let mut all = Vec::new();
    for table in [
        "chat_rooms",
        "chat_members",
        "chat_messages",
        "chat_attachments",
    ] {
        let mut rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT row_to_json(t)::text FROM chat.{table} t ORDER BY 1"
        ))
        .fetch_all(&app.pool)
        .await
        .unwrap();
        all.append(&mut rows);
    }
    all
}

async fn message_count(app: &TestApp) -> i64 {
    app.scalar("SELECT count(*) FROM chat.chat_messages").await
}

/// `chat_history` reads two contexts' events (chat's rooms, files' files), each in its own
/// event store: rebuilt from both, it equals the live one, its checkpoint is the furthest of
/// the two relays' positions, and new events reach it once each.
#[tokio::test]
async fn a_read_model_of_two_contexts_rebuilt_from_both_stores_equals_the_live_one() {
    let app = TestApp::spawn().await;
    let file = crate::common::post_file(
        &app.http,
        &app.base,
        &app.token,
        b"two stores".to_vec(),
        "a.txt",
        "text/plain",
    )
    .await;
    let file_id = chronicle_tests::created_id(file).await;
    let room = app
        .post(
            "/api/v1/rooms",
            json!({"kind": "group", "name": "stores", "members": []}),
        )
        .await;
    let room = chronicle_tests::created_id(room).await;
    let send = |n: u32| {
        let (app, room, file_id) = (&app, room.clone(), file_id.clone());
        async move {
            let mut body = json!({"body": format!("m{n}"), "client_msg_id": format!("c{n}")});
            if n == 1 {
                body["file_ids"] = json!([file_id]);
            }
            let r = app
                .post(&format!("/api/v1/rooms/{room}/messages"), body)
                .await;
            assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        }
    };
    for n in 1..=3 {
        send(n).await;
    }
    eventually(
        "the live history and both outboxes drained",
        Duration::from_secs(20),
        || async {
            let left: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM chat.outbox) + (SELECT count(*) FROM files.outbox)",
            )
            .fetch_one(&app.pool)
            .await
            .ok()?;
            (message_count(&app).await == 3 && left == 0).then_some(())
        },
    )
    .await;
    let live = chat_rows(&app).await;
    assert!(
        live.iter().any(|row| row.contains(&file_id)),
        "the attachment, from files' events, is in the live model"
    );
    sqlx::query("UPDATE chat.chat_messages SET body = 'damaged'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (stats, reported) = app
        .replay_reporting("chat_history", chronicle_projections::ReplayFrom::Store, 2)
        .await;
    // The two stores' counts add up to the events applied.
    assert_progress_ends_whole(&reported, stats.events);
    assert_eq!(chat_rows(&app).await, live);
    let furthest: i64 = sqlx::query_scalar(
        "SELECT max(stream_seq) FROM (SELECT stream_seq FROM chat.relay_position \
         UNION ALL SELECT stream_seq FROM files.relay_position) p",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stats.last_sequence, furthest as u64);
    send(4).await;
    eventually("the next message", Duration::from_secs(20), || async {
        (message_count(&app).await == 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(message_count(&app).await, 4);
}

/// Events from before the stores numbered them (migration 0016 leaves them without a
/// `position`) are read first, by commit time, then the numbered ones in the order they were
/// written, and a store's backlog many times the reader's chunks and the rebuild's batches
/// comes whole: the item's stock is right only if every event of it came, in order (the
/// read model skips an event older than the row).
#[tokio::test]
async fn events_from_before_positions_come_first_and_a_long_backlog_comes_whole_in_order() {
    const EVENTS: i64 = 1_500;
    let app = TestApp::spawn().await;
    item(&app, "P-1", 7).await;
    item(&app, "P-2", 0).await;
    until_on_hand(&app, "P-2", 0).await;
    // Receipts written straight into the store, as a commit writes them, in turns.
    sqlx::query(
        "INSERT INTO commerce.events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'inventory_item', sku, seq, 'StockReceived', '1', '{\"StockReceived\": {\"quantity\": 1}}', \
                json_build_object('event_id', gen_random_uuid(), 'correlation_id', gen_random_uuid(), \
                  'recorded_at', to_char((now() + seq * interval '1 millisecond') AT TIME ZONE 'UTC', \
                                         'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')) \
         FROM generate_series(2, $1::bigint + 1) AS seq, unnest(ARRAY['P-1', 'P-2']) AS sku \
         ORDER BY seq, sku",
    )
    .bind(EVENTS)
    .execute(&app.pool)
    .await
    .unwrap();
    // The first 600 of each item as a store from before positions holds them.
    sqlx::query("UPDATE commerce.events SET position = NULL WHERE sequence <= 600")
        .execute(&app.pool)
        .await
        .unwrap();
    let unnumbered: i64 = app
        .scalar("SELECT count(*) FROM commerce.events WHERE position IS NULL")
        .await;
    assert!(
        unnumbered >= 1_198,
        "{unnumbered} events without a position"
    );
    let stats = rebuild(&app).await;
    assert!(stats.events >= 2 * EVENTS as u64, "{stats:?}");
    assert_eq!(on_hand(&app, "P-1").await, Some(7 + EVENTS));
    assert_eq!(on_hand(&app, "P-2").await, Some(EVENTS));
    let version: i64 = app
        .scalar("SELECT version FROM commerce.inventory_items WHERE sku = 'P-2'")
        .await;
    assert_eq!(version, EVENTS + 1);
}

/// A stored event the rebuild cannot read (metadata without its fields, a payload number
/// past what JSON numbers hold here) does not stop it: it is left out and parked, with
/// why, and the events around it are applied.
#[tokio::test]
async fn a_stored_event_that_cannot_be_read_is_parked_and_the_rebuild_goes_on() {
    let app = TestApp::spawn().await;
    item(&app, "B-1", 1).await;
    until_on_hand(&app, "B-1", 1).await;
    sqlx::query(
        "INSERT INTO commerce.events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) VALUES \
         ('inventory_item', 'B-1', 2, 'StockReceived', '1', '{\"StockReceived\": {\"quantity\": 1}}', '{\"nope\": 1}'), \
         ('inventory_item', 'B-1', 3, 'StockReceived', '1', '{\"StockReceived\": {\"quantity\": 1e400}}', \
          json_build_object('event_id', gen_random_uuid(), 'correlation_id', gen_random_uuid(), 'recorded_at', '2026-12-07T10:00:00Z')), \
         ('inventory_item', 'B-1', 4, 'StockReceived', '1', '{\"StockReceived\": {\"quantity\": 5}}', \
          json_build_object('event_id', gen_random_uuid(), 'correlation_id', gen_random_uuid(), 'recorded_at', '2026-12-07T10:00:01Z'))",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    rebuild(&app).await;
    assert_eq!(
        on_hand(&app, "B-1").await,
        Some(6),
        "the readable receipt applied"
    );
    // Parked at -1, -2 in the order the rebuild met them: a store knows no stream sequence.
    let parked: Vec<String> = app
        .scalars(
            "SELECT stream_seq || ' ' || error FROM commerce.parked_events \
             WHERE subscriber = 'inventory' ORDER BY stream_seq DESC",
        )
        .await;
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert!(
        parked[0].starts_with("-1 cannot read the event's metadata"),
        "{parked:?}"
    );
    assert!(
        parked[1].starts_with("-2 cannot read the event's payload"),
        "{parked:?}"
    );
}
