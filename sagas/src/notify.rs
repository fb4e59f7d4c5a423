//! Delivering an alert notification: a JSON POST to a webhook on a host the operator allows
//! (`CHRONICLE_NOTIFY_ALLOW`), or a mail through `CHRONICLE_SMTP_URL`. The scheduler runs
//! these as the actions of system jobs, so a delivery that fails is retried with its growing
//! delays like any run, and each is made once per alert transition and channel (the job id
//! names both).

use std::time::Duration;

use chronicle_bus::ErrorChain;
use chronicle_scheduler::{AllowList, HttpTarget};
use chronicle_schemas::scheduler::Channel;
use lettre::{
    message::{header::ContentType, Mailbox},
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};

/// Where notifications may go and how mail leaves.
#[derive(Clone)]
pub struct NotifyConfig {
    /// Hosts webhooks may call, checked again before each call.
    pub allow: AllowList,
    /// `smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS) or
    /// `smtps://host:port`, with `user:password@` if the server wants them. Unset: mail
    /// channels fail (and are retried) until it is set.
    pub smtp_url: Option<String>,
    /// The sender of alert mail.
    pub from: String,
}

/// The SMTP URL may hold a password: it never prints.
impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("allow", &self.allow)
            .field("smtp_url", &self.smtp_url.as_ref().map(|_| "[redacted]"))
            .field("from", &self.from)
            .finish()
    }
}

/// The sender of alert mail when none is configured.
pub const DEFAULT_SENDER: &str = "Chronicle <chronicle@localhost>";

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            allow: AllowList::default(),
            smtp_url: None,
            from: DEFAULT_SENDER.to_owned(),
        }
    }
}

/// Sends notifications.
#[derive(Clone)]
pub struct Notifier {
    config: NotifyConfig,
    http: reqwest::Client,
    smtp: Option<Result<AsyncSmtpTransport<Tokio1Executor>, String>>,
}

impl Notifier {
    pub fn new(config: NotifyConfig) -> Self {
        let http = reqwest::Client::builder()
            // A redirect could lead anywhere, past the allow list.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let smtp = config.smtp_url.as_deref().map(|url| {
            AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                .map(|b| b.timeout(Some(Duration::from_secs(10))).build())
                .map_err(|e| format!("CHRONICLE_SMTP_URL is not usable: {}", ErrorChain(&e)))
        });
        Self { config, http, smtp }
    }

    /// Sends `body` (JSON for a webhook) under `subject` to `channel`.
    ///
    /// # Errors
    /// What went wrong, as the run's error: a host not allowed, no answer or a non-2xx
    /// answer, no SMTP server configured, a refused mail.
    pub async fn send(
        &self,
        channel: &Channel,
        subject: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        match channel {
            Channel::Webhook { url } => {
                let target = HttpTarget::parse(url).map_err(|e| e.message)?;
                if !self.config.allow.allows(&target) {
                    return Err(format!(
                        "{}:{} is not in CHRONICLE_NOTIFY_ALLOW",
                        target.host, target.port
                    ));
                }
                let response = self
                    .http
                    .post(url)
                    .timeout(timeout)
                    .header("Content-Type", "application/json")
                    .body(body.to_owned())
                    .send()
                    .await
                    .map_err(|e| format!("webhook request failed: {}", ErrorChain(&e)))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("webhook answered HTTP {}", response.status()))
                }
            }
            Channel::Email { to } => {
                let transport = match &self.smtp {
                    None => return Err("CHRONICLE_SMTP_URL is not set".to_owned()),
                    Some(Err(e)) => return Err(e.clone()),
                    Some(Ok(transport)) => transport,
                };
                let from: Mailbox = self.config.from.parse().map_err(|e| {
                    format!("the sender {:?} is not an address: {e}", self.config.from)
                })?;
                let to: Mailbox = to
                    .parse()
                    .map_err(|e| format!("{to:?} is not an address: {e}"))?;
                let message = Message::builder()
                    .from(from)
                    .to(to)
                    .subject(subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(body.to_owned())
                    .map_err(|e| format!("cannot build the mail: {e}"))?;
                tokio::time::timeout(timeout, transport.send(message))
                    .await
                    .map_err(|_| "the SMTP server did not answer in time".to_owned())?
                    .map(|_| ())
                    .map_err(|e| format!("the SMTP server refused the mail: {}", ErrorChain(&e)))
            }
        }
    }
}
