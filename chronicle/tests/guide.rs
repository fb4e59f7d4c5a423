//! `docs/guide.md` runs as written (and the README's taste of the API, the same way): every
//! command of its `sh` blocks, in order, in one
//! shell (bash, with `set -o pipefail`), against a `chronicle up` on servers of its own
//! started as the guide starts it, and each answer shown under a command (`# {...}`) is
//! compared with what the command printed, by shape.
//!
//! How an answer is read:
//! - The first comment line right under a command is its answer. One that starts with `{`
//!   or `[` is JSON: the value at its start is compared, and the rest of the line and the
//!   next comment lines are prose. Any other is the exact text the command prints (a
//!   downloaded file's bytes).
//! - `...` where a member of an object would stand: the object may have more members. As
//!   the last element of an array: more elements may follow. Anywhere else: any value.
//! - A string containing `...` stands for any string (ids, times, tokens).
//! - Everything else is compared as it is: keys, numbers, strings, booleans, nulls, and
//!   the length of an array that ends without `...`.
//!
//! A command that changes nothing (a `curl` without `-X` and without a body) is asked again
//! until its answer matches or 30 s pass, as a reader would, since read models and alerts
//! follow the commands a moment later. A block fenced `sh skip` is not run (starting the
//! server, which the test does itself). The guide's `localhost:8080` is the server's
//! address.

mod common;

use serde_json::Value;
use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// A command of the guide and the answer it shows, if any.
#[derive(Debug)]
struct Step {
    line: usize,
    command: String,
    answer: Option<Answer>,
}

/// What a command is shown to print.
#[derive(Debug)]
enum Answer {
    /// JSON, compared by shape.
    Json(Value),
    /// Text, compared as it is.
    Text(String),
}

const ANY: &str = "\u{2063}any";
const REST: &str = "\u{2063}rest";

#[test]
fn the_guide_runs_as_written_and_each_answer_has_the_shape_it_shows() {
    let guide = read("docs/guide.md");
    // A tour of every context.
    for context in chronicle::contexts::names() {
        let heading = format!("## {}", capitalised(context));
        assert!(
            guide.lines().any(|l| l.starts_with(&heading)),
            "the guide has no section `{heading}`"
        );
    }
    run_page("docs/guide.md", &guide, 30);
}

/// The README's taste of the API, the same way, on a system of its own.
#[test]
fn the_readmes_taste_of_the_api_runs_as_written() {
    run_page("README.md", &read("README.md"), 5);
}

fn read(page: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(page)).unwrap()
}

/// Runs the commands of `text` (the page `name`, of at least `least` commands) against a
/// `chronicle up` of its own, started as the pages start it.
fn run_page(name: &str, text: &str, least: usize) {
    let steps = steps(name, text);
    assert!(steps.len() >= least, "only {} steps read", steps.len());
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut up = Command::new(env!("CARGO_BIN_EXE_chronicle"));
    up.arg("up")
        .env("CHRONICLE_DATA_DIR", data.path())
        .env("CHRONICLE_STAFF_USERS", "ada")
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL");
    let (_running, base, _) = common::start_gateway(up);
    let address = base.trim_start_matches("http://").to_owned();

    let mut shell = Shell::start(work.path());
    let mut failures = Vec::new();
    for step in &steps {
        let command = step.command.replace("localhost:8080", &address);
        let retry = step.answer.is_some() && reads_only(&command);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, printed) = shell.run(&command);
            let outcome = if status != 0 {
                Err(format!("exited {status}"))
            } else if let Some(Answer::Json(answer)) = &step.answer {
                serde_json::from_str::<Value>(printed.trim())
                    .map_err(|e| format!("not JSON ({e})"))
                    .and_then(|actual| matches(answer, &actual, "$"))
            } else if let Some(Answer::Text(text)) = &step.answer {
                if printed.trim() == text {
                    Ok(())
                } else {
                    Err(format!("the guide shows {text:?}"))
                }
            } else {
                Ok(())
            };
            match outcome {
                Ok(()) => break,
                Err(_) if retry && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(why) => {
                    failures.push(format!(
                        "{name}:{}: {}\n  {why}\n  printed: {}",
                        step.line,
                        step.command,
                        printed.trim()
                    ));
                    break;
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} steps answered otherwise than {name} shows:\n{}",
        failures.len(),
        steps.len(),
        failures.join("\n")
    );
}

fn capitalised(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// A `curl` that only reads: no method named, no body.
fn reads_only(command: &str) -> bool {
    command.contains("curl")
        && !command.contains("-X")
        && !command.contains(" -d ")
        && !command.contains("--data")
        && !command.contains(" -F ")
}

/// The commands of the `sh` blocks of `page` (named `name`) with their answers.
fn steps(name: &str, page: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut skip = false;
    let mut pending: Option<(usize, String)> = None;
    let mut answered = true;
    for (index, line) in page.lines().enumerate() {
        let number = index + 1;
        if let Some(info) = line.strip_prefix("```") {
            if in_block {
                in_block = false;
            } else {
                let info = info.trim();
                in_block = info == "sh" || info.starts_with("sh ");
                skip = info == "sh skip";
            }
            continue;
        }
        if !in_block || skip {
            continue;
        }
        // A command goes on while its lines end with a backslash.
        if let Some((start, mut command)) = pending.take() {
            command.push('\n');
            command.push_str(line);
            if line.ends_with('\\') {
                pending = Some((start, command));
            } else {
                steps.push(Step {
                    line: start,
                    command,
                    answer: None,
                });
                answered = false;
            }
            continue;
        }
        let trimmed = line.trim();
        if let Some(comment) = trimmed.strip_prefix('#') {
            let comment = comment.trim_start();
            if !answered {
                let step = steps.last_mut().expect("an answer follows a command");
                step.answer = Some(if comment.starts_with('{') || comment.starts_with('[') {
                    Answer::Json(answer(comment).unwrap_or_else(|e| {
                        panic!("{name}:{number}: the answer does not read: {e}")
                    }))
                } else {
                    Answer::Text(comment.to_owned())
                });
                answered = true;
            }
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        if line.ends_with('\\') {
            pending = Some((number, line.to_owned()));
        } else {
            steps.push(Step {
                line: number,
                command: line.to_owned(),
                answer: None,
            });
            answered = false;
        }
    }
    steps
}

/// The JSON value at the start of `text`, its `...` made into the markers [`matches`] reads.
fn answer(text: &str) -> Result<Value, serde_json::Error> {
    let mut json = String::with_capacity(text.len());
    // The open containers, and whether an object expects a key next.
    let mut open: Vec<char> = Vec::new();
    let mut key_next = false;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if in_string {
            json.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                json.push(c);
            }
            '{' | '[' => {
                open.push(c);
                key_next = c == '{';
                json.push(c);
            }
            '}' | ']' => {
                open.pop();
                key_next = false;
                json.push(c);
                if open.is_empty() {
                    break;
                }
            }
            ',' => {
                key_next = open.last() == Some(&'{');
                json.push(c);
            }
            ':' => {
                key_next = false;
                json.push(c);
            }
            '.' if text[at..].starts_with("...") => {
                chars.next();
                chars.next();
                if key_next {
                    json.push_str(&format!("\"{REST}\":null"));
                } else {
                    json.push_str(&format!("\"{ANY}\""));
                }
            }
            _ => json.push(c),
        }
    }
    serde_json::from_str(&json)
}

/// Whether `actual` has the shape `expected` shows (see the module's doc).
fn matches(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    let differ = || {
        Err(format!(
            "at {path}: the guide shows {expected}, got {actual}"
        ))
    };
    match (expected, actual) {
        (Value::String(s), _) if s == ANY => Ok(()),
        (Value::String(s), Value::String(_)) if s.contains("...") => Ok(()),
        (Value::Object(shown), Value::Object(got)) => {
            let open = shown.contains_key(REST);
            for (key, value) in shown.iter().filter(|(k, _)| *k != REST) {
                let Some(other) = got.get(key) else {
                    return Err(format!("at {path}: no `{key}` in {actual}"));
                };
                matches(value, other, &format!("{path}.{key}"))?;
            }
            let extra: Vec<&String> = got.keys().filter(|k| !shown.contains_key(*k)).collect();
            if !open && !extra.is_empty() {
                return Err(format!(
                    "at {path}: {extra:?} not shown (end the object with `...`)"
                ));
            }
            Ok(())
        }
        (Value::Array(shown), Value::Array(got)) => {
            let open = shown.last().is_some_and(|v| v == ANY);
            let shown = if open {
                &shown[..shown.len() - 1]
            } else {
                &shown[..]
            };
            if got.len() < shown.len() || (!open && got.len() != shown.len()) {
                return differ();
            }
            for (i, (a, b)) in shown.iter().zip(got).enumerate() {
                matches(a, b, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Ok(()),
        _ if expected == actual => Ok(()),
        _ => differ(),
    }
}

/// One bash, kept for the whole guide so its variables carry from command to command.
struct Shell {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    dir: std::path::PathBuf,
}

impl Shell {
    fn start(dir: &std::path::Path) -> Self {
        let mut child = Command::new("bash")
            .arg("--noprofile")
            .arg("--norc")
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bash");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "set -o pipefail").unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
            dir: dir.to_owned(),
        }
    }

    /// Runs `command`; its status and what it printed (stdout and stderr).
    fn run(&mut self, command: &str) -> (i32, String) {
        let out = self.dir.join(".printed");
        writeln!(
            self.stdin,
            "{{\n{command}\n}} > {} 2>&1; echo \"status $?\"",
            out.display()
        )
        .unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let status = line
            .trim()
            .strip_prefix("status ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("the shell said {line:?}"));
        (status, std::fs::read_to_string(&out).unwrap_or_default())
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_answer_reads_its_elisions() {
    let shown =
        answer(r#"{"id":"0193...","history":[{"status":"pending",...},...],...}   (prose)"#)
            .unwrap();
    let got: Value = serde_json::from_str(
        r#"{"id":"0193aa","history":[{"status":"pending","at":"x"},{"status":"reserved","at":"y"}],"version":2}"#,
    )
    .unwrap();
    assert_eq!(matches(&shown, &got, "$"), Ok(()));
    // A member shown must be there, with its value.
    let wrong: Value = serde_json::from_str(
        r#"{"id":"0193aa","history":[{"status":"paid","at":"x"}],"version":2}"#,
    )
    .unwrap();
    assert!(matches(&shown, &wrong, "$").is_err());
    // Without `...`, an object has exactly the members shown, an array its length.
    let closed = answer(r#"{"points":[[...,42.0]]}"#).unwrap();
    assert_eq!(
        matches(
            &closed,
            &serde_json::json!({"points": [[1_796_212_800, 42]]}),
            "$"
        ),
        Ok(())
    );
    assert!(matches(
        &closed,
        &serde_json::json!({"points": [[1, 42], [2, 42]]}),
        "$"
    )
    .is_err());
    assert!(matches(
        &closed,
        &serde_json::json!({"points": [[1, 42]], "more": 1}),
        "$"
    )
    .is_err());
    assert!(matches(&closed, &serde_json::json!({"points": [[1, 41]]}), "$").is_err());
}
