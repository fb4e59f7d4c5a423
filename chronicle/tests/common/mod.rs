//! Running the `chronicle` binary from a test.
//!
//! Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

/// A chronicle process; killed if the test ends (or panics) before it is stopped, so a
/// failed test never leaves a server running.
pub struct Running(pub Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `chronicle up` on a test's own PostgreSQL and NATS, everyone staff, logging warnings,
/// its key and `running.json` in `data` (a directory of the test's, not the crate's).
pub fn up_on(
    db: &chronicle_tests::TestDb,
    nats: &chronicle_tests::TestNats,
    data: &std::path::Path,
) -> Command {
    let mut up = Command::new(env!("CARGO_BIN_EXE_chronicle"));
    up.arg("up")
        .env("CHRONICLE_DATA_DIR", data)
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", nats.url())
        .env("CHRONICLE_STAFF_USERS", "*")
        .env("RUST_LOG", "warn");
    up
}

/// Starts `command` (a `chronicle` subcommand that runs a gateway) on port 0; returns it,
/// its gateway's base URL, and what it printed before that. Its later output is drained,
/// so it never blocks on a full pipe.
pub fn start_gateway(command: Command) -> (Running, String, Vec<String>) {
    start_gateway_logging_to(command, Stdio::inherit())
}

/// [`start_gateway`], with the process's log (its stderr) sent to `log`.
pub fn start_gateway_logging_to(
    mut command: Command,
    log: impl Into<Stdio>,
) -> (Running, String, Vec<String>) {
    let mut child = command
        .env("CHRONICLE_HTTP_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("the chronicle binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut said = Vec::new();
    // Blocks until the line is printed (the servers are up by then) or the process exits.
    let base = loop {
        let line = lines
            .next()
            .expect("chronicle prints its address before anything fails")
            .expect("stdout is readable");
        if let Some(url) = line.strip_prefix("chronicle: gateway listening on ") {
            break url.trim().to_owned();
        }
        said.push(line);
    };
    std::thread::spawn(move || for _ in lines {});
    (Running(Some(child)), base, said)
}
