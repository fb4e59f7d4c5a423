//! Invariants 1 and 3: atomic append and optimistic concurrency, plus If-Match and
//! idempotency keys on the write path.

use chronicle_commands::{
    CommandContext, CommandError, Executed, IdempotencyKey, RetryPolicy, StoredResponse,
};
use chronicle_commerce::{InventoryCommand, InventoryError, InventoryItem};
use chronicle_tests::TestDb;

use crate::common::{bus, count, create_item, inventory, receipt, receive, reservation};

#[tokio::test]
async fn a_command_commits_its_events_and_their_outbox_rows_together() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus(&pool);
    assert_eq!(create_item(&bus, "SKU-1", 5).await, 1);
    receive(&bus, "SKU-1", 3).await;

    assert_eq!(count(&pool, "events").await, 2);
    let outbox: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT subject, message_id, aggregate_sequence FROM outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        outbox,
        vec![
            (
                "events.commerce.inventory_item.SKU-1".into(),
                "inventory_item:SKU-1:1".into(),
                1
            ),
            (
                "events.commerce.inventory_item.SKU-1".into(),
                "inventory_item:SKU-1:2".into(),
                2
            ),
        ]
    );
    let loaded = bus
        .store_for::<InventoryItem>()
        .load::<InventoryItem>("SKU-1")
        .await
        .unwrap();
    assert_eq!((loaded.version, loaded.state.on_hand()), (2, 8));
}

#[tokio::test]
async fn when_the_outbox_write_fails_the_events_are_not_committed_either() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    // Inject a failure inside the append transaction, after the events insert.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
           BEGIN RAISE EXCEPTION 'outbox unavailable'; END $$; \
         CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let bus = bus(&pool);
    let result = bus
        .execute::<InventoryItem>(
            "SKU-1",
            InventoryCommand::Create {
                sku: "SKU-1".into(),
                name: "Widget".into(),
                price_cents: 1,
                initial_stock: 1,
            },
            &(),
            &CommandContext::new(),
        )
        .await;
    assert!(matches!(result, Err(CommandError::Store(_))), "{result:?}");
    assert_eq!(count(&pool, "events").await, 0);
    assert_eq!(count(&pool, "outbox").await, 0);
}

#[tokio::test]
async fn a_rejected_command_appends_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus(&pool);
    create_item(&bus, "SKU-1", 1).await;
    let result = inventory(&bus, "SKU-1", reservation("o1", 2), &CommandContext::new()).await;
    assert!(matches!(
        result,
        Err(CommandError::Rejected(InventoryError::InsufficientStock {
            available: 1,
            requested: 2
        }))
    ));
    assert_eq!(count(&pool, "events").await, 1);
    assert_eq!(count(&pool, "outbox").await, 1);
}

#[tokio::test]
async fn fifty_concurrent_reserves_of_the_last_ten_units_give_exactly_ten_successes() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus(&pool);
    create_item(&bus, "LAST", 10).await;
    let attempts = (0..50).map(|i| {
        let bus = bus.clone();
        tokio::spawn(async move {
            inventory(
                &bus,
                "LAST",
                reservation(format!("order-{i}"), 1),
                &CommandContext::new(),
            )
            .await
        })
    });
    let results = futures::future::join_all(attempts).await;
    let ok = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let refused = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Ok(Err(CommandError::Rejected(
                    InventoryError::InsufficientStock { .. }
                )))
            )
        })
        .count();
    assert_eq!((ok, refused), (10, 40));
    let item = bus
        .store_for::<InventoryItem>()
        .load::<InventoryItem>("LAST")
        .await
        .unwrap();
    assert_eq!((item.state.available(), item.state.reserved()), (0, 10));
}

#[tokio::test]
async fn writers_in_separate_processes_race_through_the_primary_key_and_retry() {
    let db = TestDb::new().await;
    // Two buses with their own pools share no in-process queue: like two gateway processes.
    let (pool_a, pool_b) = (db.pool().await, db.pool().await);
    let (a, b) = (bus(&pool_a), bus(&pool_b));
    create_item(&a, "HOT", 0).await;
    let tasks = (0..40).map(|i| {
        let bus = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(
            async move { inventory(&bus, "HOT", receipt(1), &CommandContext::new()).await },
        )
    });
    for result in futures::future::join_all(tasks).await {
        result.unwrap().expect("every receive lands after retries");
    }
    let item = a
        .store_for::<InventoryItem>()
        .load::<InventoryItem>("HOT")
        .await
        .unwrap();
    assert_eq!((item.version, item.state.on_hand()), (41, 40));
    let (max, n): (i64, i64) =
        sqlx::query_as("SELECT max(sequence), count(*) FROM events WHERE aggregate_id = 'HOT'")
            .fetch_one(&pool_a)
            .await
            .unwrap();
    assert_eq!(
        (max, n),
        (41, 41),
        "sequences are dense: no gap, no duplicate"
    );
}

#[tokio::test]
async fn without_retries_the_loser_of_a_race_gets_a_conflict_and_appends_nothing() {
    let db = TestDb::new().await;
    let (pool_a, pool_b) = (db.pool().await, db.pool().await);
    let (a, b) = (bus(&pool_a), bus(&pool_b));
    create_item(&a, "HOT", 0).await;
    let ctx = CommandContext {
        retry: RetryPolicy::NEVER,
        ..CommandContext::new()
    };
    let mut conflicts = 0;
    let mut committed = 0;
    // Many rounds of two racing writers: at least one round must collide.
    for _ in 0..30 {
        let (ra, rb) = tokio::join!(
            inventory(&a, "HOT", receipt(1), &ctx),
            inventory(&b, "HOT", receipt(1), &ctx),
        );
        for r in [ra, rb] {
            match r {
                Ok(_) => committed += 1,
                Err(CommandError::Conflict) => conflicts += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    }
    assert!(conflicts > 0, "two writers never collided in 30 rounds");
    let item = a
        .store_for::<InventoryItem>()
        .load::<InventoryItem>("HOT")
        .await
        .unwrap();
    assert_eq!(
        item.state.on_hand(),
        committed,
        "each success appended exactly once"
    );
}

#[tokio::test]
async fn a_stale_expected_version_is_refused_and_appends_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus(&pool);
    create_item(&bus, "SKU-1", 0).await;
    receive(&bus, "SKU-1", 1).await;
    let ctx = CommandContext {
        expected_version: Some(1),
        ..CommandContext::new()
    };
    let result = inventory(&bus, "SKU-1", receipt(1), &ctx).await;
    assert!(matches!(
        result,
        Err(CommandError::VersionMismatch {
            expected: 1,
            actual: 2
        })
    ));
    let ctx = CommandContext {
        expected_version: Some(2),
        ..CommandContext::new()
    };
    let result = inventory(&bus, "SKU-1", receipt(1), &ctx).await;
    assert!(
        matches!(result, Ok(Executed::Committed(ref c)) if c.version == 3),
        "{result:?}"
    );
    assert_eq!(count(&pool, "events").await, 3);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_response_and_refuses_a_different_request() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus(&pool);
    create_item(&bus, "SKU-1", 0).await;
    let ctx = |body: &[u8]| CommandContext {
        idempotency: Some(IdempotencyKey::new("test", "key-1", body)),
        ..CommandContext::new()
    };
    let first = inventory(&bus, "SKU-1", receipt(2), &ctx(b"2"))
        .await
        .unwrap();
    assert!(matches!(first, Executed::Committed(ref c) if c.version == 2));
    let again = inventory(&bus, "SKU-1", receipt(2), &ctx(b"2"))
        .await
        .unwrap();
    assert_eq!(
        again,
        Executed::Replayed(StoredResponse {
            status: 200,
            body: serde_json::json!({"id": "SKU-1", "version": 2})
        })
    );
    let other = inventory(&bus, "SKU-1", receipt(3), &ctx(b"3")).await;
    assert!(matches!(other, Err(CommandError::IdempotencyKeyReused)));
    assert_eq!(
        count(&pool, "events").await,
        2,
        "replays and refusals append nothing"
    );
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_append_once() {
    let db = TestDb::new().await;
    let (pool_a, pool_b) = (db.pool().await, db.pool().await);
    let (a, b) = (bus(&pool_a), bus(&pool_b));
    create_item(&a, "SKU-1", 0).await;
    let ctx = CommandContext {
        idempotency: Some(IdempotencyKey::new("test", "same", b"body")),
        ..CommandContext::new()
    };
    let tasks = (0..10).map(|i| {
        let bus = if i % 2 == 0 { a.clone() } else { b.clone() };
        let ctx = ctx.clone();
        tokio::spawn(async move { inventory(&bus, "SKU-1", receipt(1), &ctx).await })
    });
    let results: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("each request answers"))
        .collect();
    let committed = results
        .iter()
        .filter(|r| matches!(r, Executed::Committed(_)))
        .count();
    assert_eq!(committed, 1);
    assert_eq!(count(&pool_a, "events").await, 2);
}

/// A state offered to the cache from elsewhere (the scheduler primes it from the `jobs` read
/// model) is only a guess: when the aggregate has moved on, the command conflicts and is
/// decided again on the state in Postgres; an older offer never replaces a newer entry.
#[tokio::test]
async fn a_stale_primed_state_is_decided_again_on_the_stored_one() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus(&pool);
    create_item(&bus, "PRIMED", 10).await;
    let at_one = bus.state::<InventoryItem>("PRIMED").await.unwrap();
    assert_eq!(at_one.version, 1);
    // Another process (its own bus) takes every unit.
    let other = crate::common::bus(&pool);
    inventory(
        &other,
        "PRIMED",
        reservation("r1", 10),
        &CommandContext::new(),
    )
    .await
    .unwrap();
    // This process is offered the state at version 1, as a lagging read model would.
    bus.prime::<InventoryItem>("PRIMED", at_one.state.clone(), 1)
        .await;
    let refused = inventory(&bus, "PRIMED", reservation("r2", 5), &CommandContext::new()).await;
    assert!(
        matches!(
            refused,
            Err(CommandError::Rejected(
                InventoryError::InsufficientStock { .. }
            ))
        ),
        "{refused:?}"
    );
    let stored = bus
        .store_for::<InventoryItem>()
        .load::<InventoryItem>("PRIMED")
        .await
        .unwrap();
    assert_eq!(stored.version, 2, "nothing appended on the stale guess");
    // An offer older than what the cache holds is ignored.
    let current = bus.fresh_state::<InventoryItem>("PRIMED").await.unwrap();
    bus.prime::<InventoryItem>("PRIMED", current.state.clone(), current.version)
        .await;
    bus.prime::<InventoryItem>("PRIMED", at_one.state, 1).await;
    assert_eq!(
        bus.state::<InventoryItem>("PRIMED").await.unwrap().version,
        2
    );
}

/// A command that would change nothing on the cached state (acknowledging an alert the cache
/// still shows acknowledged) is decided again on the stored state: another process resolved
/// the alert meanwhile, and the answer is that refusal, not a quiet success.
#[tokio::test]
async fn a_no_op_decided_on_a_stale_cache_is_decided_again_on_the_stored_state() {
    use chronicle_monitoring::{
        Aggregation, Comparison, Rule, RuleCommand, RuleError, RuleSpec, Severity,
    };
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus(&pool);
    let at = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
    let spec = RuleSpec {
        name: "deep".into(),
        metric: "depth".into(),
        labels: Default::default(),
        agg: Aggregation::Max,
        window_seconds: 60,
        op: Comparison::Above,
        threshold: 5.0,
        for_seconds: 0,
        severity: Severity::Info,
        channels: Vec::new(),
    };
    let ctx = CommandContext::new();
    let run = |bus: chronicle_commands::CommandExecutor, command: RuleCommand| async move {
        bus.execute::<Rule>("r1", command, &(), &CommandContext::new())
            .await
    };
    bus.execute::<Rule>(
        "r1",
        RuleCommand::Create {
            rule_id: "r1".into(),
            spec,
            by: "staff".into(),
            now: at(0),
        },
        &(),
        &ctx,
    )
    .await
    .unwrap();
    let fire = RuleCommand::Evaluate {
        value: Some(9.0),
        at: at(1),
    };
    run(bus.clone(), fire).await.unwrap();
    let ack = || RuleCommand::Acknowledge {
        alert_id: "r1.1".into(),
        by: "staff".into(),
        at: at(2),
    };
    run(bus.clone(), ack()).await.unwrap();
    // Another process resolves it.
    let other = crate::common::bus(&pool);
    let calm = RuleCommand::Evaluate {
        value: Some(0.0),
        at: at(3),
    };
    run(other, calm).await.unwrap();
    let again = run(bus.clone(), ack()).await;
    assert!(
        matches!(
            again,
            Err(CommandError::Rejected(RuleError::NotFiring("resolved")))
        ),
        "{again:?}"
    );
}
