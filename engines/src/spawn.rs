//! Starting children so that they die with this process.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
//! Test threads and tokio workers come and go, so every child is forked by one thread that
//! lives as long as the process. `setpriv` sets the signal (after dropping privileges, which
//! would otherwise clear it) and then execs the server, so no `unsafe` is needed here.

use std::{
    process::{Child, Command, Stdio},
    sync::{mpsc, Mutex, OnceLock},
    thread,
};

use crate::EngineError;

/// The user to run a child as, when it must not run as root.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    pub user: String,
}

type Request = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("chronicle-engine-spawner".into())
            .spawn(move || {
                // Lives until the process exits: its exit is what would fire PDEATHSIG.
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                loop {
                    thread::park();
                }
            })
            .expect("the OS lets this process start one thread at start-up");
        Mutex::new(tx)
    })
}

/// Builds `setpriv [--reuid U --regid U --init-groups] --pdeathsig SIG -- program args...`.
pub(crate) fn command(
    program: &std::path::Path,
    args: &[String],
    run_as: Option<&RunAs>,
    death_signal: &str,
) -> Command {
    let mut cmd = Command::new("setpriv");
    if let Some(run_as) = run_as {
        cmd.arg(format!("--reuid={}", run_as.user))
            .arg(format!("--regid={}", run_as.user))
            .arg("--init-groups");
    }
    cmd.arg(format!("--pdeathsig={death_signal}"))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Starts `command` from the long-lived spawner thread.
pub(crate) fn spawn(command: Command, what: &str) -> Result<Child, EngineError> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| EngineError::Failed {
            what: what.into(),
            detail: "the spawner lock was poisoned".into(),
        })?
        .send((command, tx))
        .map_err(|_| EngineError::Failed {
            what: what.into(),
            detail: "the spawner thread is gone".into(),
        })?;
    rx.recv()
        .map_err(|_| EngineError::Failed {
            what: what.into(),
            detail: "the spawner thread did not answer".into(),
        })?
        .map_err(EngineError::io(format!("starting {what}")))
}

/// Whether this process runs as root (and so must drop to another user for PostgreSQL).
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Sends `signal` to a child and waits for it, killing it if it is still there after
/// `grace`.
pub(crate) fn stop(
    child: &mut Child,
    signal: nix::sys::signal::Signal,
    grace: std::time::Duration,
) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, signal);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Looks for `name` on PATH and in the extra directories, first hit wins.
pub(crate) fn find_on_path(name: &str, extra: &[std::path::PathBuf]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
