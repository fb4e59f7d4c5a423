//! The system under test: a PostgreSQL cluster (three in the split layout: commerce and chat
//! each on one of its own) and a nats-server of the harness's own, and every role of the
//! component list as a `chronicle` child process, restarted when it exits (as a service
//! manager would), killed with SIGKILL when the schedule says so.

use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chronicle::components::{self, Component};
use chronicle_engines::{ClusterNode, NatsOptions, NatsServer};
use chronicle_tests::TestPostgres;

pub const SECRET: &str = "the fault harness's token key, 32 bytes or more";
/// The user the gateways treat as staff.
pub const STAFF: &str = "staff";

/// What a kill can hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The role at this index of [`System::roles`].
    Role(usize),
    /// The nats-server at this index of [`System::nats`].
    Nats(usize),
    /// The PostgreSQL cluster at this index of [`System::clusters`] (0: the main one).
    Postgres(usize),
}

/// How NATS runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nats {
    /// One node (`sync_interval: always`), the EVENTS stream with one replica.
    Single,
    /// Three nodes with routes on 127.0.0.1, the EVENTS stream and the files bucket with
    /// three replicas.
    Cluster,
    /// One node, and commerce and chat each on a PostgreSQL cluster of its own
    /// (`CHRONICLE_<CONTEXT>_DATABASE_URL`): three clusters.
    Split,
}

/// The contexts the split layout puts on a cluster of their own.
pub const SPLIT: [&str; 2] = ["commerce", "chat"];

/// One `chronicle` role process.
pub struct Role {
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
    /// Killed by the schedule and held down until then.
    down_until: Option<Instant>,
    /// Times it exited without being killed (a role that cannot reach a server at start
    /// exits, and is started again).
    pub exits: u32,
}

impl Role {
    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the role's log file opens");
        // Dies with the harness, even when the harness is killed: never an orphan role
        // retrying against servers that are gone.
        let child = chronicle_engines::spawn_dying_with_us(
            Path::new(env!("CARGO_BIN_EXE_chronicle")),
            &self.args,
            |command| {
                command
                    .envs(self.env.iter().map(|(k, v)| (k, v)))
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(log));
            },
        )
        .expect("the chronicle binary starts");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

pub struct System {
    pub postgres: TestPostgres,
    /// The contexts on a cluster of their own, with it (the split layout; none otherwise).
    pub stores: Vec<(&'static str, TestPostgres)>,
    /// One node, or the three of a cluster (`server_name` `n1`, `n2`, `n3`).
    pub nats: Vec<NatsServer>,
    pub roles: Vec<Role>,
    /// The gateways' base URLs (`http://127.0.0.1:<port>`), one per gateway role.
    pub gateways: Vec<String>,
    nats_down_until: Vec<Option<Instant>>,
    /// Per cluster: the main one, then each of `stores`.
    postgres_down_until: Vec<Option<Instant>>,
    pub dir: tempfile::TempDir,
}

impl System {
    /// Starts the servers and every role: each component of the list once, the gateway
    /// twice (on fixed ports, so a restarted gateway is where the clients left it).
    pub async fn start(mode: Nats) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("chronicle-faults-")
            .tempdir()
            .expect("the temp dir is writable");
        let postgres = TestPostgres::start().await;
        let mut stores = Vec::new();
        if mode == Nats::Split {
            for context in SPLIT {
                // Empty: the roles make the context's tables there at start.
                stores.push((context, TestPostgres::start_empty().await));
            }
        }
        let options: Vec<NatsOptions> = match mode {
            Nats::Single | Nats::Split => vec![NatsOptions {
                store_dir: dir.path().join("nats"),
                port: None,
                cluster: None,
            }],
            Nats::Cluster => {
                let route_ports: Vec<u16> = (0..3).map(|_| chronicle_tests::free_port()).collect();
                (0..3)
                    .map(|i| NatsOptions {
                        store_dir: dir.path().join(format!("nats-n{}", i + 1)),
                        // Fixed, so a node started again is where the clients look.
                        port: Some(chronicle_tests::free_port()),
                        cluster: Some(ClusterNode {
                            cluster_name: "chronicle-faults".into(),
                            server_name: format!("n{}", i + 1),
                            route_port: route_ports[i],
                            route_ports: route_ports.clone(),
                        }),
                    })
                    .collect()
            }
        };
        let nats = tokio::task::spawn_blocking(move || {
            options
                .into_iter()
                .map(|o| NatsServer::start(o).expect("nats-server starts (run scripts/setup)"))
                .collect::<Vec<_>>()
        })
        .await
        .expect("the start task ends");
        let mut system = Self {
            postgres,
            postgres_down_until: vec![None; 1 + stores.len()],
            stores,
            nats_down_until: vec![None; nats.len()],
            nats,
            roles: Vec::new(),
            gateways: Vec::new(),
            dir,
        };
        let replicas = if mode == Nats::Cluster { "3" } else { "1" };
        for component in components::all() {
            let copies = if component == Component::Gateway {
                2
            } else {
                1
            };
            for copy in 0..copies {
                system.add_role(component, copy, replicas);
            }
        }
        for role in &mut system.roles {
            role.spawn();
        }
        system
    }

    /// `CHRONICLE_<CONTEXT>_DATABASE_URL` of each context on a cluster of its own.
    pub fn store_env(&self) -> Vec<(String, String)> {
        self.stores
            .iter()
            .map(|(context, pg)| {
                (
                    format!("CHRONICLE_{}_DATABASE_URL", context.to_ascii_uppercase()),
                    pg.url.clone(),
                )
            })
            .collect()
    }

    /// Each context on a cluster of its own, with its URL (for the harness's own checks).
    pub fn store_urls(&self) -> Vec<(&'static str, String)> {
        self.stores
            .iter()
            .map(|(context, pg)| (*context, pg.url.clone()))
            .collect()
    }

    fn cluster(&mut self, index: usize) -> &mut TestPostgres {
        match index {
            0 => &mut self.postgres,
            i => &mut self.stores[i - 1].1,
        }
    }

    /// Every node's client URL, comma-separated (as `NATS_URL` takes them).
    pub fn nats_url(&self) -> String {
        self.nats
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn add_role(&mut self, component: Component, copy: usize, replicas: &str) {
        let mut name = component.name();
        let mut env = vec![
            ("DATABASE_URL".to_owned(), self.postgres.url.clone()),
            ("NATS_URL".to_owned(), self.nats_url()),
            ("CHRONICLE_STREAM_REPLICAS".to_owned(), replicas.to_owned()),
            ("CHRONICLE_JWT_SECRET".to_owned(), SECRET.to_owned()),
            ("CHRONICLE_STAFF_USERS".to_owned(), STAFF.to_owned()),
            ("CHRONICLE_RATE_LIMIT_PER_SECOND".to_owned(), "0".to_owned()),
            ("CHRONICLE_PG_POOL".to_owned(), "6".to_owned()),
            // A killed saga's or projector's unacknowledged events come back soon.
            ("CHRONICLE_SAGA_ACK_WAIT".to_owned(), "2s".to_owned()),
            ("CHRONICLE_PRESENCE_TTL".to_owned(), "3s".to_owned()),
            ("CHRONICLE_SHUTDOWN_SECONDS".to_owned(), "2".to_owned()),
            (
                "CHRONICLE_DATA_DIR".to_owned(),
                self.dir.path().join("data").display().to_string(),
            ),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ];
        env.extend(self.store_env());
        if component == Component::Gateway {
            let port = chronicle_tests::free_port();
            name = format!("gateway-{}", copy + 1);
            env.push((
                "CHRONICLE_HTTP_ADDR".to_owned(),
                format!("127.0.0.1:{port}"),
            ));
            self.gateways.push(format!("http://127.0.0.1:{port}"));
        }
        let log = self.dir.path().join(format!("{name}.log"));
        self.roles.push(Role {
            name,
            args: component.args(),
            env,
            child: None,
            log,
            down_until: None,
            exits: 0,
        });
    }

    /// Every target a kill can hit.
    pub fn targets(&self) -> Vec<Target> {
        let mut all: Vec<Target> = (0..self.roles.len()).map(Target::Role).collect();
        all.extend((0..self.nats.len()).map(Target::Nats));
        all.extend((0..=self.stores.len()).map(Target::Postgres));
        all
    }

    pub fn target_name(&self, target: &Target) -> String {
        match target {
            Target::Role(i) => self.roles[*i].name.clone(),
            Target::Nats(_) if self.nats.len() == 1 => "nats-server".into(),
            Target::Nats(i) => format!("nats-server n{}", i + 1),
            Target::Postgres(0) if self.stores.is_empty() => "postgresql".into(),
            Target::Postgres(0) => "postgresql (main)".into(),
            Target::Postgres(i) => format!("postgresql ({})", self.stores[i - 1].0),
        }
    }

    /// Kills `target` with SIGKILL, to be started again after `down`.
    pub fn kill(&mut self, target: &Target, down: Duration) {
        let until = Some(Instant::now() + down);
        match target {
            Target::Role(i) => {
                let role = &mut self.roles[*i];
                role.kill();
                role.down_until = until;
            }
            Target::Nats(i) => {
                self.nats[*i].kill();
                self.nats_down_until[*i] = until;
            }
            Target::Postgres(i) => {
                self.cluster(*i).postgres.kill();
                self.postgres_down_until[*i] = until;
            }
        }
    }

    /// Stops (SIGTERM, then SIGKILL after 5 s) every role whose name does not start with
    /// `prefix`, for good.
    pub fn retire_all_but(&mut self, prefix: &str) {
        for role in self
            .roles
            .iter_mut()
            .filter(|r| !r.name.starts_with(prefix))
        {
            if let Some(mut child) = role.child.take() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let deadline = Instant::now() + Duration::from_secs(5);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            role.down_until = Some(Instant::now() + Duration::from_secs(24 * 3600));
        }
    }

    /// Lets `target`, killed earlier, come back at the next [`tend`](Self::tend).
    pub fn release(&mut self, target: &Target) {
        let now = Some(Instant::now());
        match target {
            Target::Role(i) => self.roles[*i].down_until = now,
            Target::Nats(i) => self.nats_down_until[*i] = now,
            Target::Postgres(i) => self.postgres_down_until[*i] = now,
        }
    }

    /// Starts what is due to come back, and the roles that exited by themselves.
    pub fn tend(&mut self) {
        let now = Instant::now();
        for (node, down_until) in self.nats.iter_mut().zip(&mut self.nats_down_until) {
            if down_until.is_some_and(|t| t <= now) {
                node.restart().expect("nats-server starts again");
                *down_until = None;
            }
        }
        for i in 0..self.postgres_down_until.len() {
            if self.postgres_down_until[i].is_some_and(|t| t <= now) {
                self.cluster(i)
                    .postgres
                    .restart()
                    .expect("PostgreSQL starts again");
                self.postgres_down_until[i] = None;
            }
        }
        for role in &mut self.roles {
            match role.down_until {
                Some(t) if t <= now => {
                    role.down_until = None;
                    role.spawn();
                }
                Some(_) => {}
                None => {
                    let exited = role
                        .child
                        .as_mut()
                        .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
                    if exited {
                        role.exits += 1;
                        role.spawn();
                    }
                }
            }
        }
    }

    /// Whether everything killed has been started again.
    pub fn all_up(&self) -> bool {
        self.nats_down_until.iter().all(Option::is_none)
            && self.postgres_down_until.iter().all(Option::is_none)
            && self.roles.iter().all(|r| r.down_until.is_none())
    }

    /// Runs `chronicle <args>` once on the system's servers; its stdout.
    pub fn run_once(&self, args: &[&str]) -> String {
        chronicle_tests::output_of(
            Command::new(env!("CARGO_BIN_EXE_chronicle"))
                .args(args)
                .env("DATABASE_URL", &self.postgres.url)
                .env("NATS_URL", self.nats_url())
                .envs(self.store_env())
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null()),
        )
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for role in &mut self.roles {
            role.kill();
        }
    }
}
