//! Starts and supervises real `nats-server` and PostgreSQL processes.
//!
//! # Layout
//!
//! - [`NatsServer`]: one JetStream node (`sync_interval: always`), on a port chosen by the
//!   server itself, restartable on the same port and store.
//! - [`Postgres`]: one PostgreSQL cluster, `initdb`'d on first use, run as the `postgres`
//!   user when this process is root (the server refuses to run as root).
//! - [`find_binary`]-style lookups for both, so a fresh machine only needs what README's
//!   set-up command installs.
//!
//! Used by `chronicle up` (data under `./.chronicle`), by the test harness (temp dirs, one
//! cluster per test binary) and by the benchmark harness. Calls block: they run at start-up,
//! not on a hot path.
//!
//! Every child is started through `setpriv --pdeathsig` from one long-lived thread, so the
//! kernel stops the servers when this process dies, however it dies: a crashed test binary
//! never leaves a server behind.

mod nats;
mod postgres;
mod spawn;

pub use nats::{ClusterNode, NatsOptions, NatsServer};
pub use postgres::{cluster_dir_for, Postgres, PostgresOptions};

/// Starts `program args` with its stdio and environment as `configure` sets them, the way
/// the servers are started: through `setpriv --pdeathsig KILL`, from the long-lived thread,
/// so it dies with this process (the fault harness starts Chronicle's roles so).
///
/// # Errors
/// When it cannot be started.
pub fn spawn_dying_with_us(
    program: &std::path::Path,
    args: &[String],
    configure: impl FnOnce(&mut std::process::Command),
) -> Result<std::process::Child, EngineError> {
    let mut command = spawn::command(program, args, None, "KILL");
    configure(&mut command);
    spawn::spawn(command, &program.display().to_string())
}

/// Why an engine could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what} was not found: {hint}")]
    NotInstalled {
        what: &'static str,
        hint: &'static str,
    },
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
