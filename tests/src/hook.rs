//! A local HTTP endpoint for jobs to call (the scheduler's HTTP actions): it records every
//! request and answers as the test says.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};

/// Every request seen: its path, when it came, and its body.
type Hits = Arc<Mutex<Vec<(String, DateTime<Utc>, String)>>>;

/// How the endpoint answers request number `n` (1 for the first) to `path`: a status, after
/// a delay.
pub type Answer = fn(path: &str, n: usize) -> (u16, Duration);

pub struct Hook {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    hits: Hits,
}

impl Hook {
    /// Serves on a free port of 127.0.0.1 until the test ends.
    pub async fn start(answer: Answer) -> Self {
        let hits: Hits = Arc::default();
        let recorded = hits.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: String| {
            let recorded = recorded.clone();
            async move {
                let path = uri.path().to_owned();
                let n = {
                    let mut hits = recorded
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    hits.push((path.clone(), Utc::now(), body));
                    hits.iter().filter(|(p, _, _)| *p == path).count()
                };
                let (status, after) = answer(&path, n);
                tokio::time::sleep(after).await;
                axum::http::StatusCode::from_u16(status)
                    .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, hits }
    }

    /// When each request to `path` came, in order.
    pub fn hits(&self, path: &str) -> Vec<DateTime<Utc>> {
        self.hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, at, _)| *at)
            .collect()
    }

    /// The bodies of the requests to `path`, in order.
    pub fn bodies(&self, path: &str) -> Vec<String> {
        self.hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, _, body)| body.clone())
            .collect()
    }
}
