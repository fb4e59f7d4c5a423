//! The benchmark harness of docs/benchmarks.md.
//!
//! # Layout
//!
//! - `servers`: a durable PostgreSQL cluster and a nats-server with `sync_interval: always`
//!   (or `DATABASE_URL` / `NATS_URL`), a fresh database and stream per measurement.
//! - `w1`, `w2`, `w3`: the reference workload ES-1, each against Chronicle and, where
//!   docs/benchmarks.md asks, plain cqrs-es + postgres-es (`"system":"baseline-cqrs-es"`).
//! - `report`: one JSON line per measurement on stdout; progress goes to stderr.
//!
//! `cargo run --release -p bench -- es1` runs all of ES-1 once; `--runs 3` repeats W1.

/// The allocator the `chronicle` binary uses too: replay and the write path allocate many
/// small objects (decoded envelopes, JSON), where glibc's malloc spent a fifth of the time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod breakdown;
mod e1;
mod e2;
mod e3;
mod e4;
mod process;
mod report;
mod servers;
mod thumbs;
mod w1;
mod w2;
mod w3;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Chronicle's benchmark harness (docs/benchmarks.md)"
)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// All of ES-1: W1, W2, W3.
    Es1 {
        /// Repeat W1 this many times (medians are the reader's job).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Events for W2's large size.
        #[arg(long, default_value_t = 1_000_000)]
        large: u64,
    },
    /// W1: 1,000 items × 20 commands at concurrency 1 and 16.
    W1 {
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Only the runs whose `system/label` contains this (`chronicle/cache`).
        #[arg(long)]
        only: Option<String>,
        /// One concurrency level instead of 1 and 16.
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// W2: replay the log, in memory and into the inventory read model.
    W2 {
        #[arg(long, default_value_t = 1_000_000)]
        large: u64,
    },
    /// W3: one aggregate with 10,000 events.
    W3,
    /// E1: commands through the gateway's HTTP API (a mix of order placements and stock
    /// receipts over 64 connections), with the E1 reference in the same run
    /// (`cargo build --release -p chronicle` first).
    E1 {
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Open-loop arrival rate, commands per second.
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Length of each phase, seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Order placements in the mix, percent (the rest are stock receipts).
        #[arg(long, default_value_t = 50)]
        orders_percent: u64,
        /// One command in this many is read back with `?min_version=` (projection lag).
        #[arg(long, default_value_t = 10)]
        probe_every: u64,
    },
    /// E2: chat fan-out over WebSocket to one room's members, then idle connections
    /// (`cargo build --release -p chronicle` first: it runs as its own process).
    E2 {
        #[arg(long, default_value_t = 1_000)]
        members: usize,
        /// Messages per second, open loop.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Idle connections held afterwards: each level in turn, comma-separated (docs/benchmarks.md
        /// asks for 10,000 and 100,000; the first level is a base for the growth per connection).
        #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000, 100_000])]
        idle: Vec<usize>,
    },
    /// E3: a file uploaded in chunks over HTTP against the same bytes put straight into the
    /// object store, with the gateway's peak RSS (`cargo build --release -p chronicle` first).
    E3 {
        /// The file's size in MiB.
        #[arg(long, default_value_t = 1_024)]
        mib: u64,
    },
    /// E4: one-shot jobs all due at one instant, then a job due every second, with three
    /// scheduler processes (`cargo build --release -p chronicle` first).
    E4 {
        #[arg(long, default_value_t = 100_000)]
        jobs: u64,
        /// How long the every-second job runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// How many events the burst for a job triggered by events appends (0: none).
        #[arg(long, default_value_t = 10_000)]
        events: u64,
    },
    /// Thumbnails of a 12-megapixel photo, JPEG and PNG (CPU only).
    Thumbnails,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if matches!(cli.workload, Workload::Thumbnails) {
        return thumbs::run();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let servers = servers::Servers::start().await?;
        match cli.workload {
            Workload::Es1 { runs, large } => {
                for _ in 0..runs {
                    w1::run(&servers, None, None).await?;
                }
                w2::run(&servers, large).await?;
                w3::run(&servers).await?;
            }
            Workload::W1 {
                runs,
                only,
                concurrency,
            } => {
                for _ in 0..runs {
                    w1::run(&servers, only.as_deref(), concurrency).await?;
                }
            }
            Workload::E1 {
                runs,
                rate,
                seconds,
                orders_percent,
                probe_every,
            } => {
                anyhow::ensure!(
                    orders_percent <= 100 && probe_every > 0 && rate > 0,
                    "bad E1 options"
                );
                for _ in 0..runs {
                    e1::run(
                        &servers,
                        e1::Options {
                            rate,
                            seconds,
                            orders_percent,
                            probe_every,
                        },
                    )
                    .await?;
                }
            }
            Workload::W2 { large } => w2::run(&servers, large).await?,
            Workload::W3 => w3::run(&servers).await?,
            Workload::E2 {
                members,
                rate,
                seconds,
                idle,
            } => e2::run(&servers, members, rate, seconds, &idle).await?,
            Workload::E3 { mib } => e3::run(&servers, mib).await?,
            Workload::E4 {
                jobs,
                seconds,
                events,
            } => e4::run(&servers, jobs, seconds, events).await?,
            Workload::Thumbnails => unreachable!("run before the servers start"),
        }
        anyhow::Ok(())
    })
}
