//! Abandoned carts (the API contract, "Catalog edits and the cart"; issue 31): a cart that held lines
//! untouched for `CHRONICLE_CART_ABANDONED_AFTER` is counted abandoned once per idle spell
//! (`CartAbandoned`, the series `business_carts_abandoned`), by any number of sweeps, and
//! never while someone is using it.

use std::time::Duration;

use chronicle_commands::{contexts::COMMERCE, CommandContext};
use chronicle_commerce::{Cart, CartCommand};
use chronicle_sagas::{CartSweeper, CartSweeperConfig};
use chronicle_tests::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{assert_replays_byte_for_byte, business_series_reaches, count_reaches};

/// How many `CartAbandoned` events the cart of `cart` has.
async fn abandoned(app: &TestApp, cart: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM commerce.events \
         WHERE aggregate_type = 'cart' AND event_type = 'CartAbandoned' AND aggregate_id = $1",
    )
    .bind(cart)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn set_line(app: &TestApp, token: &str, sku: &str, quantity: u64) -> u64 {
    let r = app
        .send_json_as(
            token,
            reqwest::Method::PUT,
            &format!("/api/v1/cart/items/{sku}"),
            &json!({"quantity": quantity}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["version"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_cart_left_untouched_is_counted_abandoned_once_per_idle_spell() {
    // The system's own sweeper, with a second of idleness for a day's.
    let app = TestApp::spawn_with(|config| {
        config
            .contexts
            .set(CartSweeperConfig::abandoned_after(Duration::from_secs(1)));
    })
    .await;
    app.create_item("AB-1", "Kettle", 2_500, 10).await;
    let idle = app.token.clone();
    let (busy_id, busy) = app.register_and_login("busy").await;
    let (_, emptied) = app.register_and_login("emptied").await;
    let v = set_line(&app, &idle, "AB-1", 2).await;
    set_line(&app, &emptied, "AB-1", 1).await;
    let r = app
        .send_as(&emptied, reqwest::Method::DELETE, "/api/v1/cart")
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // The idle cart is counted while the busy one is touched every 200 ms.
    let user = app.user_id.clone();
    let mut quantity = 1;
    eventually("the idle cart abandoned", Duration::from_secs(20), || {
        quantity += 1;
        let (app, busy, user) = (&app, busy.clone(), user.clone());
        async move {
            set_line(app, &busy, "AB-1", quantity).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            (abandoned(app, &user).await == 1).then_some(())
        }
    })
    .await;
    // Sweeps go on: still once, and never the busy cart (still in use) or the empty one.
    for _ in 0..8 {
        quantity += 1;
        set_line(&app, &busy, "AB-1", quantity).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(abandoned(&app, &user).await, 1);
    assert_eq!(abandoned(&app, &busy_id).await, 0);
    // The busy customer is done: an empty cart is never abandoned.
    let r = app
        .send_as(&busy, reqwest::Method::DELETE, "/api/v1/cart")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM commerce.events WHERE event_type = 'CartAbandoned' AND aggregate_id <> $1",
    )
    .bind(&user)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(others, 0, "an emptied cart is never abandoned");

    // The customer finds their cart as they left it, one version on.
    let cart: Value = app
        .get_json(&format!("/api/v1/cart?min_version={}", v + 1))
        .await;
    assert_eq!(cart["version"], v + 1);
    assert_eq!(cart["lines"][0]["quantity"], 2);
    assert_eq!(cart["total_cents"], 5_000);
    business_series_reaches(&app.pool, "business_carts_abandoned", 1).await;

    // Touched again, then left again: a second idle spell, counted once more.
    set_line(&app, &idle, "AB-1", 3).await;
    eventually(
        "the cart abandoned again",
        Duration::from_secs(20),
        || async { (abandoned(&app, &user).await == 2).then_some(()) },
    )
    .await;
    business_series_reaches(&app.pool, "business_carts_abandoned", 2).await;
    let event: Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM commerce.events WHERE event_type = 'CartAbandoned' \
         AND aggregate_id = $1 ORDER BY sequence DESC LIMIT 1",
    )
    .bind(&user)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(event, json!({"CartAbandoned": {"lines": 1}}));
    let all: i64 = app
        .scalar("SELECT count(*) FROM commerce.events WHERE event_type = 'CartAbandoned'")
        .await;
    assert_eq!(all, 2, "only the idle cart's two spells");
}

#[tokio::test]
async fn two_sweeps_at_once_count_a_thousand_idle_carts_once_and_skip_the_ones_touched_since() {
    // The system's own sweeper waits a day; the test's sweepers wait for nothing.
    let app = TestApp::spawn().await;
    let commands = app.db.executor().await;
    let ctx = CommandContext::new();
    // More carts than a sweep reads at once (500), set through the write side.
    let carts: Vec<String> = (0..1_000).map(|i| format!("idle-{i:04}")).collect();
    for chunk in carts.chunks(100) {
        let sets = chunk.iter().map(|cart| {
            commands.execute::<Cart>(
                cart,
                CartCommand::SetLine {
                    sku: "IDLE-1".into(),
                    quantity: 1,
                },
                &(),
                &ctx,
            )
        });
        for set in futures::future::join_all(sets).await {
            set.unwrap();
        }
    }
    count_reaches(
        &app.pool,
        "every cart in the read model",
        "SELECT count(*) FROM commerce.carts WHERE cart_id LIKE 'idle-%'",
        1_000,
    )
    .await;
    // Ten carts touched since the read model saw them (as a projector lagging behind
    // would show them: at the version before).
    let touched = &carts[..10];
    for cart in touched {
        commands
            .execute::<Cart>(
                cart,
                CartCommand::SetLine {
                    sku: "IDLE-1".into(),
                    quantity: 2,
                },
                &(),
                &ctx,
            )
            .await
            .unwrap();
    }
    count_reaches(
        &app.pool,
        "the touches projected",
        "SELECT count(*) FROM commerce.carts WHERE cart_id LIKE 'idle-%' AND version = 2",
        10,
    )
    .await;
    sqlx::query("UPDATE commerce.carts SET version = 1 WHERE cart_id = ANY($1)")
        .bind(touched)
        .execute(&app.pool)
        .await
        .unwrap();

    let sweeper = || {
        CartSweeper::new(
            app.databases().of(COMMERCE).clone(),
            commands.clone(),
            CartSweeperConfig::abandoned_after(Duration::ZERO),
        )
    };
    let (a, b) = (sweeper(), sweeper());
    let (a, b) = tokio::join!(a.sweep(), b.sweep());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.abandoned.len() + b.abandoned.len(),
        990,
        "each idle cart counted by one sweep or the other"
    );
    let counted: i64 = app
        .scalar("SELECT count(*) FROM commerce.events WHERE event_type = 'CartAbandoned'")
        .await;
    assert_eq!(counted, 990);
    for cart in touched {
        assert_eq!(abandoned(&app, cart).await, 0, "{cart} was touched since");
    }
    // Another sweep at once, before the read model shows what the first did: nothing more.
    let again = sweeper().sweep().await.unwrap();
    assert_eq!(again.abandoned, Vec::<String>::new());
    // The projector catches up with the touches.
    sqlx::query("UPDATE commerce.carts SET version = 2 WHERE cart_id = ANY($1)")
        .bind(touched)
        .execute(&app.pool)
        .await
        .unwrap();
    business_series_reaches(&app.pool, "business_carts_abandoned", 990).await;
    count_reaches(
        &app.pool,
        "the read model waits for the touched carts only",
        "SELECT count(*) FROM commerce.carts WHERE cart_id LIKE 'idle-%' AND waiting",
        10,
    )
    .await;
    // The next sweep counts the ten, idle since their touch.
    let last = sweeper().sweep().await.unwrap();
    assert_eq!(last.abandoned.len(), 10);
    business_series_reaches(&app.pool, "business_carts_abandoned", 1_000).await;
    // The carts read model has the ten abandonments too before it is compared with its
    // rebuild (the series above is another projector's).
    count_reaches(
        &app.pool,
        "the read model to show the ten abandoned",
        "SELECT count(*) FROM commerce.carts WHERE cart_id LIKE 'idle-%' AND waiting",
        0,
    )
    .await;
    assert_replays_byte_for_byte(
        &app,
        "carts",
        &["carts", "cart_lines"],
        "UPDATE commerce.carts SET waiting = true",
        97,
    )
    .await;
}
