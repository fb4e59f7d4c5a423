//! `compose.yaml` is written from the component list: every role, with the variables it
//! requires. This fails when a component is added and the file is not written again
//! (`chronicle compose > compose.yaml`).

use chronicle::components::{all, compose_yaml};

#[test]
fn compose_yaml_is_what_the_component_list_gives() {
    let committed = include_str!("../../compose.yaml");
    assert!(
        committed == compose_yaml(),
        "compose.yaml is stale: run `cargo run -p chronicle -- compose > compose.yaml`"
    );
}

#[test]
fn every_component_is_a_service_with_every_variable_it_requires() {
    let committed = include_str!("../../compose.yaml");
    for component in all() {
        let service = format!("\n  {}:\n", component.name());
        let start = committed
            .find(&service)
            .unwrap_or_else(|| panic!("no service {}", component.name()));
        // The service's lines are indented by four or more spaces; the next key is by two.
        let block: String = committed[start + service.len()..]
            .lines()
            .take_while(|line| line.starts_with("    "))
            .collect::<Vec<_>>()
            .join("\n");
        let args: Vec<String> = component.args().iter().map(|a| format!("{a:?}")).collect();
        assert!(
            block.contains(&format!("command: [{}", args.join(", "))),
            "{} runs {:?}",
            component.name(),
            component.args()
        );
        for var in component.required_env() {
            assert!(
                block.contains(var) || committed.contains(&format!("\n  {var}: ")),
                "{} lacks {var}",
                component.name()
            );
        }
    }
}

#[test]
fn prometheus_scrapes_every_component_and_grafana_has_the_dashboard() {
    let committed = include_str!("../../compose.yaml");
    let scrape = include_str!("../../deploy/prometheus/compose-prometheus.yml");
    assert!(
        scrape == chronicle::components::compose_prometheus_yaml(),
        "deploy/prometheus/compose-prometheus.yml is stale: run `cargo run -p chronicle -- compose --prometheus > deploy/prometheus/compose-prometheus.yml`"
    );
    for component in all() {
        assert!(
            scrape.contains(&format!("{:?}", component.name())),
            "{}",
            component.name()
        );
    }
    assert!(committed.contains("CHRONICLE_METRICS_ADDR: 0.0.0.0:9100"));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for mounted in committed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ./"))
    {
        let file = mounted.split(':').next().unwrap();
        assert!(
            root.join(file).exists(),
            "compose.yaml mounts {file}, which is missing"
        );
    }
}

/// The split layout (`chronicle compose --split commerce,chat`): committed as it is written,
/// each split context with a PostgreSQL service of its own named to every component.
#[test]
fn the_split_layout_gives_commerce_and_chat_a_postgres_each() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let committed = std::fs::read_to_string(root.join("compose-split.yaml")).unwrap();
    let written = chronicle::components::compose_yaml_split(&["commerce", "chat"]);
    assert!(
        committed == written,
        "compose-split.yaml is stale: run `chronicle compose --split commerce,chat > compose-split.yaml`"
    );
    for context in ["commerce", "chat"] {
        assert!(written.contains(&format!(
            "\n  postgres-{context}:\n    image: postgres:15\n"
        )));
        assert!(written.contains(&format!(
            "CHRONICLE_{}_DATABASE_URL: postgres://chronicle:${{POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}}@postgres-{context}:5432/chronicle",
            context.to_ascii_uppercase()
        )));
    }
    // Everything else is the one-database layout's.
    assert_eq!(
        written.lines().count(),
        compose_yaml().lines().count() + 2 + 2 * 6 + 1
    );
    docker_compose_accepts("compose-split.yaml");
    // What --split takes: contexts of the list, each once.
    let named = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let split = chronicle::components::split_contexts;
    assert_eq!(
        split(&named(&["chat", "commerce", "chat"])).unwrap(),
        ["chat", "commerce"]
    );
    let refused = split(&named(&["chat\u{0}"])).unwrap_err().to_string();
    assert!(refused.contains("which is no context"), "{refused}");
}

/// `docker-compose config` (Debian's, installed by scripts/setup) accepts the file.
#[test]
fn docker_compose_accepts_the_file() {
    docker_compose_accepts("compose.yaml");
}

fn docker_compose_accepts(file: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Debian's docker-compose, which scripts/setup installs.
    chronicle_tests::output_of(
        std::process::Command::new("docker-compose")
            .args(["-f", file, "config", "-q"])
            .current_dir(&root)
            .env("POSTGRES_PASSWORD", "example")
            .env(
                "CHRONICLE_JWT_SECRET",
                "example-secret-of-at-least-32-bytes!",
            ),
    );
}
