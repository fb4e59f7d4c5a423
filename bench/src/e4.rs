//! E4 (docs/benchmarks.md): 100,000 one-shot jobs due at the same instant with a no-op
//! command action (beside a pilot of jobs due a day later, whose creation rate sizes the
//! burst's lead), then a job due every second for 60 s, then a job triggered by events with a
//! burst of 10,000 matching events, with three `chronicle scheduler` processes (and a relay,
//! the `jobs` and `job_triggers` projectors, each a process of its own). Reports job runs/s,
//! lateness (due to started; for the events, appended to started) p50/p99, duplicates and
//! misses, from the events the runs recorded, and where the burst's time went: the stages of
//! [`crate::breakdown`] summed over every role's `GET /metrics`.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use chronicle_commands::{CommandContext, CommandExecutor, Databases};
use chronicle_scheduler::{
    Action, CommandAction, Job, JobCommand, JobSpec, MissedPolicy, OverlapPolicy, Schedule,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;

use crate::{
    breakdown::{self, Scrape},
    process::start_headless,
    servers::Servers,
};

fn spec(name: &str, schedule: Schedule) -> JobSpec {
    JobSpec {
        name: name.to_owned(),
        schedule,
        action: Action::Command {
            command: CommandAction::Noop {},
        },
        max_retries: 3,
        depends_on: vec![],
        missed: MissedPolicy::RunOnce,
        overlap: OverlapPolicy::Skip,
        timeout_seconds: 60,
        backoff_seconds: 1,
    }
}

/// The write path's tuning; `BENCH_GROUPS_IN_FLIGHT` overrides how many commit groups may
/// be in flight at once.
fn executor_config() -> chronicle_commands::ExecutorConfig {
    let mut config = chronicle_commands::ExecutorConfig::default();
    if let Some(n) = std::env::var("BENCH_GROUPS_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.groups_in_flight = n;
    }
    config
}

async fn create(bus: &CommandExecutor, id: String, spec: JobSpec) -> anyhow::Result<()> {
    bus.execute::<Job>(
        &id,
        JobCommand::Create {
            job_id: id.clone(),
            owner_id: "e4".to_owned(),
            spec,
            now: Utc::now(),
        },
        &(),
        &CommandContext::new(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating {id}: {e}"))?;
    Ok(())
}

/// `jobs` one-shot jobs `{prefix}-000000`, ... due at `at`, 64 commands in flight.
async fn create_all(
    bus: &Arc<CommandExecutor>,
    prefix: &str,
    jobs: u64,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    futures::stream::iter(0..jobs)
        .map(|i| {
            let bus = bus.clone();
            async move {
                create(
                    &bus,
                    format!("{prefix}-{i:06}"),
                    spec(prefix, Schedule::Once { at }),
                )
                .await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// The runs `chronicle scheduler` processes have recorded as succeeded since they started
/// (the sum of their `chronicle_job_runs_total{outcome="succeeded"}`).
async fn runs_succeeded(http: &reqwest::Client, bases: &[&str]) -> anyhow::Result<u64> {
    let mut total = 0.0;
    for base in bases {
        total += breakdown::page(http, base)
            .await?
            .lines()
            .filter(|l| l.starts_with("chronicle_job_runs_total{"))
            .filter(|l| l.contains("outcome=\"succeeded\""))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total as u64)
}

/// Every run start of the jobs whose id starts with `prefix`: (job, due, started).
async fn starts(
    pool: &PgPool,
    prefix: &str,
) -> anyhow::Result<Vec<(String, DateTime<Utc>, DateTime<Utc>)>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT aggregate_id, payload -> 'RunStarted' ->> 'due_at', \
           payload -> 'RunStarted' ->> 'started_at' FROM scheduler.events \
         WHERE aggregate_type = 'job' AND event_type = 'RunStarted' AND aggregate_id LIKE $1",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, due, started)| Ok((id, due.parse()?, started.parse()?)))
        .collect()
}

fn percentile_ms(sorted: &[i64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1_000.0
}

/// Lateness (due to started) of `runs`, in microseconds, sorted.
fn lateness(runs: &[(String, DateTime<Utc>, DateTime<Utc>)]) -> Vec<i64> {
    let mut late: Vec<i64> = runs
        .iter()
        .map(|(_, due, started)| (*started - *due).num_microseconds().unwrap_or(i64::MAX))
        .collect();
    late.sort_unstable();
    late
}

pub async fn run(
    servers: &Servers,
    jobs: u64,
    cron_seconds: u64,
    events: u64,
) -> anyhow::Result<()> {
    let fresh = servers.fresh().await?;
    let (db, nats) = (fresh.db_url.as_str(), fresh.nats_url.as_str());
    let others = [
        start_headless(db, nats, &["relay"])?,
        start_headless(db, nats, &["project", "jobs"])?,
        start_headless(db, nats, &["project", "job_triggers"])?,
    ];
    let schedulers = (0..3)
        .map(|_| start_headless(db, nats, &["scheduler"]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Where a burst's time goes: the stages of every role's histograms over the burst.
    let metrics: Vec<&str> = others
        .iter()
        .chain(&schedulers)
        .map(|(_, base)| base.as_str())
        .collect();
    let scheduler_pages: Vec<&str> = schedulers.iter().map(|(_, base)| base.as_str()).collect();
    let http = reqwest::Client::new();
    let pool = fresh.pool.clone();
    let waiting = Instant::now();
    loop {
        let live = count(
            &pool,
            "SELECT count(*) FROM scheduler.scheduler_processes WHERE seen_at > now() - interval '2 seconds'",
        )
        .await
        .unwrap_or(0);
        if live == 3 {
            break;
        }
        ensure!(
            waiting.elapsed() < Duration::from_secs(60),
            "schedulers did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Jobs go to the scheduler's store, as the gateway's commands do.
    let bus = Arc::new(CommandExecutor::for_contexts(
        &Databases::new(
            pool.clone(),
            &chronicle::contexts::names(),
            16,
            |_, options| options,
        ),
        &Default::default(),
        executor_config(),
    ));

    // One-shot jobs, all due at one instant far enough ahead to create and project them.
    // How far is measured here, not guessed: a pilot of jobs due a day ahead (idle jobs, as
    // a live system holds) gives this machine's creation rate, and the burst's lead leaves
    // room to create and project every job at two thirds of that rate (100,000 jobs here,
    // four runs: pilots at 867-969 jobs/s, the burst created at 786-919/s, its read model
    // caught up 57-94 s before the due time).
    let pilot = (jobs / 20).clamp(500, 5_000);
    let piloting = Instant::now();
    let day_ahead = Utc::now() + chrono::Duration::days(1);
    create_all(&bus, "pilot", pilot, day_ahead).await?;
    let pilot_rate = pilot as f64 / piloting.elapsed().as_secs_f64();
    let lead = Duration::from_secs(30) + Duration::from_secs_f64(1.5 * jobs as f64 / pilot_rate);
    let due = Utc::now() + chrono::Duration::from_std(lead)?;
    eprintln!(
        "bench: E4 a pilot of {pilot} jobs created at {pilot_rate:.0}/s; creating {jobs} \
         one-shot jobs due at {due}, {:.0} s ahead",
        lead.as_secs_f64()
    );
    let creating = Instant::now();
    create_all(&bus, "burst", jobs, due).await?;
    let creation = creating.elapsed();
    eprintln!(
        "bench: E4 created {jobs} jobs in {:.1} s ({:.0}/s)",
        creation.as_secs_f64(),
        jobs as f64 / creation.as_secs_f64()
    );
    loop {
        let projected = count(&pool, "SELECT count(*) FROM scheduler.scheduler_jobs")
            .await
            .unwrap_or(0);
        if projected as u64 >= pilot + jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let projected_at = Utc::now();
    ensure!(
        projected_at < due,
        "the read model caught up at {projected_at}, after the due time {due}: creating and \
         projecting ran at less than two thirds of the pilot's rate"
    );
    eprintln!(
        "bench: E4 read model caught up {:.1} s before the due time",
        (due - projected_at).num_milliseconds() as f64 / 1000.0
    );
    let before = Scrape::of_all(&http, &metrics).await?;
    // Followed on the schedulers' metrics pages: counting the events table every 100 ms
    // scanned it (400,000 rows by the end of a burst of 100,000), on the cores the burst
    // runs on. The events table is counted once they say every run is done.
    let finished = loop {
        if runs_succeeded(&http, &scheduler_pages).await? >= jobs {
            let done = count(
                &pool,
                "SELECT count(*) FROM scheduler.events \
                 WHERE aggregate_type = 'job' AND event_type = 'RunSucceeded'",
            )
            .await?;
            ensure!(
                done as u64 >= jobs,
                "the schedulers counted {jobs} runs succeeded, the events table {done}"
            );
            break Utc::now();
        }
        ensure!(
            Utc::now() < due + chrono::Duration::seconds(600),
            "not every run succeeded 10 minutes after their due time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let last_finished: String = sqlx::query_scalar(
        "SELECT max(payload -> 'RunSucceeded' ->> 'finished_at') FROM scheduler.events \
         WHERE aggregate_type = 'job' AND event_type = 'RunSucceeded'",
    )
    .fetch_one(&pool)
    .await?;
    let last_finished: DateTime<Utc> = last_finished.parse().context("a finish time")?;
    ensure!(
        last_finished <= finished,
        "finish times come from this clock"
    );
    let runs = starts(&pool, "burst-").await?;
    let distinct: BTreeSet<(&str, DateTime<Utc>)> = runs
        .iter()
        .map(|(id, due, _)| (id.as_str(), *due))
        .collect();
    let jobs_run: BTreeSet<&str> = runs.iter().map(|(id, ..)| id.as_str()).collect();
    let late = lateness(&runs);
    let seconds = (last_finished - due).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let burst = json!({
        "system": "chronicle", "workload": "E4-one-shot", "schedulers": 3,
        "ops": jobs, "seconds": (seconds * 1000.0).round() / 1000.0,
        "runs_per_s": (jobs as f64 / seconds).round(),
        "lateness_p50_ms": percentile_ms(&late, 0.50),
        "lateness_p99_ms": percentile_ms(&late, 0.99),
        "lateness_max_ms": percentile_ms(&late, 1.0),
        "duplicates": runs.len() - distinct.len(),
        "misses": jobs as usize - jobs_run.len(),
        "create_per_s": (jobs as f64 / creation.as_secs_f64()).round(),
    });
    println!("{burst}");
    let stages = Scrape::of_all(&http, &metrics)
        .await?
        .breakdown(&before, &[]);
    println!(
        "{}",
        json!({"system": "chronicle", "workload": "E4-one-shot", "label": "burst-breakdown",
            "ops": jobs, "stages": stages})
    );

    // The log and the read model take a while to catch up with a burst this size; the next
    // workload measures a job in a system that has.
    let settling = Instant::now();
    loop {
        let behind = count(
            &pool,
            "SELECT (SELECT count(*) FROM scheduler.outbox) + \
                    (SELECT count(*) FROM scheduler.scheduler_jobs \
                     WHERE wake_at < now() + interval '1 hour')",
        )
        .await?;
        if behind == 0 {
            break;
        }
        ensure!(
            settling.elapsed() < Duration::from_secs(600),
            "{behind} events or jobs still behind after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "bench: E4 log and read model caught up {:.1} s after the last run",
        (Utc::now() - finished).num_milliseconds() as f64 / 1000.0
    );

    // A job due every second.
    eprintln!("bench: E4 a job due every second for {cron_seconds} s");
    let every_second = Schedule::Cron {
        expression: "* * * * * *".to_owned(),
        timezone: "UTC".to_owned(),
    };
    // Created a tenth of a second into a second: its first due time is 0.9 s away, as for
    // any job created ahead of its time (one created a moment before a due second may be
    // late for that first one: it cannot be run before it is known).
    let into_second = Duration::from_nanos(u64::from(Utc::now().timestamp_subsec_nanos()));
    tokio::time::sleep(Duration::from_millis(1_100).saturating_sub(into_second)).await;
    let created_at = Utc::now();
    create(
        &bus,
        "cron-every-second".to_owned(),
        spec("tick", every_second),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(cron_seconds + 2)).await;
    let end = created_at + chrono::Duration::seconds(i64::try_from(cron_seconds)?);
    let runs: Vec<_> = starts(&pool, "cron-")
        .await?
        .into_iter()
        .filter(|(_, due, _)| *due <= end)
        .collect();
    let due_times: BTreeSet<DateTime<Utc>> = runs.iter().map(|(_, due, _)| *due).collect();
    // Every whole second after creation up to the end was due.
    let expected = (created_at.timestamp() + 1..=end.timestamp()).count();
    let late = lateness(&runs);
    let cron = json!({
        "system": "chronicle", "workload": "E4-every-second", "schedulers": 3,
        "ops": runs.len(), "seconds": cron_seconds,
        "lateness_p50_ms": percentile_ms(&late, 0.50),
        "lateness_p99_ms": percentile_ms(&late, 0.99),
        "lateness_max_ms": percentile_ms(&late, 1.0),
        "duplicates": runs.len() - due_times.len(),
        "misses": expected.saturating_sub(due_times.len()),
    });
    println!("{cron}");
    if events > 0 {
        let burst = event_burst(&pool, &bus, &fresh.nats_url, events).await?;
        println!("{burst}");
    }
    Ok(())
}

/// A job run by every `StockReceived`, then `events` of them appended as fast as 64 writers
/// go (over 100 items): runs/s from the first append to the last run's finish, lateness
/// from each event's append (`recorded_at`) to its run's start, duplicates and misses.
async fn event_burst(
    pool: &PgPool,
    bus: &CommandExecutor,
    nats_url: &str,
    events: u64,
) -> anyhow::Result<serde_json::Value> {
    use chronicle_commerce::{InventoryCommand, InventoryItem};
    eprintln!("bench: E4 a job run by each of {events} events");
    let on_event = Schedule::OnEvent {
        types: vec!["StockReceived".to_owned()],
        context: Some("commerce".to_owned()),
    };
    create(bus, "on-event".to_owned(), spec("on-event", on_event)).await?;
    // In the log before the first event it is to run for.
    let waiting = Instant::now();
    while count(
        pool,
        "SELECT count(*) FROM scheduler.scheduler_jobs WHERE job_id = 'on-event'",
    )
    .await?
        == 0
    {
        ensure!(
            waiting.elapsed() < Duration::from_secs(60),
            "the job was not projected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let items: Vec<String> = (0..100).map(|i| format!("E4-{i:03}")).collect();
    for sku in &items {
        let create = InventoryCommand::Create {
            sku: sku.clone(),
            name: "Lamp".to_owned(),
            price_cents: 100,
            initial_stock: 0,
        };
        bus.execute::<InventoryItem>(sku, create, &(), &CommandContext::new())
            .await
            .map_err(|e| anyhow::anyhow!("creating {sku}: {e}"))?;
    }
    let first_append = Utc::now();
    let appended = futures::stream::iter(0..events)
        .map(|i| {
            let sku = &items[usize::try_from(i % 100).unwrap_or(0)];
            async move {
                let receive = InventoryCommand::Receive { quantity: 1 };
                bus.execute::<InventoryItem>(sku, receive, &(), &CommandContext::new())
                    .await
                    .map_err(|e| anyhow::anyhow!("receiving {sku}: {e}"))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for result in appended {
        result?;
    }
    let appending = (Utc::now() - first_append).num_milliseconds() as f64 / 1000.0;
    let finished = loop {
        let done = count(
            pool,
            "SELECT count(*) FROM scheduler.events WHERE aggregate_type = 'job' \
             AND aggregate_id = 'on-event' AND event_type = 'RunSucceeded'",
        )
        .await?;
        if done as u64 >= events {
            break Utc::now();
        }
        ensure!(
            (Utc::now() - first_append).num_seconds() < 900,
            "only {done} of {events} event runs succeeded after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Each run's event, and when it started.
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT (payload -> 'RunStarted' -> 'event' ->> 'stream_seq')::bigint, \
           payload -> 'RunStarted' ->> 'started_at' FROM scheduler.events \
         WHERE aggregate_type = 'job' AND aggregate_id = 'on-event' AND event_type = 'RunStarted' \
         ORDER BY sequence",
    )
    .fetch_all(pool)
    .await?;
    let seqs: BTreeSet<i64> = rows.iter().map(|(seq, _)| *seq).collect();
    let in_order = rows.windows(2).all(|w| w[0].0 <= w[1].0);
    // When each event was appended: its envelope's `recorded_at`, read from the stream.
    let client = chronicle_bus::connect(nats_url).await?;
    let stream = async_nats::jetstream::new(client)
        .get_stream(chronicle_bus::EVENTS_STREAM)
        .await?;
    let recorded = futures::stream::iter(rows.iter().map(|(seq, _)| *seq))
        .map(|seq| {
            let stream = &stream;
            async move {
                let message = stream.get_raw_message(u64::try_from(seq)?).await?;
                let envelope: serde_json::Value = serde_json::from_slice(&message.payload)?;
                let at: DateTime<Utc> = envelope["recorded_at"]
                    .as_str()
                    .context("recorded_at")?
                    .parse()?;
                anyhow::Ok(at)
            }
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await;
    let mut late = Vec::with_capacity(rows.len());
    for ((_, started), recorded) in rows.iter().zip(recorded) {
        let started: DateTime<Utc> = started.parse()?;
        late.push((started - recorded?).num_microseconds().unwrap_or(i64::MAX));
    }
    late.sort_unstable();
    let seconds = (finished - first_append).num_milliseconds() as f64 / 1000.0;
    Ok(json!({
        "system": "chronicle", "workload": "E4-events", "schedulers": 3,
        "ops": events, "seconds": seconds, "append_seconds": appending,
        "runs_per_s": (events as f64 / seconds).round(),
        "lateness_p50_ms": percentile_ms(&late, 0.50),
        "lateness_p99_ms": percentile_ms(&late, 0.99),
        "lateness_max_ms": percentile_ms(&late, 1.0),
        "duplicates": rows.len().saturating_sub(seqs.len()),
        "misses": usize::try_from(events)?.saturating_sub(seqs.len()),
        "in_log_order": in_order,
    }))
}
