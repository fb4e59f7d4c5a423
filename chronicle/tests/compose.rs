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

/// `docker-compose config` (Debian's, installed by scripts/setup) accepts the file.
#[test]
fn docker_compose_accepts_the_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = std::process::Command::new("docker-compose")
        .args(["-f", "compose.yaml", "config", "-q"])
        .current_dir(&root)
        .env("POSTGRES_PASSWORD", "example")
        .env(
            "CHRONICLE_JWT_SECRET",
            "example-secret-of-at-least-32-bytes!",
        )
        .output()
        .expect("docker-compose (scripts/setup installs Debian's)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
