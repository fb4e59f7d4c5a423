//! `docs/configuration.md` is what `chronicle config --markdown` prints, and names every
//! `CHRONICLE_*` variable the code reads; `chronicle config` shows the settings in effect
//! without a secret.

use std::{path::Path, process::Command};

fn chronicle(args: &[&str], env: &[(&str, &str)]) -> String {
    chronicle_tests::output_of(
        Command::new(env!("CARGO_BIN_EXE_chronicle"))
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("CHRONICLE_JWT_SECRET")
            .envs(env.iter().copied()),
    )
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn the_configuration_page_is_what_the_command_line_prints() {
    let page = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let printed = chronicle(&["config", "--markdown"], &[]);
    if page != printed {
        let line = page
            .lines()
            .zip(printed.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| page.lines().count().min(printed.lines().count()));
        panic!(
            "docs/configuration.md differs from `chronicle config --markdown` from line {}: \
             write it anew with `cargo run -p chronicle -- config --markdown > \
             docs/configuration.md`\n  page:    {:?}\n  printed: {:?}",
            line + 1,
            page.lines().nth(line),
            printed.lines().nth(line)
        );
    }
}

/// Every `"CHRONICLE_..."` string of the code, wherever it is read (clap, `std::env`, the
/// tests' harness), is on the page, so a variable read outside the settings cannot go
/// undocumented either.
#[test]
fn every_variable_the_code_names_is_on_the_configuration_page() {
    // Names the tests use as mistakes: a context that does not exist.
    const MISTAKES: &[&str] = &["CHRONICLE_CHATS_DATABASE_URL"];
    let page = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for path in chronicle_tests::files_under(root(), ".rs") {
        let text = std::fs::read_to_string(&path).unwrap();
        for (at, _) in text.match_indices("\"CHRONICLE_") {
            let rest = &text[at + 1..];
            let end = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            // Only whole literals: `"CHRONICLE_{}_DATABASE_URL"` is a pattern.
            if end > "CHRONICLE_".len() && rest[end..].starts_with('"') {
                names.insert(rest[..end].to_owned());
            }
        }
    }
    assert!(names.len() > 40, "found only {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !MISTAKES.contains(&n.as_str()) && !page.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "named in the code, not in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn config_shows_each_setting_in_effect_and_where_it_came_from_but_no_secret() {
    let secret = "an-unguessable-signing-key-of-32-bytes-or-more";
    let shown = chronicle(
        &["config", "--pg-pool", "7"],
        &[
            ("CHRONICLE_HTTP_ADDR", "127.0.0.1:9999"),
            ("CHRONICLE_JWT_SECRET", secret),
        ],
    );
    for line in [
        "CHRONICLE_HTTP_ADDR=127.0.0.1:9999  # environment",
        "CHRONICLE_PG_POOL=7  # flag",
        "CHRONICLE_JWT_SECRET=(hidden)  # environment",
        "CHRONICLE_RELAY_LINGER=0ms  # default",
        "DATABASE_URL=  # unset",
        // A context's own setting, joined from the list of contexts.
        "CHRONICLE_ALERT_EVERY=10s  # default",
    ] {
        assert!(shown.lines().any(|l| l == line), "no {line:?} in:\n{shown}");
    }
    assert!(!shown.contains(secret), "the secret was printed:\n{shown}");
}
