//! The component list: every process role, declared once (docs/architecture.md, "The flow of one command").
//!
//! The roles come from the one list of contexts ([`crate::contexts`]): a projector per read
//! model, and each context's processes. Every way of running Chronicle picks them up:
//! `chronicle up`, `chronicle project --all`, the test harness, `compose.yaml`, and
//! `GET /api/v1/projections`. A new kind of process is a variant here.

use std::{future::Future, pin::Pin, sync::Mutex};

use anyhow::Context;
use chronicle_bus::{Faults, Relay, RelayConfig, SubscriberRef};
use chronicle_commands::{contexts, CommandExecutor, Databases};
use chronicle_gateway::{AppState, ContextStates, GatewayConfig};
use chronicle_host::{Host, Process};
use chronicle_projections::ProjectorConfig;

use crate::contexts::{processes, read_model, read_models};
use crate::payments::{PaymentRules, SimulatedPayments};

/// One process role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The outbox relays, one per context's outbox (several processes may run them; one per
    /// outbox is active).
    Relay,
    /// The projector of one read model.
    Projector(&'static str),
    /// One of a context's processes (a saga, the janitor, the scheduler, the alert engine).
    Process(&'static Process),
    /// The HTTP gateway.
    Gateway,
}

/// Every component, in start order: the relay, every context's projectors, every
/// context's processes, the gateway.
pub fn all() -> Vec<Component> {
    let mut all = vec![Component::Relay];
    all.extend(read_models().map(|m| Component::Projector(m.name())));
    all.extend(processes().map(Component::Process));
    all.push(Component::Gateway);
    all
}

/// Every reader of the log the components run, for status reports and parked events.
pub fn subscribers() -> Vec<SubscriberRef> {
    all().iter().filter_map(Component::subscriber).collect()
}

impl Component {
    /// The projector of `name`, if there is such a projection.
    pub fn projector(name: &str) -> Option<Self> {
        read_model(name).map(|m| Self::Projector(m.name()))
    }

    /// The process `chronicle <args>` runs alone, if there is one.
    pub fn process(args: &[String]) -> Option<Self> {
        processes()
            .find(|p| p.args.iter().copied().eq(args.iter().map(String::as_str)))
            .map(Self::Process)
    }

    /// What the deployment knows of it, in one place: each role is one row here, and one
    /// arm of [`start`](Self::start).
    fn spec(&self) -> Spec {
        // A role run by the subcommand of its own name, reading no log.
        let plain = |name: &str, replicas| Spec {
            service: name.to_owned(),
            args: vec![name.to_owned()],
            env: &["DATABASE_URL", "NATS_URL"],
            replicas,
            subscriber: None,
        };
        // Two relays (one stands by) and two gateways, one projector (a second would only
        // take turns with the first); each process says how many of it run.
        match self {
            Self::Relay => plain("relay", 2),
            Self::Projector(name) => Spec {
                service: format!("projector-{name}"),
                args: vec!["project".into(), (*name).into()],
                subscriber: Some(read_model(name).expect("a listed projection").subscriber()),
                ..plain("", 1)
            },
            Self::Process(process) => Spec {
                service: process.name.to_owned(),
                args: process.args.iter().map(|a| (*a).to_owned()).collect(),
                subscriber: process.reader.map(|r| r.subscriber()),
                ..plain("", process.replicas)
            },
            Self::Gateway => Spec {
                env: &["DATABASE_URL", "NATS_URL", "CHRONICLE_JWT_SECRET"],
                ..plain("gateway", 2)
            },
        }
    }

    /// Its name as a service (`relay`, `projector-inventory`, `saga-orders`, `gateway`).
    pub fn name(&self) -> String {
        self.spec().service
    }

    /// The `chronicle` arguments that run it alone.
    pub fn args(&self) -> Vec<String> {
        self.spec().args
    }

    /// The variables it cannot run without when run alone.
    pub fn required_env(&self) -> &'static [&'static str] {
        self.spec().env
    }

    /// How many instances a deployment runs.
    pub fn replicas(&self) -> u32 {
        self.spec().replicas
    }

    /// The contexts whose stores it reads or writes, or `None` for every context (the
    /// gateway and the relay serve them all).
    pub fn uses(&self) -> Option<Vec<&'static str>> {
        match self {
            Self::Gateway | Self::Relay => None,
            Self::Projector(name) => read_model(name).map(|model| vec![model.context()]),
            Self::Process(process) => process.uses.map(<[&str]>::to_vec),
        }
    }

    /// The reader of the log it is, if it is one.
    pub fn subscriber(&self) -> Option<SubscriberRef> {
        self.spec().subscriber
    }

    /// Starts it on `wiring` until `shutdown`.
    ///
    /// # Errors
    /// When it is the gateway and no listener is left in the wiring, or a process that
    /// cannot start.
    pub fn start(
        &self,
        wiring: &Wiring,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Task> {
        let name = self.name();
        // Every role records metrics into the process's one registry.
        chronicle_telemetry::install();
        Ok(match self {
            Self::Relay => {
                // One relay per context's outbox; the first to stop (a fault point) stops
                // the role, as a crash would.
                use futures::FutureExt;
                let shutdown = shutdown.shared();
                let relays: Vec<_> = wiring
                    .db
                    .contexts()
                    .map(|(context, pool)| {
                        let relay =
                            Relay::new(pool.clone(), wiring.nats.clone(), wiring.relay.clone())
                                .with_faults(wiring.faults.clone());
                        let shutdown = shutdown.clone();
                        async move {
                            relay
                                .run(shutdown)
                                .await
                                .with_context(|| format!("the {context} outbox"))
                        }
                        .boxed()
                    })
                    .collect();
                Box::pin(async move {
                    futures::future::try_join_all(relays)
                        .await
                        .map(|_| ())
                        .context(name)
                })
            }
            Self::Projector(projection) => {
                let run = read_model(projection)
                    .with_context(|| format!("unknown projection {projection:?}"))?
                    .run(
                        &wiring.db,
                        wiring.nats.clone(),
                        wiring.projector.clone(),
                        wiring.faults.clone(),
                        Box::pin(shutdown),
                    );
                Box::pin(async move { run.await.context(name) })
            }
            Self::Process(process) => {
                let host = Host {
                    db: &wiring.db,
                    nats: &wiring.nats,
                    commands: &wiring.commands,
                    faults: &wiring.faults,
                    settings: &wiring.gateway.contexts,
                };
                let task = (process.start)(&host, Box::pin(shutdown))?;
                Box::pin(async move { task.await.context(name) })
            }
            Self::Gateway => {
                let listener = wiring
                    .http
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                    .context("the gateway needs a listener, and one gateway per wiring")?;
                let config = GatewayConfig {
                    subscribers: subscribers(),
                    ..wiring.gateway.clone()
                };
                // Orders are charged through the simulated provider (commerce's).
                let mut handed = ContextStates::default();
                handed.insert(SimulatedPayments::services(
                    wiring.db.of(contexts::COMMERCE).clone(),
                    wiring.gateway.contexts.get::<PaymentRules>().clone(),
                ));
                let state = AppState::new(
                    wiring.commands.clone(),
                    wiring.db.clone(),
                    wiring.nats.clone(),
                    config,
                    handed,
                );
                let db = wiring.db.clone();
                Box::pin(async move {
                    // The read models its routes query exist before the first request: a
                    // gateway that answered before their projectors had made them failed a
                    // read (`chronicle up`, a fresh database). The set-up is idempotent and
                    // serialised with the projectors'. When PostgreSQL cannot answer, the
                    // gateway serves anyway (`/health` says so) and the projectors make them.
                    for model in read_models() {
                        if let Err(e) = model.setup(&db).await {
                            tracing::warn!(
                                read_model = model.name(),
                                error = %chronicle_bus::ErrorChain(&e),
                                "a read model's tables could not be made before serving"
                            );
                            break;
                        }
                    }
                    chronicle_gateway::serve(listener, state, shutdown)
                        .await
                        .context(name)
                })
            }
        })
    }
}

/// A role as a deployment sees it (see [`Component::spec`]).
struct Spec {
    service: String,
    args: Vec<String>,
    env: &'static [&'static str],
    replicas: u32,
    subscriber: Option<SubscriberRef>,
}

/// A started component: runs until its shutdown, or fails.
pub type Task = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// What the components of one process share: connections, the command bus (one per
/// process: the gateway and the sagas share its cache and group commit), fault points,
/// and each role's settings (every context's groups are the gateway configuration's
/// `contexts`, which a context's processes are handed too). The binary builds it from its
/// settings, the harness from its own.
pub struct Wiring {
    /// The shared pool (the event store) and one per context, on its own schema.
    pub db: Databases,
    pub nats: async_nats::Client,
    pub commands: CommandExecutor,
    pub faults: Faults,
    pub relay: RelayConfig,
    pub projector: ProjectorConfig,
    /// The gateway's settings, with every context's settings groups in `contexts`; its
    /// `subscribers` are filled from [`subscribers`].
    pub gateway: GatewayConfig,
    /// Where the gateway listens (taken by the gateway when it starts).
    pub http: Mutex<Option<tokio::net::TcpListener>>,
}

impl Wiring {
    /// The wiring of another process on the same servers with the same settings: its own
    /// command executor (cache and group commit, no fault points armed), `faults` for its
    /// roles, and `http` for a gateway.
    pub fn another_process(&self, faults: Faults, http: Option<tokio::net::TcpListener>) -> Self {
        Self {
            commands: CommandExecutor::for_contexts(
                &self.db,
                &Faults::default(),
                Default::default(),
            ),
            db: self.db.clone(),
            nats: self.nats.clone(),
            faults,
            relay: self.relay.clone(),
            projector: self.projector.clone(),
            gateway: self.gateway.clone(),
            http: Mutex::new(http),
        }
    }
}

/// `compose.yaml`: a 3-node NATS cluster, PostgreSQL, and every component as its own
/// service, with the variables each needs. `chronicle compose` prints it; a test checks
/// the committed file is what the list gives.
pub fn compose_yaml() -> String {
    compose_yaml_split(&[])
}

/// The contexts `--split` names, each once, in the order named.
///
/// # Errors
/// When one is no context (the message lists them).
pub fn split_contexts(named: &[String]) -> anyhow::Result<Vec<&'static str>> {
    let names = crate::contexts::names();
    let mut contexts = Vec::new();
    for context in named {
        let Some(&known) = names.iter().find(|n| **n == context.as_str()) else {
            anyhow::bail!(
                "--split names {context:?}, which is no context; the contexts are {}",
                names.join(", ")
            );
        };
        // Named twice is named once: one service per context.
        if !contexts.contains(&known) {
            contexts.push(known);
        }
    }
    Ok(contexts)
}

/// [`compose_yaml`] with each context of `split` on a PostgreSQL service of its own
/// (`postgres-<context>`, named to every component by `CHRONICLE_<CONTEXT>_DATABASE_URL`):
/// `chronicle compose --split commerce,chat` writes `compose-split.yaml`.
pub fn compose_yaml_split(split: &[&str]) -> String {
    let mut head = format!("{COMPOSE_HEAD}{COMPOSE_POSTGRES}");
    if !split.is_empty() {
        let url = "postgres://chronicle:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}";
        let vars: String = split
            .iter()
            .map(|c| {
                format!(
                    "  CHRONICLE_{}_DATABASE_URL: {url}@postgres-{c}:5432/chronicle\n",
                    c.to_ascii_uppercase()
                )
            })
            .collect();
        let services: Vec<String> = split.iter().map(|c| format!("postgres-{c}")).collect();
        head = head
            .replacen(
                "# deploy/grafana/chronicle-dashboard.json) watching them.\n",
                &format!(
                    "# deploy/grafana/chronicle-dashboard.json) watching them.\n# Split: {} each on a \
                     PostgreSQL of its own (`chronicle compose --split {}`).\n",
                    split.join(" and "),
                    split.join(",")
                ),
                1,
            )
            .replacen(
                "@postgres:5432/chronicle\n",
                &format!("@postgres:5432/chronicle\n{vars}"),
                1,
            )
            .replacen(
                "depends_on: [postgres, ",
                &format!("depends_on: [postgres, {}, ", services.join(", ")),
                1,
            );
        for service in &services {
            head.push_str(&COMPOSE_POSTGRES.replace("  postgres:\n", &format!("  {service}:\n")));
        }
    }
    let mut out = head;
    for component in all() {
        out.push_str(&format!("  {}:\n    <<: *chronicle\n", component.name()));
        let mut args = component.args();
        if component == Component::Gateway {
            args.extend(["--http-addr".into(), "0.0.0.0:8080".into()]);
        }
        let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
        out.push_str(&format!("    command: [{}]\n", quoted.join(", ")));
        if component.replicas() > 1 {
            out.push_str(&format!(
                "    deploy:\n      replicas: {}\n",
                component.replicas()
            ));
        }
        let extra: Vec<&str> = component
            .required_env()
            .iter()
            .copied()
            .filter(|v| !SHARED_ENV.contains(v))
            .collect();
        if !extra.is_empty() {
            out.push_str("    environment:\n      <<: *chronicle-env\n");
            for var in extra {
                out.push_str(&format!("      {var}: ${{{var}:?set {var}}}\n"));
            }
        }
        if component == Component::Gateway {
            out.push_str("    ports: [\"8080-8081:8080\"]\n");
        }
    }
    out.push_str(COMPOSE_MONITORING);
    out
}

/// Prometheus's configuration for `compose.yaml` (`deploy/prometheus/compose-prometheus.yml`,
/// printed by `chronicle compose --prometheus`): every replica of every component (Docker's
/// DNS answers a service name with all of them) scraped on `CHRONICLE_METRICS_ADDR`.
pub fn compose_prometheus_yaml() -> String {
    let names: Vec<String> = all().iter().map(|c| format!("{:?}", c.name())).collect();
    format!(
        "# Written by `chronicle compose --prometheus` from the component list; a test fails when\n\
         # this file and the list differ. Prometheus in compose.yaml reads it.\n\
         global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\n\
         rule_files: [/etc/prometheus/chronicle-rules.yml]\n\
         scrape_configs:\n  - job_name: chronicle\n    dns_sd_configs:\n      - names: [{}]\n        type: A\n        port: 9100\n",
        names.join(", ")
    )
}

/// Prometheus (with the rules) and Grafana (with the dashboard, provisioned) beside the
/// components.
const COMPOSE_MONITORING: &str = r#"  prometheus:
    image: prom/prometheus:v2.53.0
    command: ["--config.file=/etc/prometheus/prometheus.yml"]
    volumes:
      - ./deploy/prometheus/compose-prometheus.yml:/etc/prometheus/prometheus.yml:ro
      - ./deploy/prometheus/chronicle-rules.yml:/etc/prometheus/chronicle-rules.yml:ro
    ports: ["9090:9090"]
  grafana:
    image: grafana/grafana:11.1.0
    depends_on: [prometheus]
    volumes:
      - ./deploy/grafana/provisioning:/etc/grafana/provisioning:ro
      - ./deploy/grafana/chronicle-dashboard.json:/var/lib/grafana/dashboards/chronicle.json:ro
    ports: ["3000:3000"]
"#;

/// The variables every component gets from the shared block of `compose.yaml`.
const SHARED_ENV: &[&str] = &["DATABASE_URL", "NATS_URL"];

const COMPOSE_HEAD: &str = r#"# Written by `chronicle compose` from the component list (chronicle/src/components.rs);
# a test fails when this file and the list differ. Do not edit by hand.
#
# Chronicle across machines: a 3-node NATS JetStream cluster with an R3 EVENTS stream (R3
# streams may keep NATS's default sync interval: each write is on a majority before its
# ack), PostgreSQL, each Chronicle component as its own service (each serving /metrics on
# port 9100), and Prometheus (with deploy/prometheus/chronicle-rules.yml) and Grafana (with
# deploy/grafana/chronicle-dashboard.json) watching them.
x-chronicle-env: &chronicle-env
  DATABASE_URL: postgres://chronicle:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}@postgres:5432/chronicle
  NATS_URL: nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222
  CHRONICLE_STREAM_REPLICAS: "3"
  CHRONICLE_METRICS_ADDR: 0.0.0.0:9100
  RUST_LOG: info

x-chronicle: &chronicle
  build: .
  image: chronicle:dev
  environment: *chronicle-env
  depends_on: [postgres, nats-1, nats-2, nats-3]
  restart: unless-stopped

x-nats: &nats
  image: nats:2.12
  restart: unless-stopped

services:
  nats-1:
    <<: *nats
    command: ["-js", "-sd", "/data", "--server_name", "nats-1", "--cluster_name", "chronicle",
              "--cluster", "nats://0.0.0.0:6222", "--routes", "nats://nats-2:6222,nats://nats-3:6222"]
  nats-2:
    <<: *nats
    command: ["-js", "-sd", "/data", "--server_name", "nats-2", "--cluster_name", "chronicle",
              "--cluster", "nats://0.0.0.0:6222", "--routes", "nats://nats-1:6222,nats://nats-3:6222"]
  nats-3:
    <<: *nats
    command: ["-js", "-sd", "/data", "--server_name", "nats-3", "--cluster_name", "chronicle",
              "--cluster", "nats://0.0.0.0:6222", "--routes", "nats://nats-1:6222,nats://nats-2:6222"]
"#;

/// One PostgreSQL service: the one every layout has, and one more for each context split off.
const COMPOSE_POSTGRES: &str = r#"  postgres:
    image: postgres:15
    environment:
      POSTGRES_USER: chronicle
      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}
      POSTGRES_DB: chronicle
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_names_the_stores_it_uses() {
        assert_eq!(
            Component::projector("chat_history").unwrap().uses(),
            Some(vec!["chat"])
        );
        assert_eq!(
            Component::Process(&crate::roles::ORDER_SAGA).uses(),
            Some(vec!["commerce", "scheduler"])
        );
        // These may touch any context.
        for role in [
            Component::Gateway,
            Component::Relay,
            Component::Process(&crate::roles::SCHEDULER),
        ] {
            assert_eq!(role.uses(), None, "{}", role.name());
        }
        // Every context a role names is one of the list.
        let names = crate::contexts::names();
        for role in all() {
            for context in role.uses().unwrap_or_default() {
                assert!(names.contains(&context), "{}: {context}", role.name());
            }
        }
    }

    #[test]
    fn every_projection_and_saga_is_a_component_and_a_subscriber() {
        let names: Vec<String> = all().iter().map(Component::name).collect();
        for model in read_models() {
            assert!(names.contains(&format!("projector-{}", model.name())));
        }
        assert!(names.contains(&"saga-orders".to_owned()));
        // The order saga and the alert engine's notifier are readers of the log too.
        assert_eq!(subscribers().len(), read_models().count() + 2);
        assert_eq!(
            Component::projector("inventory"),
            Some(Component::Projector("inventory"))
        );
        assert_eq!(Component::projector("nope"), None);
        let args = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            Component::process(&args(&["saga", "orders"])),
            Some(Component::Process(&crate::roles::ORDER_SAGA))
        );
        assert_eq!(
            Component::process(&args(&["scheduler"])),
            Some(Component::Process(&crate::roles::SCHEDULER))
        );
        assert_eq!(Component::process(&args(&["saga", "nope"])), None);
    }
}
