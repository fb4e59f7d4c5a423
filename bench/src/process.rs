//! Chronicle as a process of its own for the benches that measure its memory (E2, E3):
//! `chronicle up` next to the bench binary, on the bench's servers; users registered on it.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// The `chronicle up` child and its data dir; killed, then the dir removed, when dropped.
pub struct Chronicle(pub Child, Option<tempfile::TempDir>);

impl Drop for Chronicle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(dir) = self.1.take() {
            let _ = dir.close();
        }
    }
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS in /proc/<pid>/status")
}

/// RSS once it has stopped moving (two readings half a second apart within 256 KiB, or
/// after 15 s): the allocator returns freed memory a little after it is freed.
pub async fn settled_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let mut previous = rss_kib(pid)?;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid)?;
        if now.abs_diff(previous) < 256 {
            return Ok(now);
        }
        previous = now;
    }
    Ok(previous)
}

pub fn start(db_url: &str, nats_url: &str) -> anyhow::Result<(Chronicle, String)> {
    start_role(db_url, nats_url, "up")
}

/// The token key `chronicle` processes a bench starts share (a bench-only value).
const BENCH_JWT_SECRET: &str = "bench-only signing key, 32 bytes or more, never used elsewhere";

/// `chronicle <role>` (`up`, or `gateway` alone beside an `up` whose gateway is not
/// measured) on the bench's servers: the process and its base URL.
pub fn start_role(db_url: &str, nats_url: &str, role: &str) -> anyhow::Result<(Chronicle, String)> {
    start_with(db_url, nats_url, role, &[])
}

/// [`start_role`] with more environment (`CHRONICLE_STAFF_USERS`, say).
pub fn start_with(
    db_url: &str,
    nats_url: &str,
    role: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(Chronicle, String)> {
    let binary = std::env::current_exe()?
        .parent()
        .context("the bench binary's directory")?
        .join("chronicle");
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p chronicle` first",
            binary.display()
        );
    }
    let data = tempfile::tempdir()?;
    let mut child = Command::new(binary)
        .arg(role)
        .env("CHRONICLE_JWT_SECRET", BENCH_JWT_SECRET)
        .env("DATABASE_URL", db_url)
        .env("NATS_URL", nats_url)
        .env("CHRONICLE_DATA_DIR", data.path())
        .env("CHRONICLE_HTTP_ADDR", "127.0.0.1:0")
        .env("CHRONICLE_RATE_LIMIT_PER_SECOND", "0")
        .env("CHRONICLE_PG_POOL", "32")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let base = loop {
        let line = lines.next().context("chronicle up ended")??;
        if let Some(url) = line.strip_prefix("chronicle: gateway listening on ") {
            break url.trim().to_owned();
        }
    };
    Ok((Chronicle(child, Some(data)), base))
}

pub async fn user(
    http: &reqwest::Client,
    base: &str,
    name: String,
) -> anyhow::Result<(String, String)> {
    let body = json!({"username": name, "password": "bench password", "display_name": name});
    http.post(format!("{base}/api/v1/auth/register"))
        .json(&body)
        .send()
        .await?;
    let login: Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": name, "password": "bench password"}))
        .send()
        .await?
        .json()
        .await?;
    Ok((
        login["user_id"].as_str().context("a user id")?.to_owned(),
        login["token"].as_str().context("a token")?.to_owned(),
    ))
}

/// The peak RSS of a process, sampled every 50 ms from its start until [`PeakRss::stop`].
pub struct PeakRss {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampling: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    /// Starts sampling `pid`.
    ///
    /// # Errors
    /// When its RSS cannot be read.
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        use std::sync::{
            atomic::{AtomicBool, AtomicU64, Ordering},
            Arc,
        };
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)?));
        let sampling = Arc::new(AtomicBool::new(true));
        let task = {
            let (peak, sampling) = (peak.clone(), sampling.clone());
            tokio::spawn(async move {
                while sampling.load(Ordering::Relaxed) {
                    if let Ok(rss) = rss_kib(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Ok(Self {
            peak,
            sampling,
            task,
        })
    }

    /// The peak so far, in KiB.
    pub fn so_far(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops sampling: the peak, in KiB.
    ///
    /// # Errors
    /// When the sampling task panicked.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.sampling
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let peak = self.peak.clone();
        self.task.await?;
        Ok(peak.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// `chronicle <args>` (a role without a gateway: `relay`, `project jobs`, `scheduler`) on the
/// bench's servers, started without waiting for anything: the process and the base URL of
/// its `GET /metrics` (on a port found free just before).
pub fn start_headless(
    db_url: &str,
    nats_url: &str,
    args: &[&str],
) -> anyhow::Result<(Chronicle, String)> {
    let binary = std::env::current_exe()?
        .parent()
        .context("the bench binary's directory")?
        .join("chronicle");
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p chronicle` first",
            binary.display()
        );
    }
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let child = Command::new(binary)
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("NATS_URL", nats_url)
        .env("CHRONICLE_PG_POOL", "32")
        .env("CHRONICLE_METRICS_ADDR", metrics.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok((Chronicle(child, None), format!("http://{metrics}")))
}
