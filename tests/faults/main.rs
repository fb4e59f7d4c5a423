//! The fault harness (issue 17): every role of the component list as its own `chronicle`
//! process on a nats-server and a PostgreSQL cluster of the harness's own, a mixed load over
//! every context through two gateways (orders, stock receipts, posts, chat over HTTP with a
//! member on the WebSocket, file uploads, one-shot jobs), and a seeded schedule of SIGKILLs:
//! one role (a gateway, the relay, a projector, the saga, the janitor, the scheduler, the
//! alert engine), nats-server or PostgreSQL, each started again after a while.
//!
//! Then, still under the load, nats-server is stopped for 8 s and PostgreSQL for 6 s (see
//! `outages.rs` for what must hold meanwhile). A second system runs on a cluster of three
//! nats-servers (the EVENTS stream and the files bucket with three replicas), where the
//! schedule kills whichever node leads the EVENTS stream at the time. A third runs the split
//! layout: commerce and chat each on a PostgreSQL cluster of its own
//! (`CHRONICLE_<CONTEXT>_DATABASE_URL`), three clusters, where the schedule kills each cluster
//! in turn, a role between two, and every check reads each context on its own store.
//!
//! Then, for each system, with every process back: nothing stalled (the outbox drains, no reader of the log
//! lags, every order is decided and every job has run), nothing lost (every 2xx is in the
//! store, every acknowledged message in the history and on the WebSocket member's screen,
//! every file downloadable with its bytes), nothing duplicated (every event in the stream
//! once and in its aggregate's order, each reservation and order decision made once, each
//! job run succeeded once), stock never negative, nothing parked, and every read model equal
//! to its rebuild from the log by `chronicle replay --all`.
//!
//! ```sh
//! cargo test -p chronicle --test faults                      # CI: 75 s + 37 s + 37 s of load, 34 kills
//! cargo test -p chronicle --test faults -- --soak            # 10 + 5 + 5 minutes
//! cargo test -p chronicle --test faults -- --seed 42 --seconds 120
//! cargo test -p chronicle --test faults -- --only cluster    # or --only single, --only split
//! ```
//!
//! The seed is printed first; the same seed gives the same kill schedule (which target,
//! when, for how long) and the same load requests.

mod checks;
mod load;
mod outages;
mod rng;
mod system;

use std::{
    collections::BTreeMap,
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::{Duration, Instant},
};

use rng::Rng;
use system::{Nats, System, Target};

struct Options {
    seed: u64,
    seconds: u64,
    kills: usize,
    /// `--only single`, `--only cluster` or `--only split`: one of the three systems.
    only: Option<String>,
}

/// `--seed N`, `--seconds S`, `--kills K`, `--soak`; a bare word is a test-name filter (as
/// libtest takes), which runs nothing unless it matches `faults`.
fn options() -> Option<Options> {
    let mut options = Options {
        seed: std::env::var("CHRONICLE_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            }),
        seconds: 75,
        kills: 24,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |what: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} takes a number"))
        };
        match arg.as_str() {
            "--seed" => options.seed = number("--seed"),
            "--seconds" => options.seconds = number("--seconds"),
            "--kills" => options.kills = number("--kills") as usize,
            "--only" => options.only = args.next(),
            "--soak" => {
                options.seconds = 600;
                options.kills = 200;
            }
            "--list" => {
                println!("faults: test");
                return None;
            }
            flag if flag.starts_with('-') => {}
            filter if !"faults".contains(filter) => return None,
            _ => {}
        }
    }
    Some(options)
}

fn main() {
    let Some(options) = options() else {
        println!("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out");
        return;
    };
    println!(
        "faults: seed {} ({} s of load, {} kills; replay with --seed {})",
        options.seed, options.seconds, options.kills, options.seed
    );
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(&options));
    println!(
        "test faults ... ok ({:.0} s)\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
        started.elapsed().as_secs_f64()
    );
}

async fn run(options: &Options) {
    let only = |name: &str| options.only.as_deref().is_none_or(|o| o == name);
    if only("single") {
        println!("faults: one nats-server: random kills, then outages of each server");
        scenario(options, Nats::Single, options.seconds, options.kills).await;
    }
    let seconds = (options.seconds / 2).max(20);
    if only("cluster") {
        let kills = (seconds / 8).max(3) as usize;
        println!("faults: a cluster of three nats-servers (EVENTS R3): the stream leader killed {kills} times");
        scenario(options, Nats::Cluster, seconds, kills).await;
    }
    if only("split") {
        // Each of the three PostgreSQL clusters at least once, a role between two kills.
        let kills = ((seconds / 6) as usize).max(2 * (1 + system::SPLIT.len()));
        println!(
            "faults: commerce and chat each on a PostgreSQL cluster of its own: {kills} kills, every cluster in turn"
        );
        scenario(options, Nats::Split, seconds, kills).await;
    }
}

/// One system under load for `seconds` with `kills` kills (random targets for one node; the
/// EVENTS stream's leader for a cluster), the outages (one node), then every check.
async fn scenario(options: &Options, mode: Nats, seconds: u64, kills: usize) {
    let system = System::start(mode).await;
    println!(
        "faults: logs of every process in {}",
        system.log_dir().display()
    );
    let client = load::Client::new(system.gateways.clone());
    let stores = checks::Stores::connect(&system.postgres.url, &system.store_urls()).await;
    let nats = chronicle_bus::connect(&system.nats_url())
        .await
        .expect("connect to nats-server");
    let cast = Arc::new(load::prepare(&client).await);
    let system = Arc::new(Mutex::new(system));

    let acked = Arc::new(Mutex::new(load::Acked::default()));
    let watched = Arc::new(Mutex::new(load::Watched::default()));
    let stop_load = Arc::new(AtomicBool::new(false));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(load::watch(
        client.bases().to_vec(),
        cast.bob.1.clone(),
        cast.room.clone(),
        watched.clone(),
        stop_watch.clone(),
    ));
    let load = tokio::spawn(load::run(
        client.clone(),
        cast.clone(),
        acked.clone(),
        stop_load.clone(),
        options.seed,
    ));

    // The kill schedule runs on a thread of its own: starting PostgreSQL again blocks.
    let schedule = {
        let system = system.clone();
        let seed = options.seed;
        let pick = match mode {
            Nats::Single => Pick::Deck,
            Nats::Cluster => Pick::StreamLeader(tokio::runtime::Handle::current(), nats.clone()),
            Nats::Split => Pick::Clusters,
        };
        std::thread::spawn(move || chaos(&system, seed, Duration::from_secs(seconds), kills, &pick))
    };
    let killed = tokio::task::spawn_blocking(move || schedule.join())
        .await
        .expect("the schedule's thread ends")
        .expect("the kill schedule panicked");
    // From here a tender starts what exits or is due back, as the schedule did.
    let tending = Arc::new(AtomicBool::new(false));
    let tender = {
        let (system, tending) = (system.clone(), tending.clone());
        std::thread::spawn(move || {
            while !tending.load(std::sync::atomic::Ordering::Relaxed) {
                system.lock().unwrap().tend();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let outages = match mode {
        Nats::Single => Some(outages::run(&system, &client, &cast, &acked).await),
        Nats::Cluster | Nats::Split => None,
    };
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.expect("the load ends");
    let acked_now = std::mem::take(&mut *acked.lock().unwrap());
    let mut by_target: BTreeMap<String, usize> = BTreeMap::new();
    for name in &killed {
        *by_target.entry(name.clone()).or_default() += 1;
    }
    println!("faults: {} kills: {by_target:?}", killed.len());
    println!(
        "faults: {} requests, {} answered 2xx: {} versioned commands, {} orders ({} by checkout), {} chat messages, {} files, {} jobs",
        acked_now.sent,
        acked_now.ok,
        acked_now.versions.len(),
        acked_now.orders.len(),
        acked_now.checkouts.len(),
        acked_now.messages.len(),
        acked_now.files.len(),
        acked_now.jobs.len()
    );

    let fail = |what: String, system: &Arc<Mutex<System>>| -> ! {
        // Another thread may have panicked holding it; the logs are still worth showing.
        let mut system = system
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The logs of every process stay for a look after the run.
        system.dir.disable_cleanup(true);
        eprintln!("faults: the logs stay in {}", system.dir.path().display());
        for role in &system.roles {
            eprintln!(
                "--- {} (exited by itself {} times)\n{}",
                role.name,
                role.exits,
                role.log_tail(15)
            );
        }
        panic!("faults (seed {}, {mode:?}): {what}", options.seed);
    };

    match outages {
        Some(Ok(seen)) => println!(
            "faults: ok: NATS away {:.1} s: {} commands committed, outbox depth {} seen, health and metrics said so; \
             PostgreSQL away {:.1} s: {} commands answered 503 unavailable, the slowest in {:.2} s",
            seen.nats_down_for.as_secs_f64(),
            seen.committed_without_nats,
            seen.outbox_depth_seen,
            seen.postgres_down_for.as_secs_f64(),
            seen.refused_without_postgres,
            seen.slowest_refusal.as_secs_f64()
        ),
        Some(Err(e)) => fail(e, &system),
        None => {}
    }

    let settled = match checks::caught_up(
        &stores,
        &client,
        &cast.staff,
        &acked_now,
        Duration::from_secs(120),
    )
    .await
    {
        Ok(t) => t,
        Err(e) => fail(e, &system),
    };
    println!(
        "faults: caught up {:.1} s after the last fault",
        settled.as_secs_f64()
    );

    let steps: Vec<(&str, Result<usize, String>)> = vec![
        (
            "acknowledged commands, messages and files stored",
            checks::acknowledged_are_stored(
                &stores,
                &client,
                &cast.bob.1,
                &cast.bob.1,
                &cast.room,
                &acked_now,
            )
            .await,
        ),
        (
            "events in the stream once, in aggregate order",
            checks::stream_matches_store(&stores, &nats).await,
        ),
        (
            "stock, saga steps, job runs, parked events",
            checks::invariants(&stores, &acked_now).await,
        ),
    ];
    for (what, result) in steps {
        match result {
            Ok(n) => println!("faults: ok: {what} ({n} checked)"),
            Err(e) => fail(e, &system),
        }
    }

    // The WebSocket member has every acknowledged message once the hub has caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let websocket = loop {
        let result = checks::websocket_complete(&watched.lock().unwrap(), &acked_now);
        if result.is_ok() || Instant::now() > deadline {
            break result;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.await;
    match websocket {
        Ok(n) => {
            let w = watched.lock().unwrap();
            println!(
                "faults: ok: the WebSocket member has every acknowledged message ({n}; {} connections, {} gaps resubscribed)",
                w.connections, w.gaps
            );
        }
        Err(e) => fail(e, &system),
    }

    // Read models against their rebuild from the log, at one position: every role but the
    // projectors is stopped first (nothing can write an event any more), and the projectors
    // are left to finish.
    system.lock().unwrap().retire_all_but("projector-");
    let mut at = checks::checkpoints(&stores).await;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = checks::checkpoints(&stores).await;
        if now == at {
            break;
        }
        at = now;
    }
    let live = checks::read_models(&stores).await;
    let rows: usize = live.values().map(Vec::len).sum();
    // Rebuilt from the log, then from the event stores (what `replay` picks by default).
    for (source, args) in [
        ("stream", &["replay", "--all", "--from", "stream"][..]),
        ("the default source", &["replay", "--all"][..]),
    ] {
        let out = system.lock().unwrap().run_once(args);
        let rebuilt = checks::read_models(&stores).await;
        let differences = checks::differences(&live, &rebuilt);
        if !differences.is_empty() {
            fail(
                format!(
                    "read models differ from their rebuild from {source} (live checkpoints {at:?}; the replay said {out}):\n{}",
                    differences.join("\n")
                ),
                &system,
            );
        }
        let from_store = out.matches("\"source\":\"postgres\"").count();
        println!(
            "faults: ok: {} read-model tables ({rows} rows) equal their rebuild from {source} ({} projections replayed, {from_store} from the event stores)",
            live.len(),
            out.lines().count()
        );
    }
    let (exits, which) = {
        let system = system.lock().unwrap();
        let which: Vec<String> = system
            .roles
            .iter()
            .filter(|r| r.exits > 0)
            .map(|r| format!("{} {}", r.name, r.exits))
            .collect();
        (system.roles.iter().map(|r| r.exits).sum::<u32>(), which)
    };
    println!(
        "faults: 0 lost, 0 duplicated, 0 stalled; roles that exited on their own and were started again: {exits}{}",
        if which.is_empty() { String::new() } else { format!(" ({})", which.join(", ")) }
    );

    tending.store(true, std::sync::atomic::Ordering::Relaxed);
    tender.join().expect("the tender thread");
}

/// How the schedule chooses what to kill.
enum Pick {
    /// From decks shuffled by the seed, every target once per deck, so a run of at least as
    /// many kills as targets hits every role and every server.
    Deck,
    /// The nats-server leading the EVENTS stream at that moment.
    StreamLeader(tokio::runtime::Handle, async_nats::Client),
    /// Each PostgreSQL cluster in turn (the main one, then each context's own), and a
    /// random role between two of them.
    Clusters,
}

/// Kills `kills` targets at evenly spread, jittered times over `length`, each down for
/// 0.2–1.5 s (the servers 0.5–3 s), tending the rest meanwhile. The names of what it
/// killed, in order.
fn chaos(
    system: &Mutex<System>,
    seed: u64,
    length: Duration,
    kills: usize,
    pick: &Pick,
) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let all = system.lock().unwrap().targets();
    let mut deck: Vec<Target> = Vec::new();
    let every = length / kills.max(1) as u32;
    let started = Instant::now();
    let mut killed = Vec::new();
    let mut next = started + every.mul_f64(0.5 + rng.unit() * 0.5);
    loop {
        let now = Instant::now();
        let due = killed.len() < kills && now >= next && now < started + length;
        let target = match (due, pick) {
            (false, _) => None,
            (true, Pick::Deck) => {
                if deck.is_empty() {
                    deck = all.clone();
                    for i in (1..deck.len()).rev() {
                        deck.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                }
                deck.pop()
            }
            (true, Pick::StreamLeader(runtime, nats)) => {
                runtime.block_on(stream_leader(nats)).map(Target::Nats)
            }
            (true, Pick::Clusters) => {
                let clusters: Vec<&Target> = all
                    .iter()
                    .filter(|t| matches!(t, Target::Postgres(_)))
                    .collect();
                let roles: Vec<&Target> = all
                    .iter()
                    .filter(|t| matches!(t, Target::Role(_)))
                    .collect();
                let n = killed.len();
                Some(if n % 2 == 0 {
                    clusters[(n / 2) % clusters.len()].clone()
                } else {
                    roles[rng.below(roles.len() as u64) as usize].clone()
                })
            }
        };
        let mut system = system.lock().unwrap();
        system.tend();
        if let Some(target) = target {
            let down = match target {
                Target::Role(_) => Duration::from_millis(200 + rng.below(1300)),
                Target::Nats(_) | Target::Postgres(_) => {
                    Duration::from_millis(500 + rng.below(2500))
                }
            };
            let name = system.target_name(&target);
            println!(
                "faults: {:>5.1} s kill -9 {name}, back in {:.1} s",
                started.elapsed().as_secs_f64(),
                down.as_secs_f64()
            );
            system.kill(&target, down);
            killed.push(name);
            next = now + every.mul_f64(0.5 + rng.unit());
        }
        if now >= started + length && system.all_up() {
            return killed;
        }
        drop(system);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The index of the node (`n1` is 0) leading the EVENTS stream, if one does now.
async fn stream_leader(nats: &async_nats::Client) -> Option<usize> {
    let js = async_nats::jetstream::new(nats.clone());
    let mut stream = js.get_stream(chronicle_bus::EVENTS_STREAM).await.ok()?;
    let info = stream.info().await.ok()?;
    let leader = info.cluster.as_ref()?.leader.as_ref()?;
    leader
        .strip_prefix('n')?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}
