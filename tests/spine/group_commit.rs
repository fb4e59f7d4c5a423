//! The fast write path keeps the invariants: group commit, the aggregate cache, snapshots.

use chronicle_commands::{
    CommandContext, CommandError, CommandExecutor, EventStore, Executed, ExecutorConfig,
    IdempotencyKey, RetryPolicy,
};
use chronicle_commerce::{InventoryError, InventoryItem};
use chronicle_tests::TestDb;
use futures::future::join_all;
use sqlx::PgPool;

use crate::common::{count, create_item, inventory, receipt, receive, reservation};

fn bus_with(pool: &PgPool, config: ExecutorConfig) -> CommandExecutor {
    CommandExecutor::with_config(EventStore::new(pool.clone()), config)
}

/// Receives one unit of `sku` on a task of its own.
fn receive_in_background(bus: &CommandExecutor, sku: &'static str) -> tokio::task::JoinHandle<()> {
    let bus = bus.clone();
    tokio::spawn(async move { receive(&bus, sku, 1).await })
}

/// Returns once a connection of the test's database waits on a lock: a group held there.
async fn until_a_group_waits_on_a_lock(pool: &PgPool) {
    chronicle_tests::eventually(
        "a group to wait on the lock",
        std::time::Duration::from_secs(10),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND datname = current_database()",
            )
            .fetch_one(pool)
            .await
            .ok()?;
            (waiting > 0).then_some(())
        },
    )
    .await;
}

async fn groups_committed(pool: &PgPool) -> i64 {
    // Each group is one transaction, so the events of a group share its xmin.
    sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_commands_on_different_aggregates_commit_in_shared_transactions() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus_with(&pool, ExecutorConfig::default());
    let creates = (0..64).map(|i| {
        let bus = bus.clone();
        async move { create_item(&bus, &format!("SKU-{i}"), 1).await }
    });
    join_all(creates).await;
    assert_eq!(count(&pool, "events").await, 64);
    assert_eq!(count(&pool, "outbox").await, 64);
    let groups = groups_committed(&pool).await;
    assert!(
        groups < 64,
        "64 concurrent commands took {groups} transactions: no grouping"
    );
}

#[tokio::test]
async fn a_conflicting_command_fails_alone_and_its_group_neighbours_commit() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus_with(&pool, ExecutorConfig::default());
    for i in 0..20 {
        create_item(&bus, &format!("SKU-{i}"), 0).await;
    }
    // Another process moves SKU-0 on: this bus's cached SKU-0 is now stale.
    let other = bus_with(&pool, ExecutorConfig::uncached());
    receive(&other, "SKU-0", 1).await;
    let no_retry = CommandContext {
        retry: RetryPolicy::NEVER,
        ..CommandContext::new()
    };
    let commands = (0..20).map(|i| {
        let (bus, ctx) = (bus.clone(), no_retry.clone());
        async move { inventory(&bus, &format!("SKU-{i}"), receipt(5), &ctx).await }
    });
    let results = join_all(commands).await;
    assert!(
        matches!(results[0], Err(CommandError::Conflict)),
        "{:?}",
        results[0]
    );
    for (i, r) in results.iter().enumerate().skip(1) {
        assert!(
            matches!(r, Ok(Executed::Committed(c)) if c.version == 2),
            "SKU-{i}: {r:?}"
        );
    }
    let sku0 = bus
        .store_for::<InventoryItem>()
        .load::<InventoryItem>("SKU-0")
        .await
        .unwrap();
    assert_eq!(
        (sku0.version, sku0.state.on_hand()),
        (2, 1),
        "the loser appended nothing"
    );
    // With retries the same command succeeds on fresh state.
    receive(&bus, "SKU-0", 5).await;
    assert_eq!(
        bus.store_for::<InventoryItem>()
            .load::<InventoryItem>("SKU-0")
            .await
            .unwrap()
            .state
            .on_hand(),
        6
    );
}

#[tokio::test]
async fn a_refusal_decided_on_a_stale_cache_is_decided_again_on_fresh_state() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let cached = bus_with(&pool, ExecutorConfig::default());
    create_item(&cached, "SKU-1", 0).await;
    // Stock arrives through another process; the cached copy still says 0.
    receive(&bus_with(&pool, ExecutorConfig::uncached()), "SKU-1", 3).await;
    let reserve = inventory(
        &cached,
        "SKU-1",
        reservation("o1", 2),
        &CommandContext::new(),
    )
    .await;
    assert!(
        matches!(reserve, Ok(Executed::Committed(ref c)) if c.version == 3),
        "{reserve:?}"
    );
    // And a true refusal is still a refusal.
    let too_many = inventory(
        &cached,
        "SKU-1",
        reservation("o2", 2),
        &CommandContext::new(),
    )
    .await;
    assert!(matches!(
        too_many,
        Err(CommandError::Rejected(InventoryError::InsufficientStock {
            available: 1,
            ..
        }))
    ));
}

#[tokio::test]
async fn snapshots_are_written_every_n_events_and_loading_from_one_gives_the_same_state() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus_with(
        &pool,
        ExecutorConfig {
            snapshot_every: 10,
            cache_capacity: 0,
            ..ExecutorConfig::default()
        },
    );
    create_item(&bus, "SKU-1", 0).await;
    for _ in 0..24 {
        receive(&bus, "SKU-1", 1).await;
    }
    let (snapshots, last): (i64, i64) = sqlx::query_as(
        "SELECT count(*), max(last_sequence) FROM snapshots WHERE aggregate_id = 'SKU-1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((snapshots, last), (1, 20), "one snapshot kept, the latest");
    let from_snapshot = bus
        .store_for::<InventoryItem>()
        .load_from_snapshot::<InventoryItem>("SKU-1")
        .await
        .unwrap();
    let from_events = bus
        .store_for::<InventoryItem>()
        .load::<InventoryItem>("SKU-1")
        .await
        .unwrap();
    assert_eq!(from_snapshot.version, 25);
    assert_eq!(from_snapshot.state, from_events.state);
}

#[tokio::test]
async fn idempotency_keys_inside_one_group_are_each_decided_once() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus_with(&pool, ExecutorConfig::default());
    for i in 0..10 {
        create_item(&bus, &format!("SKU-{i}"), 0).await;
    }
    // Ten aggregates, each with its own key, plus the same key sent to a second aggregate:
    // the second use of a key is a different request.
    let sends = (0..10).map(|i| {
        let bus = bus.clone();
        async move {
            let ctx = CommandContext {
                idempotency: Some(IdempotencyKey::new(
                    "test",
                    format!("key-{}", i % 9),
                    format!("SKU-{i}").as_bytes(),
                )),
                ..CommandContext::new()
            };
            inventory(&bus, &format!("SKU-{i}"), receipt(1), &ctx).await
        }
    });
    let results = join_all(sends).await;
    let committed = results
        .iter()
        .filter(|r| matches!(r, Ok(Executed::Committed(_))))
        .count();
    let reused = results
        .iter()
        .filter(|r| matches!(r, Err(CommandError::IdempotencyKeyReused)))
        .count();
    assert_eq!((committed, reused), (9, 1), "{results:?}");
    assert_eq!(count(&pool, "events").await, 10 + 9);
    assert_eq!(count(&pool, "idempotency_keys").await, 9);
}

#[tokio::test]
async fn a_crash_before_a_group_commits_loses_the_whole_group_and_nothing_else() {
    use chronicle_bus::{FaultAction, Faults};
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let faults = Faults::default();
    let bus = CommandExecutor::with_config(
        EventStore::new(pool.clone()).with_faults(faults.clone()),
        ExecutorConfig::default(),
    );
    for i in 0..30 {
        create_item(&bus, &format!("SKU-{i}"), 0).await;
    }
    faults.arm("store.before_commit", FaultAction::Crash);
    let commands = (0..30).map(|i| {
        let bus = bus.clone();
        async move {
            let ctx = CommandContext {
                retry: RetryPolicy::NEVER,
                ..CommandContext::new()
            };
            inventory(&bus, &format!("SKU-{i}"), receipt(1), &ctx).await
        }
    });
    let results = join_all(commands).await;
    let failed: Vec<usize> = (0..30).filter(|&i| results[i].is_err()).collect();
    assert!(!failed.is_empty(), "the fault point was reached");
    for (i, result) in results.iter().enumerate() {
        let item = bus
            .store_for::<InventoryItem>()
            .load::<InventoryItem>(&format!("SKU-{i}"))
            .await
            .unwrap();
        match result {
            Ok(_) => assert_eq!(item.version, 2, "SKU-{i} committed"),
            Err(CommandError::Store(_)) => {
                assert_eq!(item.version, 1, "SKU-{i} was in the lost group")
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(
        count(&pool, "outbox").await,
        count(&pool, "events").await,
        "every event has its outbox row"
    );
    // The bus carries on: the cache did not keep the lost group's state.
    for &i in &failed {
        receive(&bus, &format!("SKU-{i}"), 1).await;
        assert_eq!(
            bus.store_for::<InventoryItem>()
                .load::<InventoryItem>(&format!("SKU-{i}"))
                .await
                .unwrap()
                .version,
            2
        );
    }
}

/// Regression (issue 10): a caller cancelled after queuing its append released the
/// aggregate's lock; the next command on that aggregate decided on the same version, both
/// appends landed in one group, neither was marked the loser, and the committer retried
/// that group forever: every write of the process stopped.
#[tokio::test]
async fn a_cancelled_caller_never_leaves_two_appends_of_one_aggregate_in_a_group() {
    use std::time::Duration;
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus_with(&pool, ExecutorConfig::default());
    for sku in ["X", "Y", "Z"] {
        create_item(&bus, sku, 0).await;
    }
    // Hold the committer on a first group (Y), so what comes next queues behind it.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let first = receive_in_background(&bus, "Y");
    until_a_group_waits_on_a_lock(&pool).await;
    // A caller on X gives up while its append waits in the committer's queue.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        inventory(&bus, "X", receipt(1), &CommandContext::new()),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the caller timed out while the committer was held"
    );
    // The next command on X decides on the same version as the cancelled one.
    let second = tokio::spawn({
        let bus = bus.clone();
        async move { inventory(&bus, "X", receipt(2), &CommandContext::new()).await }
    });
    let other = tokio::spawn({
        let bus = bus.clone();
        async move { receive(&bus, "Z", 5).await }
    });
    blocker.rollback().await.unwrap();

    let within = Duration::from_secs(10);
    tokio::time::timeout(within, first)
        .await
        .expect("the first group commits")
        .unwrap();
    tokio::time::timeout(within, other)
        .await
        .expect("commands on other aggregates still complete")
        .unwrap();
    let second = tokio::time::timeout(within, second)
        .await
        .expect("the second command on X completes")
        .unwrap()
        .expect("it is retried after the cancelled append won");
    let Executed::Committed(committed) = second else {
        panic!("no idempotency key was sent")
    };
    assert_eq!(
        committed.version, 3,
        "created, the cancelled receipt, then this one"
    );
    let x = bus
        .store_for::<InventoryItem>()
        .load::<InventoryItem>("X")
        .await
        .unwrap();
    assert_eq!((x.version, x.state.on_hand()), (3, 3));
}

/// Commands for one aggregate that queue while its append commits run together as ONE
/// append: a hot aggregate commits many commands per round trip. Each is still decided on
/// the state the ones before it left (exactly the stock there is gets reserved), each gets
/// its own version or refusal, and each event keeps its own command's correlation id.
#[tokio::test]
async fn commands_queued_on_one_aggregate_commit_together_each_decided_in_turn() {
    use std::time::Duration;
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus_with(&pool, ExecutorConfig::default());
    create_item(&bus, "HOT", 10).await;
    // Hold the committer, so every reservation but the first queues behind the first.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let reserve = |n: usize| {
        let bus = bus.clone();
        let ctx = CommandContext::new();
        let correlation_id = ctx.correlation_id;
        let handle = tokio::spawn(async move {
            inventory(&bus, "HOT", reservation(format!("r{n}"), 1), &ctx).await
        });
        (format!("r{n}"), correlation_id, handle)
    };
    let mut calls = Vec::new();
    for n in 0..20 {
        calls.push(reserve(n));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    blocker.rollback().await.unwrap();
    let mut versions = Vec::new();
    let mut refused = 0;
    let mut correlations = std::collections::HashMap::new();
    for (reservation, correlation_id, handle) in calls {
        match handle.await.unwrap() {
            Ok(Executed::Committed(c)) => {
                assert_eq!(c.appended, 1);
                versions.push(c.version);
                correlations.insert(reservation, correlation_id);
            }
            Err(CommandError::Rejected(InventoryError::InsufficientStock { .. })) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=11).collect::<Vec<u64>>(),
        "the stock, in turn"
    );
    assert_eq!(refused, 10);
    // The 20 commands took a handful of transactions, not one each.
    let reservation_transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM events WHERE event_type = 'StockReserved'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        reservation_transactions <= 3,
        "10 reservations took {reservation_transactions} transactions"
    );
    let recorded: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT e.payload->'StockReserved'->>'reservation_id', e.metadata->>'correlation_id', \
         o.correlation_id::text FROM events e JOIN outbox o \
         ON o.subject LIKE '%.' || e.aggregate_id AND o.aggregate_sequence = e.sequence \
         WHERE e.event_type = 'StockReserved'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(recorded.len(), 10);
    for (reservation, in_event, in_outbox) in recorded {
        let expected = correlations[&reservation].to_string();
        assert_eq!(in_event, expected, "{reservation}");
        assert_eq!(in_outbox, expected, "{reservation}");
    }
}

/// The caller whose turn runs a batch gives up while the batch commits: the other callers'
/// commands in it still commit and are answered (the batch runs on a task of its own).
#[tokio::test]
async fn a_batch_leader_giving_up_does_not_fail_the_commands_it_carries() {
    use std::time::Duration;
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bus = bus_with(&pool, ExecutorConfig::default());
    create_item(&bus, "HOT", 10).await;
    let lock_waiters = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    // An uncommitted event at `sequence` makes an append of that sequence wait for it.
    let hold = |sequence: i64| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                 event_version, payload, metadata) \
                 VALUES ('inventory_item', 'HOT', $1, 'Held', '1', '{}', '{}')",
            )
            .bind(sequence)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx
        }
    };
    let reserve = |n: &str| {
        let bus = bus.clone();
        let reservation_id = n.to_owned();
        tokio::spawn(async move {
            inventory(
                &bus,
                "HOT",
                reservation(reservation_id, 1),
                &CommandContext::new(),
            )
            .await
        })
    };
    let at_2 = hold(2).await;
    let at_3 = hold(3).await;
    // X holds the aggregate's turn, its append (sequence 2) waiting.
    let x = reserve("x");
    chronicle_tests::eventually("x waiting", Duration::from_secs(10), || async {
        (lock_waiters().await >= 1).then_some(())
    })
    .await;
    // A then B queue behind X: A's turn will run both, as one batch (sequences 3 and 4).
    let a = reserve("a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = reserve("b");
    tokio::time::sleep(Duration::from_millis(100)).await;
    at_2.rollback().await.unwrap();
    assert!(matches!(x.await.unwrap(), Ok(Executed::Committed(_))));
    chronicle_tests::eventually("the batch waiting", Duration::from_secs(10), || async {
        (lock_waiters().await >= 1).then_some(())
    })
    .await;
    // A, whose turn runs the batch, gives up while it commits.
    a.abort();
    let _ = a.await;
    at_3.rollback().await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), b).await {
        Ok(Ok(Ok(Executed::Committed(c)))) => assert_eq!(c.version, 4, "x, then a, then b"),
        other => panic!("b was carried by a's batch and must be answered: {other:?}"),
    }
    assert_eq!(count(&pool, "events").await, 4);
}

/// Pipelined group commit: while a group is still committing (here it waits on a row
/// another transaction holds, as it would on its flush), the next group forms and commits
/// beside it. With one group in flight at a time, the next waits behind it instead; and an
/// aggregate's next append never overtakes its append in flight.
#[tokio::test]
async fn the_next_group_commits_while_the_one_before_is_still_committing() {
    for in_flight in [2, 1] {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        let bus = bus_with(
            &pool,
            ExecutorConfig {
                groups_in_flight: in_flight,
                ..ExecutorConfig::default()
            },
        );
        let version = create_item(&bus, "SKU-A", 0).await;
        // Another transaction holds the row SKU-A's next event takes.
        let mut blocker = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) \
             SELECT aggregate_type, aggregate_id, sequence + 1, event_type, event_version, \
                    payload, metadata \
             FROM events WHERE aggregate_id = 'SKU-A' AND sequence = $1",
        )
        .bind(i64::try_from(version).unwrap())
        .execute(&mut *blocker)
        .await
        .unwrap();
        let held = receive_in_background(&bus, "SKU-A");
        // Its group now waits on that row.
        until_a_group_waits_on_a_lock(&pool).await;
        let mut other = tokio::spawn({
            let bus = bus.clone();
            async move { create_item(&bus, "SKU-B", 0).await }
        });
        let overtook =
            match tokio::time::timeout(std::time::Duration::from_secs(2), &mut other).await {
                Ok(created) => {
                    assert_eq!(created.unwrap(), 1);
                    true
                }
                Err(_) => false,
            };
        assert_eq!(
            overtook,
            in_flight > 1,
            "with {in_flight} group(s) in flight, SKU-B committed while SKU-A's group waited: {overtook}"
        );
        assert!(!held.is_finished(), "SKU-A's append went past the held row");
        blocker.rollback().await.unwrap();
        held.await.unwrap();
        if !overtook {
            assert_eq!(other.await.unwrap(), 1);
        }
        let sequences: Vec<i64> = sqlx::query_scalar(
            "SELECT sequence FROM events WHERE aggregate_id = 'SKU-A' ORDER BY sequence",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let all: Vec<i64> = (1..=i64::try_from(version).unwrap() + 1).collect();
        assert_eq!(sequences, all, "SKU-A's events, each once and in order");
    }
}
