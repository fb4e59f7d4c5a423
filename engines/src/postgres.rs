use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::{nats::tail, spawn, EngineError};

/// How to run one PostgreSQL cluster.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The cluster's data directory; `initdb` runs there when it holds no cluster yet.
    pub data_dir: PathBuf,
    /// The TCP port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// `true` keeps PostgreSQL's durability defaults (fsync, synchronous_commit,
    /// full_page_writes), as `chronicle up` and the benchmarks must. Test clusters turn off
    /// fsync and full_page_writes: they prove behaviour across process crashes, which the OS
    /// page cache survives. They keep synchronous_commit: with it off a commit is
    /// acknowledged before its WAL leaves PostgreSQL's own memory, and a crash of PostgreSQL
    /// itself loses it (the fault harness found two acknowledged commands gone that way).
    pub durable: bool,
}

/// A running PostgreSQL cluster listening on 127.0.0.1, superuser `postgres`, trust auth.
///
/// Dropping it stops the server with a fast shutdown.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    /// How it was started, to start it again after [`kill`](Self::kill).
    bin: PathBuf,
    run_as: Option<spawn::RunAs>,
    durable: bool,
}

impl Postgres {
    /// Initialises the cluster if needed, starts it and waits until it accepts connections.
    ///
    /// # Errors
    /// When PostgreSQL is not installed, `initdb` fails (a data directory the `postgres`
    /// user cannot reach, say) or the server does not come up within 30 s.
    pub fn start(options: PostgresOptions) -> Result<Self, EngineError> {
        let bin = bin_dir()?;
        let run_as = if spawn::is_root() {
            Some(spawn::RunAs {
                user: "postgres".into(),
            })
        } else {
            None
        };
        let data = &options.data_dir;
        prepare_data_dir(data, run_as.as_ref())?;
        if !data.join("PG_VERSION").exists() {
            initdb(&bin, data, run_as.as_ref(), options.durable)?;
        }
        let log_path = data.join("server.log");
        let mut last_error = None;
        for _ in 0..5 {
            let port = match options.port {
                Some(port) => port,
                None => free_port()?,
            };
            match launch(
                &bin,
                data,
                port,
                run_as.as_ref(),
                options.durable,
                &log_path,
            ) {
                Ok(child) => {
                    tracing::info!(port, data = %data.display(), "postgres started");
                    return Ok(Self {
                        child: Some(child),
                        port,
                        data_dir: data.clone(),
                        bin,
                        run_as,
                        durable: options.durable,
                    });
                }
                Err(e) if options.port.is_none() => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or(EngineError::Failed {
            what: "postgres".into(),
            detail: "could not start".into(),
        }))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How the server ended, if it is not running.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            None => Some("stopped".into()),
            Some(Ok(Some(status))) => Some(format!(
                "{status}: {}",
                tail(&self.data_dir.join("server.log"))
            )),
            Some(_) => None,
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Kills the server as a crash of the machine's PostgreSQL would: SIGKILL to the
    /// postmaster and to every backend and helper it started, then waits until they are
    /// gone (so a restart finds no shared memory still attached).
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let postmaster = child.id();
        let children = children_of(postmaster);
        let _ = child.kill();
        for pid in &children {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while children.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again on the same port and data dir after [`kill`](Self::kill)
    /// (it runs crash recovery first); clients reconnect by themselves.
    ///
    /// # Errors
    /// When it does not come back within 30 s.
    pub fn restart(&mut self) -> Result<(), EngineError> {
        self.kill();
        let child = launch(
            &self.bin,
            &self.data_dir,
            self.port,
            self.run_as.as_ref(),
            self.durable,
            &self.data_dir.join("server.log"),
        )?;
        self.child = Some(child);
        Ok(())
    }

    /// A connection URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            spawn::stop(&mut child, Signal::SIGINT, Duration::from_secs(15));
        }
    }
}

/// The processes whose parent is `parent` (from `/proc`).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn free_port() -> Result<u16, EngineError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(EngineError::io("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(EngineError::io("reading the free port"))?
        .port();
    Ok(port)
}

fn prepare_data_dir(data: &Path, run_as: Option<&spawn::RunAs>) -> Result<(), EngineError> {
    std::fs::create_dir_all(data)
        .map_err(EngineError::io(format!("creating {}", data.display())))?;
    if let Some(run_as) = run_as {
        let user = nix::unistd::User::from_name(&run_as.user)
            .ok()
            .flatten()
            .ok_or(EngineError::NotInstalled {
                what: "the postgres system user",
                hint:
                    "install Debian's `postgresql` package (scripts/setup does), which creates it",
            })?;
        nix::unistd::chown(data, Some(user.uid), Some(user.gid)).map_err(|e| {
            EngineError::Failed {
                what: format!("chown {}", data.display()),
                detail: e.to_string(),
            }
        })?;
    }
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
        .map_err(EngineError::io(format!("chmod {}", data.display())))
}

fn initdb(
    bin: &Path,
    data: &Path,
    run_as: Option<&spawn::RunAs>,
    durable: bool,
) -> Result<(), EngineError> {
    let mut args = vec![
        "-D".to_string(),
        data.display().to_string(),
        "-U".into(),
        "postgres".into(),
        "--auth=trust".into(),
        "-E".into(),
        "UTF8".into(),
        "--locale=C.UTF-8".into(),
    ];
    if !durable {
        args.push("--no-sync".into());
    }
    let mut cmd = spawn::command(&bin.join("initdb"), &args, run_as, "KILL");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = spawn::spawn(cmd, "initdb")?
        .wait_with_output()
        .map_err(EngineError::io("waiting for initdb"))?;
    if !output.status.success() {
        return Err(EngineError::Failed {
            what: "initdb".into(),
            detail: format!(
                "{}{} (the postgres user must be able to reach {})",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                data.display()
            ),
        });
    }
    Ok(())
}

fn launch(
    bin: &Path,
    data: &Path,
    port: u16,
    run_as: Option<&spawn::RunAs>,
    durable: bool,
    log_path: &Path,
) -> Result<Child, EngineError> {
    let mut args = vec![
        "-D".to_string(),
        data.display().to_string(),
        "-p".into(),
        port.to_string(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-c".into(),
        // TCP only: a socket path under a deep data dir can pass the 107-byte limit.
        "unix_socket_directories=".into(),
        "-c".into(),
        "max_connections=300".into(),
    ];
    if !durable {
        for setting in ["fsync=off", "full_page_writes=off"] {
            args.push("-c".into());
            args.push(setting.into());
        }
    }
    // Written by us before the server runs as another user, so it stays writable to us
    // for reading and to the server for appending.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(EngineError::io(format!("opening {}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(EngineError::io("cloning the log handle"))?;
    // SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to leave.
    let mut cmd = spawn::command(&bin.join("postgres"), &args, run_as, "INT");
    cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
    let mut child = spawn::spawn(cmd, "postgres")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .status()
            .map_err(EngineError::io("running pg_isready"))?;
        if ready.success() {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(EngineError::Failed {
                what: "postgres".into(),
                detail: format!("exited with {status}: {}", tail(log_path)),
            });
        }
        if Instant::now() > deadline {
            spawn::stop(&mut child, Signal::SIGINT, Duration::from_secs(5));
            return Err(EngineError::Failed {
                what: "postgres".into(),
                detail: format!("not ready after 30 s: {}", tail(log_path)),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Finds PostgreSQL's server binaries: `CHRONICLE_PG_BIN`, then Debian's
/// `/usr/lib/postgresql/<newest>/bin`, then the directory of `initdb` on PATH.
fn bin_dir() -> Result<PathBuf, EngineError> {
    if let Some(dir) = std::env::var_os("CHRONICLE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let debian = Path::new("/usr/lib/postgresql");
    if let Ok(entries) = std::fs::read_dir(debian) {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("postgres").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Ok(bin);
        }
    }
    spawn::find_on_path("initdb", &[])
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|dir| dir.join("postgres").is_file())
        .ok_or(EngineError::NotInstalled {
            what: "PostgreSQL",
            hint: "run `apt-get install postgresql` (scripts/setup does)",
        })
}

/// Where a cluster meant for `wanted` can live: `wanted` itself, unless this process is
/// root and the `postgres` user cannot enter one of its parents (a clone under `/root`,
/// mode 700 on Debian); then a directory under `/var/lib/chronicle` named after `wanted`,
/// which the caller should tell the user about.
pub fn cluster_dir_for(wanted: &Path) -> PathBuf {
    if !spawn::is_root() {
        return wanted.to_path_buf();
    }
    let Some(user) = nix::unistd::User::from_name("postgres").ok().flatten() else {
        return wanted.to_path_buf();
    };
    let absolute = std::path::absolute(wanted).unwrap_or_else(|_| wanted.to_path_buf());
    let blocked = absolute
        .ancestors()
        .skip(1)
        .filter(|dir| dir.exists())
        .any(|dir| !can_enter(dir, user.uid.as_raw(), user.gid.as_raw()));
    if !blocked {
        return wanted.to_path_buf();
    }
    let name: String = absolute
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from("/var/lib/chronicle").join(name)
}

/// Whether a user with `uid` and primary group `gid` may traverse `dir`.
fn can_enter(dir: &Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & 0o100 != 0
    } else if meta.gid() == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}
