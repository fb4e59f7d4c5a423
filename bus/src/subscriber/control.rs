//! Retry requests: a running subscriber answers them on a core NATS subject, so whoever
//! asks (the gateway's staff route, `chronicle projections retry`) needs no handler of its
//! own and reaches the subscriber wherever it runs.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{control_subject, Handler, Subscriber, SubscriberError};
use crate::ErrorChain;

/// What a retry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryOutcome {
    pub applied: u64,
    pub still_parked: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RetryRequest {
    #[serde(default)]
    stream_seq: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum RetryReply {
    Done(RetryOutcome),
    Failed { error: String },
}

/// Asks the running subscriber `name` to retry its parked events (all, or the one at
/// `stream_seq`), and waits for the outcome.
///
/// # Errors
/// [`SubscriberError::NotRunning`] when no process runs it; NATS errors; the subscriber's
/// own failure.
pub async fn request_retry(
    client: &async_nats::Client,
    name: &str,
    stream_seq: Option<u64>,
) -> Result<RetryOutcome, SubscriberError> {
    let body = serde_json::to_vec(&RetryRequest { stream_seq }).unwrap_or_default();
    let request = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(Duration::from_secs(30)));
    let reply = client
        .send_request(control_subject(name), request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                SubscriberError::NotRunning(name.to_owned())
            }
            _ => SubscriberError::nats("requesting a retry")(e),
        })?;
    match serde_json::from_slice(&reply.payload) {
        Ok(RetryReply::Done(outcome)) => Ok(outcome),
        Ok(RetryReply::Failed { error }) => Err(SubscriberError::nats("retrying")(Remote(error))),
        Err(e) => Err(SubscriberError::nats("reading a retry reply")(e)),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the subscriber answered: {0}")]
struct Remote(String);

impl<H: Handler> Subscriber<H> {
    /// Answers retry requests until the process stops; a lost subscription is made again.
    pub(super) async fn serve_retries(&self) {
        let name = self.config.name.as_str();
        loop {
            // One queue group per subscriber: one running instance answers each request.
            let subscription = self
                .client
                .queue_subscribe(control_subject(name), name.to_owned())
                .await;
            let mut requests = match subscription {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(subscriber = name, error = %e, "cannot take retry requests; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(request) = requests.next().await {
                let asked: RetryRequest =
                    serde_json::from_slice(&request.payload).unwrap_or_default();
                let reply = match self.retry_parked(asked.stream_seq).await {
                    Ok(outcome) => RetryReply::Done(outcome),
                    Err(e) => RetryReply::Failed {
                        error: ErrorChain(&e).to_string(),
                    },
                };
                if let Some(reply_to) = request.reply {
                    let body = serde_json::to_vec(&reply).unwrap_or_default();
                    if let Err(e) = self.client.publish(reply_to, body.into()).await {
                        tracing::warn!(subscriber = name, error = %e, "cannot answer a retry request");
                    }
                }
            }
        }
    }
}
