//! `chronicle`: every Chronicle process as a subcommand.
//!
//! # Layout
//!
//! - `settings`: the typed configuration (`CHRONICLE_*`, `DATABASE_URL`, `NATS_URL`).
//! - `engines`: `chronicle up`'s own nats-server and PostgreSQL when no URLs are given.
//! - `processes`: gateway, relay, projectors and the contexts' processes as tasks sharing
//!   one shutdown signal; replay, and the operator commands (`projections`, `users`).
//! - `reference`: `chronicle config`, the settings in effect and the configuration
//!   reference (`docs/configuration.md`), written from the command line itself.
//! - `tail`: `chronicle events tail`, the log as it grows.
//!
//! `chronicle up` runs them all in one process; `gateway`, `relay`, `project` and each
//! context's process (`saga orders`, `scheduler`, ...) run one each against servers named by
//! `DATABASE_URL` and `NATS_URL`.

/// mimalloc instead of glibc's malloc: replay and the write path allocate many small
/// objects (decoded envelopes, JSON values); W2's replay went from ~60k to ~100k events/s.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod engines;
mod processes;
mod reference;
mod settings;
mod tail;

use anyhow::Context;
use chronicle::components::Component;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chronicle",
    version,
    about = "An event-sourced CQRS platform on NATS JetStream and PostgreSQL"
)]
struct Cli {
    #[command(flatten)]
    settings: settings::Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything on this machine (the default): its own nats-server and PostgreSQL unless
    /// NATS_URL / DATABASE_URL are set, then gateway, relay, every projector and saga.
    Up,
    /// The HTTP gateway only.
    Gateway,
    /// The outbox relay only (run several for availability: one is active at a time).
    Relay,
    /// One projector, by the name of its read model (`inventory`, `orders`,
    /// `chat_history`, ...: `chronicle projections status` lists them), or all with --all.
    Project {
        /// The read model to keep.
        name: Option<String>,
        /// Every projector, in one process.
        #[arg(long)]
        all: bool,
    },
    /// Rebuilds a read model from the event stores (or the log) and swaps it in; its
    /// projector may keep running.
    Replay {
        /// The read model to rebuild.
        name: Option<String>,
        /// Every read model, one after the other.
        #[arg(long)]
        all: bool,
        /// Events per write transaction. Large batches rewrite each read-model row fewer
        /// times (W2: 5,000 → 50,000 took 1M events from ~35k to ~44k events/s).
        #[arg(long, default_value_t = 50_000)]
        batch: usize,
        /// Where to read the events: `auto` (the event stores in PostgreSQL when they can
        /// rebuild the read model, else the stream), `postgres` or `stream` (JetStream). The
        /// line printed for each read model says which it used.
        #[arg(long, value_enum, default_value_t = processes::Source::Auto)]
        from: processes::Source,
    },
    /// Projection and saga checkpoints, lag and parked events.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// The event contracts: JSON Schemas of the envelope and every event type and version.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// The log itself.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Prints `compose.yaml` for the component list (the committed file is its output), or
    /// with --prometheus `deploy/prometheus/compose-prometheus.yml`, or with `--split
    /// commerce,chat` the layout with those contexts each on a PostgreSQL of its own
    /// (`compose-split.yaml`).
    Compose {
        /// Prometheus's scrape configuration for the compose file instead.
        #[arg(long)]
        prometheus: bool,
        /// Contexts on a PostgreSQL service of their own, comma-separated.
        #[arg(long, value_delimiter = ',')]
        split: Vec<String>,
    },
    /// The settings in effect, one `VARIABLE=value  # source` line each (secrets hidden),
    /// or with --markdown the configuration reference (`docs/configuration.md`).
    Config {
        /// Print the reference of every setting and command, as Markdown.
        #[arg(long)]
        markdown: bool,
    },
    /// User administration.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// One of the contexts' processes, by the arguments that run it (`saga orders`,
    /// `janitor`, `scheduler`, `alert-engine`: see the list below).
    #[command(external_subcommand)]
    Process(Vec<String>),
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// One JSON line per projection and saga: checkpoint, lag, parked events.
    Status,
    /// The parked events of one projection or saga (all when none is named), a JSON line each.
    Parked {
        /// The projection or saga.
        name: Option<String>,
    },
    /// Asks the running projection or saga to re-apply its parked events (or the one at --seq).
    Retry {
        /// The projection or saga.
        name: String,
        /// The stream sequence of the one parked event to retry.
        #[arg(long)]
        seq: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Writes `envelope.schema.json`, `events/<context>.<aggregate>.<Event>.v<N>.schema.json`
    /// and `index.json` into DIR.
    Export {
        /// Where to write them (made when missing).
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Prints events as they are appended (or from --from), one per line.
    Tail {
        /// A subject filter, NATS wildcards allowed (default `events.>`).
        #[arg(long)]
        subject: Option<String>,
        /// The stream sequence to start from (default: new events only).
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// One JSON object per line: `stream_seq`, `subject`, `envelope`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Grants a role (`staff`) to a user, from their next login.
    Grant {
        /// The user's username.
        username: String,
        /// The role: `staff`.
        role: String,
    },
}

/// The whole command line: Chronicle's settings and subcommands, and the contexts' own
/// settings and processes, joined from the list of contexts.
fn command() -> clap::Command {
    use clap::CommandFactory;
    let processes: Vec<String> = chronicle::contexts::processes()
        .map(|p| format!("  {:<14} {}", p.args.join(" "), p.about))
        .collect();
    chronicle::contexts::augment(Cli::command())
        .after_help(format!("Processes:\n{}", processes.join("\n")))
}

fn main() -> anyhow::Result<()> {
    use clap::FromArgMatches;
    let matches = command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    chronicle::contexts::configure(&matches, &mut cli.settings.contexts)
        .unwrap_or_else(|e| e.exit());
    if let Some(Command::Config { markdown }) = cli.command {
        let command = command();
        if markdown {
            let processes: Vec<(String, &str)> = chronicle::contexts::processes()
                .map(|p| (p.args.join(" "), p.about))
                .collect();
            print!(
                "{}",
                reference::markdown(&command, &chronicle::contexts::names(), &processes)
            );
        } else {
            print!("{}", reference::effective(&command, &matches));
        }
        return Ok(());
    }
    // Kept to the end: dropping it flushes the spans not yet exported.
    let _telemetry = chronicle_telemetry::init_logs(cli.settings.telemetry.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.settings;
    match cli.command.unwrap_or(Command::Up) {
        Command::Up => processes::up(settings).await,
        Command::Gateway => processes::single(settings, vec![Component::Gateway]).await,
        Command::Relay => processes::single(settings, vec![Component::Relay]).await,
        Command::Process(args) => {
            let process = processes::process_component(&args)?;
            processes::single(settings, vec![process]).await
        }
        Command::Project { name, all } => {
            let projectors = processes::projector_components(name.as_deref(), all)?;
            processes::single(settings, projectors).await
        }
        Command::Schemas {
            command: SchemasCommand::Export { dir },
        } => {
            let written = chronicle::schemas::export(&dir)?;
            println!("chronicle: wrote {written} schemas into {}", dir.display());
            Ok(())
        }
        Command::Events {
            command:
                EventsCommand::Tail {
                    subject,
                    from,
                    count,
                    json,
                },
        } => {
            let nats_url = settings.nats_url()?;
            tail::run(
                &nats_url,
                tail::Tail {
                    subject,
                    from,
                    count,
                    json,
                },
            )
            .await
        }
        Command::Compose { prometheus, split } => {
            if prometheus {
                print!("{}", chronicle::components::compose_prometheus_yaml());
                return Ok(());
            }
            let contexts = chronicle::components::split_contexts(&split)?;
            print!("{}", chronicle::components::compose_yaml_split(&contexts));
            Ok(())
        }
        Command::Replay {
            name,
            all,
            batch,
            from,
        } => {
            let names = processes::projection_names(name.as_deref(), all)?;
            processes::replay(settings, names, batch, from).await
        }
        Command::Projections { command } => match command {
            ProjectionsCommand::Status => processes::status(settings).await,
            ProjectionsCommand::Parked { name } => processes::parked(settings, name).await,
            ProjectionsCommand::Retry { name, seq } => processes::retry(settings, name, seq).await,
        },
        Command::Users {
            command: UsersCommand::Grant { username, role },
        } => processes::grant(settings, username, role).await,
        Command::Config { .. } => unreachable!("answered before the runtime starts"),
    }
}
