//! A real SMTP server for mail tests: `aiosmtpd` (PyPI, installed by `scripts/setup`)
//! delivering into a maildir the test reads.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct SmtpServer {
    /// `smtp://127.0.0.1:<port>`.
    pub url: String,
    maildir: tempfile::TempDir,
    child: Child,
}

impl SmtpServer {
    /// Starts `python3 -m aiosmtpd` on a free port of 127.0.0.1 and waits until it accepts
    /// connections.
    ///
    /// # Panics
    /// When aiosmtpd is missing or does not start within 20 s.
    pub async fn start() -> Self {
        let maildir = tempfile::tempdir().expect("a temporary maildir");
        // A port the OS just gave out: aiosmtpd takes no port 0.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (scripts/setup installs it)");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "aiosmtpd did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            url: format!("smtp://127.0.0.1:{port}"),
            maildir,
            child,
        }
    }

    /// Every mail received so far, as raw text (headers and body).
    pub fn messages(&self) -> Vec<String> {
        let dir: PathBuf = self.maildir.path().join("mail").join("new");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut mails: Vec<(std::time::SystemTime, String)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let modified = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((modified, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect();
        mails.sort();
        mails.into_iter().map(|(_, text)| text).collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
