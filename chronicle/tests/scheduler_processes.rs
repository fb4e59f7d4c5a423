//! The scheduler as real processes (issue 13): three `chronicle scheduler` processes run
//! each due second of a job once between them, sharing the jobs; one killed with SIGKILL mid-run leads to one
//! retried run, not two; after 30 s with no scheduler running, each missed-run policy
//! does what it says; and (issue 32) a job triggered by events runs once for each event,
//! in log order, while schedulers and the triggers' projector are killed as events stream in.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use chronicle_commands::{CommandContext, CommandExecutor};
use chronicle_scheduler::{
    Action, CommandAction, Job, JobCommand, JobSpec, MissedPolicy, OverlapPolicy, Schedule,
};
use chronicle_tests::{eventually, Hook, TestDb, TestNats};
use chrono::{DateTime, Utc};
use common::Running;
use serde_json::Value;
use sqlx::PgPool;

/// Starts `chronicle <args>` on the test's servers (HTTP actions may call 127.0.0.1).
fn start(args: &[&str], db: &TestDb, nats: &TestNats) -> Running {
    start_logging_to(args, db, nats, Stdio::inherit())
}

/// [`start`] with the process's log going to `log`.
fn start_logging_to(args: &[&str], db: &TestDb, nats: &TestNats, log: Stdio) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats.url())
        .env("CHRONICLE_SCHEDULER_HTTP_ALLOW", "127.0.0.1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the chronicle binary starts");
    Running(Some(child))
}

/// Regression (issue 16, seen in the E1 bench): the scheduler and the alert engine read the
/// tables of projections (`scheduler_jobs`, `monitoring_rules`) that, on a new database, do
/// not exist until their projectors start; started first, each logged a warning at every
/// round. Each now makes the table it reads, and starts quietly with no projector running.
#[tokio::test]
async fn the_scheduler_and_the_alert_engine_start_before_any_projector_without_a_warning() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let dir = tempfile::tempdir().expect("a temp dir");
    let log_path = dir.path().join("stderr.log");
    let log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("the log file")
            .into()
    };
    let scheduler = start_logging_to(&["scheduler"], &db, &nats, log());
    let engine = start_logging_to(&["alert-engine"], &db, &nats, log());
    let pool = db.pool().await;
    live_schedulers(&pool, 1).await;
    // Both have run a few rounds (the scheduler polls every second, the engine evaluates at
    // start), with no projector anywhere.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop((scheduler, engine));
    for table in [
        "scheduler.scheduler_jobs",
        "scheduler.scheduler_triggers",
        "monitoring.monitoring_rules",
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(exists, "{table} was made by the process that reads it");
    }
    let logged = std::fs::read_to_string(&log_path).expect("the log");
    let complaints: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(complaints.is_empty(), "they complained: {complaints:#?}");
}

/// The log's relay and the jobs read model, which the schedulers find due jobs in.
fn start_spine(db: &TestDb, nats: &TestNats) -> (Running, Running) {
    (
        start(&["relay"], db, nats),
        start(&["project", "jobs"], db, nats),
    )
}

async fn live_schedulers(pool: &PgPool, n: i64) {
    eventually(
        &format!("{n} live schedulers"),
        Duration::from_secs(30),
        || async {
            let live: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM scheduler.scheduler_processes \
             WHERE NOT stopped AND seen_at > now() - interval '2 seconds'",
            )
            .fetch_one(pool)
            .await
            .unwrap_or(0);
            (live == n).then_some(())
        },
    )
    .await;
}

fn spec(name: &str, schedule: Schedule, action: Action) -> JobSpec {
    JobSpec {
        name: name.into(),
        schedule,
        action,
        max_retries: 2,
        depends_on: vec![],
        missed: MissedPolicy::RunOnce,
        overlap: OverlapPolicy::Skip,
        timeout_seconds: 10,
        backoff_seconds: 1,
    }
}

fn every_second() -> Schedule {
    Schedule::Cron {
        expression: "* * * * * *".into(),
        timezone: "UTC".into(),
    }
}

fn noop() -> Action {
    Action::Command {
        command: CommandAction::Noop {},
    }
}

async fn create(bus: &CommandExecutor, id: &str, spec: JobSpec) {
    bus.execute::<Job>(
        id,
        JobCommand::Create {
            job_id: id.into(),
            owner_id: "alice".into(),
            spec,
            now: Utc::now(),
        },
        &(),
        &CommandContext::new(),
    )
    .await
    .expect("the job is created");
}

/// Job `id`'s events of `event_type`: payload and the actor that caused them.
async fn events(pool: &PgPool, id: &str, event_type: &str) -> Vec<(Value, String)> {
    let rows: Vec<(Value, Value)> = sqlx::query_as(
        "SELECT payload::jsonb -> $2, metadata::jsonb FROM scheduler.events \
         WHERE aggregate_type = 'job' AND aggregate_id = $1 AND event_type = $2 ORDER BY sequence",
    )
    .bind(id)
    .bind(event_type)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(payload, metadata)| (payload, metadata["actor"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

async fn due_times(pool: &PgPool, id: &str) -> Vec<DateTime<Utc>> {
    events(pool, id, "RunStarted")
        .await
        .iter()
        .map(|(p, _)| time(&p["due_at"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_run_each_due_second_once_between_them() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let pool = db.pool().await;
    let _spine = start_spine(&db, &nats);
    let _schedulers: Vec<Running> = (0..3).map(|_| start(&["scheduler"], &db, &nats)).collect();
    live_schedulers(&pool, 3).await;
    let bus = db.executor().await;
    let jobs: Vec<String> = (0..9).map(|i| format!("tick-{i}")).collect();
    for id in &jobs {
        // `queue`: a run slowed past its second by a loaded machine delays the next one
        // instead of skipping it, so every due second must show up.
        let job = spec(id, every_second(), noop());
        let overlap = OverlapPolicy::Queue;
        create(&bus, id, JobSpec { overlap, ..job }).await;
    }
    // The work is shared: runs by two processes at least (a loaded machine may take a
    // moment to settle who holds which bucket), then ten seconds more of it.
    eventually(
        "runs by two schedulers",
        Duration::from_secs(30),
        || async {
            let actors: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT metadata::jsonb ->> 'actor') FROM scheduler.events \
             WHERE aggregate_type = 'job' AND event_type = 'RunStarted'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (actors >= 2).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut actors = std::collections::BTreeSet::new();
    for id in &jobs {
        let started = events(&pool, id, "RunStarted").await;
        actors.extend(started.iter().map(|(_, actor)| actor.clone()));
        let due: Vec<DateTime<Utc>> = started.iter().map(|(p, _)| time(&p["due_at"])).collect();
        assert!(due.len() >= 9, "{id}: {} runs in 10 s and more", due.len());
        for pair in due.windows(2) {
            assert_eq!(
                (pair[1] - pair[0]).num_milliseconds(),
                1000,
                "{id}: each due second once, none missed: {due:?}"
            );
        }
        assert!(started.iter().all(|(p, _)| p["attempt"] == 1));
        assert!(events(&pool, id, "RunsSkipped").await.is_empty());
    }
    assert!(actors.len() >= 2, "{actors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_killed_mid_run_leads_to_one_retried_run_not_two() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let pool = db.pool().await;
    let _spine = start_spine(&db, &nats);
    // The first call hangs (the scheduler making it dies); the next one answers at once.
    let hook = Hook::start(|_, n| {
        if n == 1 {
            (200, Duration::from_secs(60))
        } else {
            (200, Duration::ZERO)
        }
    })
    .await;
    let mut doomed = start(&["scheduler"], &db, &nats);
    live_schedulers(&pool, 1).await;
    let bus = db.executor().await;
    let action = Action::Http {
        url: format!("{}/slow", hook.url),
        method: "POST".into(),
        body: None,
    };
    let job = spec(
        "slow",
        Schedule::Once {
            at: Utc::now() + chrono::Duration::seconds(1),
        },
        action,
    );
    create(
        &bus,
        "slow",
        JobSpec {
            timeout_seconds: 3,
            ..job
        },
    )
    .await;
    eventually("the first call", Duration::from_secs(20), || async {
        (!hook.hits("/slow").is_empty()).then_some(())
    })
    .await;
    let mut child = doomed.0.take().unwrap();
    child.kill().expect("SIGKILL the scheduler");
    child.wait().unwrap();
    let _survivor = start(&["scheduler"], &db, &nats);
    eventually(
        "the retried run's success",
        Duration::from_secs(40),
        || async { (!events(&pool, "slow", "RunSucceeded").await.is_empty()).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hook.hits("/slow").len(), 2, "the call, and one retry");
    let started = events(&pool, "slow", "RunStarted").await;
    let attempts: Vec<&Value> = started.iter().map(|(p, _)| &p["attempt"]).collect();
    assert_eq!(attempts, [1, 2], "{started:?}");
    let failed = events(&pool, "slow", "RunFailed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].0["error"].as_str().unwrap().starts_with("lost"),
        "{failed:?}"
    );
    assert_eq!(events(&pool, "slow", "RunSucceeded").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_30_s_without_a_scheduler_each_missed_run_policy_does_what_it_says() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let pool = db.pool().await;
    let _spine = start_spine(&db, &nats);
    let mut first = start(&["scheduler"], &db, &nats);
    live_schedulers(&pool, 1).await;
    let bus = db.executor().await;
    for (id, missed) in [
        ("skip", MissedPolicy::Skip),
        ("run-once", MissedPolicy::RunOnce),
        ("run-all", MissedPolicy::RunAll),
    ] {
        let job = spec(id, every_second(), noop());
        create(&bus, id, JobSpec { missed, ..job }).await;
    }
    for id in ["skip", "run-once", "run-all"] {
        eventually("two runs each", Duration::from_secs(20), || async {
            (due_times(&pool, id).await.len() >= 2).then_some(())
        })
        .await;
    }
    let mut child = first.0.take().unwrap();
    child.kill().expect("SIGKILL the scheduler");
    child.wait().unwrap();
    let killed = Utc::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let restarted = Utc::now();
    let _second = start(&["scheduler"], &db, &nats);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Due times surely missed: past the dead process's last heartbeat, before the restart.
    let (from, to) = (killed + chrono::Duration::seconds(2), restarted);
    let within = |t: &DateTime<Utc>| *t >= from && *t <= to;

    let skipped = |id: &'static str| {
        let pool = pool.clone();
        async move {
            let skips = events(&pool, id, "RunsSkipped").await;
            assert_eq!(skips.len(), 1, "{id}: {skips:?}");
            let skip = skips[0].0.clone();
            assert_eq!(skip["reason"], "missed");
            (
                time(&skip["from"]),
                time(&skip["to"]),
                skip["next_due_at"].clone(),
            )
        }
    };
    // skip: none of them ran; the job went on from its next due time.
    let (first_skipped, last_skipped, _) = skipped("skip").await;
    assert!(first_skipped <= from && last_skipped >= to - chrono::Duration::seconds(1));
    let ran = due_times(&pool, "skip").await;
    assert!(
        !ran.iter()
            .any(|t| *t >= first_skipped && *t <= last_skipped),
        "{ran:?}"
    );
    assert!(
        ran.iter().any(|t| *t > restarted),
        "and runs again after: {ran:?}"
    );

    // run_once: all of them skipped but the latest, which ran once.
    let (first_skipped, last_skipped, once) = skipped("run-once").await;
    assert!(first_skipped <= from && last_skipped >= to - chrono::Duration::seconds(2));
    let ran = due_times(&pool, "run-once").await;
    assert!(
        !ran.iter()
            .any(|t| *t >= first_skipped && *t <= last_skipped),
        "{ran:?}"
    );
    let once = time(&once);
    assert_eq!(ran.iter().filter(|t| **t == once).count(), 1, "{ran:?}");

    // run_all: every one of them ran, once.
    assert!(events(&pool, "run-all", "RunsSkipped").await.is_empty());
    let ran = due_times(&pool, "run-all").await;
    let missed: Vec<&DateTime<Utc>> = ran.iter().filter(|t| within(t)).collect();
    let seconds = (to - from).num_seconds();
    assert!(
        (seconds..=seconds + 1).contains(&(missed.len() as i64)),
        "{} of {seconds} ({from} to {to}): {ran:?}",
        missed.len(),
    );
    let mut unique = ran.clone();
    unique.dedup();
    assert_eq!(unique, ran, "none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedulers_killed_while_events_stream_in_run_an_event_triggered_job_once_per_event() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let pool = db.pool().await;
    let _spine = start_spine(&db, &nats);
    let mut triggers = start(&["project", "job_triggers"], &db, &nats);
    let mut schedulers: Vec<Running> = (0..3).map(|_| start(&["scheduler"], &db, &nats)).collect();
    live_schedulers(&pool, 3).await;
    let bus = db.executor().await;
    // Each call takes 100 ms: a kill most likely lands in the middle of one.
    let hook = Hook::start(|_, _| (200, Duration::from_millis(100))).await;
    let action = Action::Http {
        url: format!("{}/stock", hook.url),
        method: "POST".into(),
        body: None,
    };
    let job = spec(
        "on-stock",
        Schedule::OnEvent {
            types: vec!["StockReceived".into()],
            context: Some("commerce".into()),
        },
        action,
    );
    // Lost runs are retried: enough retries for every kill to land on one event's run.
    create(
        &bus,
        "on-stock",
        JobSpec {
            max_retries: 20,
            timeout_seconds: 2,
            ..job
        },
    )
    .await;
    // In the log (the jobs read model has it) before the first event it is to run for.
    eventually(
        "the job in the read model",
        Duration::from_secs(30),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM scheduler.scheduler_jobs WHERE job_id = 'on-stock'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (n == 1).then_some(())
        },
    )
    .await;
    let ctx = CommandContext::new();
    let create_item = chronicle_commerce::InventoryCommand::Create {
        sku: "KILL-1".into(),
        name: "Lamp".into(),
        price_cents: 100,
        initial_stock: 0,
    };
    bus.execute::<chronicle_commerce::InventoryItem>("KILL-1", create_item, &(), &ctx)
        .await
        .unwrap();
    // 300 events over ~9 s; four times meanwhile every scheduler is killed (SIGKILL) and
    // three others started, and once the triggers' projector too.
    let appended = 300;
    let streaming = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for _ in 0..appended {
                let receive = chronicle_commerce::InventoryCommand::Receive { quantity: 1 };
                bus.execute::<chronicle_commerce::InventoryItem>(
                    "KILL-1",
                    receive,
                    &(),
                    &CommandContext::new(),
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    for round in 0..4 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for running in &mut schedulers {
            let mut child = running.0.take().unwrap();
            child.kill().expect("SIGKILL a scheduler");
            child.wait().unwrap();
        }
        schedulers = (0..3).map(|_| start(&["scheduler"], &db, &nats)).collect();
        if round == 1 {
            let mut child = triggers.0.take().unwrap();
            child.kill().expect("SIGKILL the triggers' projector");
            child.wait().unwrap();
            triggers = start(&["project", "job_triggers"], &db, &nats);
        }
    }
    streaming.await.unwrap();
    // Each run that ended, by the event it was for; every event run for and done with.
    let finished = || async {
        // Ended first: every run that ended by then has started by the second read.
        let succeeded = events(&pool, "on-stock", "RunSucceeded").await;
        let started = events(&pool, "on-stock", "RunStarted").await;
        let seq_of: std::collections::HashMap<String, u64> = started
            .iter()
            .map(|(p, _)| {
                (
                    p["run_id"].as_str().unwrap().to_owned(),
                    p["event"]["stream_seq"].as_u64().unwrap(),
                )
            })
            .collect();
        let done: Vec<u64> = succeeded
            .iter()
            .map(|(p, _)| seq_of[p["run_id"].as_str().unwrap()])
            .collect();
        (started, done)
    };
    let (started, done) = eventually(
        "a run for every event",
        Duration::from_secs(120),
        || async {
            let (started, done) = finished().await;
            (done.len() >= appended).then_some((started, done))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, again) = finished().await;
    assert_eq!(
        again.len(),
        done.len(),
        "no run after every event was done with"
    );
    assert_eq!(done.len(), appended, "one successful run per event");
    assert!(
        done.windows(2).all(|w| w[0] < w[1]),
        "each event once, in log order"
    );
    // Runs started in log order too (a lost run's retry is for the same event).
    let order: Vec<u64> = started
        .iter()
        .map(|(p, _)| p["event"]["stream_seq"].as_u64().unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    let actors: std::collections::BTreeSet<&String> = started.iter().map(|(_, a)| a).collect();
    assert!(
        actors.len() >= 2,
        "shared, and taken over after kills: {actors:?}"
    );
    // Exactly the events of the log: every StockReceived after the job was created.
    let failed = events(&pool, "on-stock", "RunFailed").await;
    assert!(
        failed
            .iter()
            .all(|(p, _)| p["error"].as_str().unwrap().starts_with("lost")),
        "{failed:?}"
    );
    // Every event was called about at least once (a call cut off by a kill is made again).
    let calls = hook.bodies("/stock");
    let called: std::collections::BTreeSet<String> = calls
        .iter()
        .map(|b| {
            let envelope: Value = serde_json::from_str(b).unwrap();
            assert_eq!(envelope["event_type"], "StockReceived");
            envelope["event_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(called.len(), appended, "a call about each event");
    assert!(calls.len() >= appended, "{} calls", calls.len());
    println!(
        "event-triggered job: {appended} events, {} runs started, {} lost to kills and retried, {} calls",
        started.len(),
        failed.len(),
        calls.len()
    );
}
