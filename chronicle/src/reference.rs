//! `chronicle config`: the settings in effect, and with `--markdown` the configuration
//! reference (`docs/configuration.md`), both written from the command line itself: every
//! setting is a clap argument with its variable, default and doc comment, so a setting
//! added to the code is in the reference the next time it is generated
//! (`chronicle/tests/configuration.rs` fails while the committed page differs).

use std::fmt::Write as _;

/// Variables read from the environment only, outside the command line: name, what it
/// changes. The context databases (`CHRONICLE_<CONTEXT>_DATABASE_URL`) are added from the
/// list of contexts.
const ENVIRONMENT_ONLY: &[(&str, &str)] = &[
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "Where to export traces over OTLP/HTTP (`http://collector:4318`). Unset: no spans \
         are exported.",
    ),
    (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "`http/protobuf` (the default) or `http/json`.",
    ),
    (
        "OTEL_SERVICE_NAME",
        "The service name on exported spans (default `chronicle`).",
    ),
    (
        "CHRONICLE_TRACE_FILTER",
        "Which spans are exported, as a `tracing` filter (default \
         `info,sqlx=warn,async_nats=warn,h2=warn,hyper=warn,reqwest=warn`).",
    ),
    (
        "RUST_LOG",
        "Which log lines are written, as a `tracing` filter (default \
         `info,sqlx=warn,async_nats=warn`).",
    ),
    (
        "CHRONICLE_NATS_SERVER",
        "The `nats-server` binary `chronicle up` and the tests start (default: found on \
         `PATH`, then where `scripts/setup` installs it).",
    ),
    (
        "CHRONICLE_PG_BIN",
        "The directory of PostgreSQL's server binaries (`initdb`, `postgres`) `chronicle up` \
         and the tests start (default: Debian's newest under `/usr/lib/postgresql`, then \
         `PATH`).",
    ),
];

/// Variables only the test suites read.
const TEST_ONLY: &[(&str, &str)] = &[
    (
        "CHRONICLE_FAILPOINTS",
        "Fault points armed in a process, for the kill tests (`name=action;...`). A \
         production process arms none.",
    ),
    (
        "CHRONICLE_FAULTS_SEED",
        "The fault suite's seed (`tests/faults`); the suite prints the one it used.",
    ),
    (
        "CHRONICLE_FUZZ_SEED",
        "Schemathesis's seed (a fixed one by default; `random` explores, and prints the \
         seed that replays a finding).",
    ),
    (
        "CHRONICLE_FUZZ_SECONDS",
        "How long schemathesis generates requests (default 90).",
    ),
];

/// The reference page, from `command` (the whole command line, contexts' settings
/// included), the contexts' names and their processes (`args`, `about`).
pub fn markdown(
    command: &clap::Command,
    contexts: &[&str],
    processes: &[(String, &str)],
) -> String {
    let mut page = String::from(
        "# Configuration\n\n\
         <!-- Written by `chronicle config --markdown`; `chronicle/tests/configuration.rs` \
         fails when this page differs from what it prints. Do not edit by hand. -->\n\n\
         Every setting is an environment variable and a flag of the same meaning \
         (`CHRONICLE_HTTP_ADDR=0.0.0.0:8080` or `--http-addr 0.0.0.0:8080`), read by every \
         subcommand; a flag wins over its variable. Durations take a unit (`500ms`, `90s`, \
         `15m`, `2h`, `15d`) or are a number of seconds. `chronicle config` prints the \
         settings in effect and where each came from; secrets are never printed.\n\n\
         ## Settings\n\n\
         | variable | flag | default | what it changes |\n|---|---|---|---|\n",
    );
    for arg in settings(command) {
        let variable = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let flag = arg
            .get_long()
            .map(|l| format!("`--{l}`"))
            .unwrap_or_default();
        let _ = writeln!(
            page,
            "| {variable} | {flag} | {} | {} |",
            default(arg),
            cell(&help(arg))
        );
    }
    page.push_str(
        "\n## Read from the environment only\n\n| variable | what it changes |\n|---|---|\n",
    );
    for context in contexts {
        let _ = writeln!(
            page,
            "| `CHRONICLE_{}_DATABASE_URL` | The `{context}` context on a PostgreSQL of its \
             own: its schema (event store, outbox, read models, everything it keeps) is \
             there; `DATABASE_URL` serves the rest. A variable of this shape naming no \
             context stops the process. |",
            context.to_ascii_uppercase()
        );
    }
    for (name, what) in ENVIRONMENT_ONLY {
        let _ = writeln!(page, "| `{name}` | {what} |");
    }
    page.push_str("\n## Commands\n\n`chronicle` with no subcommand runs `chronicle up`.\n");
    for sub in command.get_subcommands() {
        subcommand(&mut page, sub, "chronicle");
    }
    page.push_str(
        "\n### The contexts' processes\n\nEach runs alone by its arguments, against \
         `DATABASE_URL` and `NATS_URL`:\n\n| command | what it does |\n|---|---|\n",
    );
    for (args, about) in processes {
        let _ = writeln!(page, "| `chronicle {args}` | {} |", cell(about));
    }
    page.push_str(
        "\n## For the test suites\n\nSet by the tests; a deployment leaves them unset:\n\n\
         | variable | what it changes |\n|---|---|\n",
    );
    for (name, what) in TEST_ONLY {
        let _ = writeln!(page, "| `{name}` | {what} |");
    }
    page
}

/// The settings in effect, one `VARIABLE=value` line each, with where it came from (a
/// default, the environment or a flag); a secret shows only whether it is set.
pub fn effective(command: &clap::Command, matches: &clap::ArgMatches) -> String {
    let mut lines = String::new();
    for arg in settings(command) {
        let Some(env) = arg.get_env() else { continue };
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => "flag",
            Some(clap::parser::ValueSource::EnvVariable) => "environment",
            Some(clap::parser::ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let value = if arg.is_hide_env_values_set() {
            if source == "unset" { "" } else { "(hidden)" }.to_owned()
        } else {
            matches
                .get_raw(id)
                .map(|values| {
                    values
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        };
        let _ = writeln!(lines, "{}={value}  # {source}", env.to_string_lossy());
    }
    lines
}

/// The settings: every named argument of the top level (the global ones).
fn settings(command: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    command
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !matches!(a.get_id().as_str(), "help" | "version"))
}

fn subcommand(page: &mut String, command: &clap::Command, parent: &str) {
    if command.get_name() == "help" {
        return;
    }
    let path = format!("{parent} {}", command.get_name());
    let usage: Vec<String> = command
        .get_arguments()
        .filter(|a| !a.is_global_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| {
            let value = a.get_id().as_str().to_ascii_uppercase();
            let part = match a.get_long() {
                Some(long) if a.get_action().takes_values() => format!("--{long} <{value}>"),
                Some(long) => format!("--{long}"),
                None => format!("<{value}>"),
            };
            if a.is_required_set() {
                part
            } else {
                format!("[{part}]")
            }
        })
        .collect();
    let _ = write!(page, "\n### `{path}");
    for part in &usage {
        let _ = write!(page, " {part}");
    }
    page.push_str("`\n\n");
    if let Some(about) = command.get_long_about().or_else(|| command.get_about()) {
        let _ = writeln!(page, "{}", one_paragraph(&about.to_string()));
    }
    let options: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| !a.is_global_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    if !options.is_empty() {
        page.push('\n');
        for arg in options {
            let name = match arg.get_long() {
                Some(long) => format!("--{long}"),
                None => arg.get_id().as_str().to_ascii_uppercase(),
            };
            let default = default(arg);
            let help = help(arg);
            let _ = write!(page, "- `{name}`");
            if !help.is_empty() {
                let _ = write!(page, ": {}", one_paragraph(&help));
            }
            if !default.is_empty() {
                let _ = write!(page, " Default: {default}.");
            }
            page.push('\n');
        }
    }
    for sub in command.get_subcommands() {
        subcommand(page, sub, &path);
    }
}

/// The default, and the values it may take when clap knows them.
fn default(arg: &clap::Arg) -> String {
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| format!("`{}`", v.to_string_lossy()))
        .collect();
    let mut text = match defaults.as_slice() {
        [] if !arg.get_action().takes_values() => "off".to_owned(),
        [] => "unset".to_owned(),
        [empty] if empty == "``" => "empty".to_owned(),
        _ => defaults.join(", "),
    };
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    // A switch's `true`/`false` say nothing its help does not.
    let switch = possible.len() == 2 && possible.iter().all(|v| v == "`true`" || v == "`false`");
    if !possible.is_empty() && !switch && arg.get_action().takes_values() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "one of {}", possible.join(", "));
    }
    if arg.is_hide_env_values_set() {
        text.push_str("; secret, never printed");
    }
    text
}

fn help(arg: &clap::Arg) -> String {
    arg.get_long_help()
        .or_else(|| arg.get_help())
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// Text on one line, its paragraphs joined, ending as a sentence (clap drops the full
/// stop of a one-line doc comment).
fn one_paragraph(text: &str) -> String {
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if !line.is_empty() && !line.ends_with(['.', ':', '!', '?']) {
        line.push('.');
    }
    line
}

/// Text fit for a table cell: one line, no column breaks.
fn cell(text: &str) -> String {
    one_paragraph(text).replace('|', "\\|")
}
