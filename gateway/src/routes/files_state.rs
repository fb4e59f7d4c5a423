//! What the files routes are configured with, and what they keep in a gateway process.

use crate::{error::ApiError, state::AppState};

/// How the files routes are configured.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Replicas of the `files` object store bucket when it is created.
    pub replicas: usize,
    /// How long a resumable upload may stay unfinished (`CHRONICLE_UPLOAD_TTL`).
    pub upload_ttl: std::time::Duration,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            upload_ttl: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

/// What the files routes keep in a gateway process.
pub(crate) struct FilesState {
    /// File bytes, opened on first use.
    content: tokio::sync::OnceCell<chronicle_bus::ContentStore>,
    /// Upload assemblies running in this process, by upload id: asking to complete an
    /// upload again waits for the one running instead of starting another.
    pub(crate) assemblies: std::sync::Mutex<std::collections::HashMap<String, Assembly>>,
    /// The running SHA-256 of uploads (tus or chunks) this process receives in order, by
    /// upload id, with the offset it stands at.
    pub(crate) running_hashes:
        std::sync::Mutex<std::collections::HashMap<String, (u64, sha2::Sha256)>>,
    /// Thumbnails being made at once (each holds an image's bytes and pixels).
    pub(crate) thumbnailing: tokio::sync::Semaphore,
}

impl Default for FilesState {
    fn default() -> Self {
        Self {
            content: tokio::sync::OnceCell::new(),
            assemblies: std::sync::Mutex::default(),
            running_hashes: std::sync::Mutex::default(),
            thumbnailing: tokio::sync::Semaphore::new(1),
        }
    }
}

/// The outcome of an upload's assembly, which any number of requests may wait for.
pub(crate) type Assembly = futures::future::Shared<
    futures::future::BoxFuture<'static, Result<(), crate::error::ApiError>>,
>;

impl AppState {
    /// What the files routes keep in this process.
    pub(crate) fn files(&self) -> &FilesState {
        self.contexts.get()
    }

    /// The file bytes (the `files` object store bucket).
    ///
    /// # Errors
    /// 503 when JetStream refuses to open it.
    pub(crate) async fn content(&self) -> Result<&chronicle_bus::ContentStore, ApiError> {
        self.files()
            .content
            .get_or_try_init(|| async {
                chronicle_bus::ContentStore::open(
                    &async_nats::jetstream::new(self.nats.clone()),
                    self.config.contexts.get::<FilesConfig>().replicas,
                )
                .await
            })
            .await
            .map_err(ApiError::internal)
    }
}
