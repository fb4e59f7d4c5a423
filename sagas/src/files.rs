//! The files janitor: removes what nothing needs any more, a sweep at a time.
//!
//! - Bytes no live file refers to (the `file_metadata` read model's reference counts),
//!   once nobody has claimed them for the grace period. Every way a file comes to point at
//!   bytes claims them first (`file_metadata::claim_bytes`), and the janitor holds the
//!   claim's row while it removes the bytes: a claim made during a removal waits for it,
//!   then finds the bytes gone and stores them anew. Removal needs the read model to be
//!   caught up with the log (the outbox published and the projector's consumer drained,
//!   nothing parked), so a file that exists but is not projected yet never looks like
//!   garbage; a lagging projector only postpones the sweep.
//! - The chunks of uploads abandoned past their expiry (and the grace period): removed,
//!   then the upload is expired (`UploadExpired`), so a crash between the two repeats a
//!   harmless removal.
//!
//! - Every hour, parts no manifest lists and no open upload holds, older than an upload's
//!   lifetime: left by a gateway that died between writing bytes and naming them, or by the
//!   losing copy of two identical uploads sealed at once. This lists the whole bucket.

use std::{future::Future, time::Duration};

use chronicle_bus::{ContentStore, ErrorChain};
use chronicle_commands::{CommandContext, CommandError, CommandExecutor};
use chronicle_files::{TusCommand, TusError, TusUpload, Upload, UploadCommand, UploadError};
use chronicle_projections::file_metadata;
use sqlx::PgPool;

/// The actor recorded on the events the janitor causes.
const ACTOR: &str = "janitor:files";

/// Tuning of the files janitor.
#[derive(Debug, Clone)]
pub struct FilesJanitorConfig {
    /// How long bytes stay after their last file went or their last claim
    /// (`CHRONICLE_FILES_GRACE`), and an upload after its expiry.
    pub grace: Duration,
    /// How often it sweeps (`CHRONICLE_FILES_SWEEP_INTERVAL`).
    pub every: Duration,
    /// How long a sweep waits for the read model to catch up before it gives up.
    pub catch_up: Duration,
    /// How old a part no manifest lists and no open upload holds must be to be removed: an
    /// upload's lifetime and then some (a crash between writing bytes and naming them).
    pub orphan_age: Duration,
    /// How often the whole bucket is listed for such parts.
    pub orphans_every: Duration,
}

impl Default for FilesJanitorConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(600),
            every: Duration::from_secs(60),
            catch_up: Duration::from_secs(30),
            orphan_age: Duration::from_secs(25 * 3600),
            orphans_every: Duration::from_secs(3600),
        }
    }
}

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum JanitorError {
    #[error(transparent)]
    Database(#[from] chronicle_commands::DbError),
    #[error("the event store")]
    Store(#[from] chronicle_commands::StoreError),
    #[error("the object store")]
    Content(#[from] chronicle_bus::ContentError),
    #[error("the log")]
    Log(#[from] chronicle_bus::SubscriberError),
    #[error("opening the object store")]
    Nats(#[from] chronicle_bus::BusError),
    #[error("expiring upload {id}")]
    Command {
        id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> JanitorError {
    move |source| JanitorError::Database(chronicle_commands::DbError { context, source })
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Bytes removed (their hashes).
    pub bytes_removed: Vec<String>,
    /// Uploads expired and their chunks removed.
    pub uploads_expired: Vec<String>,
    /// The read model was not caught up: no bytes were looked at.
    pub postponed: bool,
}

/// Whether `name` is a part of some bytes (not a manifest, not a thumbnail), and the
/// upload it belongs to if it is an upload's.
fn part_of(name: &str) -> Option<Option<&str>> {
    let (kind, rest) = name.split_once('.')?;
    match kind {
        "part" => Some(None),
        "chunk" | "tus" => Some(rest.split('.').next()),
        _ => None,
    }
}

/// The files janitor of one process (one is enough; two only take turns on the rows).
pub struct FilesJanitor {
    pool: PgPool,
    nats: async_nats::Client,
    commands: CommandExecutor,
    config: FilesJanitorConfig,
}

impl FilesJanitor {
    pub fn new(
        pool: PgPool,
        nats: async_nats::Client,
        commands: CommandExecutor,
        config: FilesJanitorConfig,
    ) -> Self {
        Self {
            pool,
            nats,
            commands,
            config,
        }
    }

    /// Sweeps every interval until `shutdown`; a failed sweep is logged and tried again.
    ///
    /// # Errors
    /// Never; the signature matches the other components'.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), JanitorError> {
        // The read model it reads may not exist yet (its projector starts beside it).
        let metadata = file_metadata::FileMetadataProjection;
        if let Err(e) = chronicle_projections::setup(&self.pool, &metadata).await {
            tracing::warn!(error = %ErrorChain(&e), "the file_metadata tables are not there yet");
        }
        // One loop for both sweeps, so they never run at once; the orphan sweep is rarer.
        let mut orphans_due = tokio::time::Instant::now() + self.config.orphans_every;
        let janitor = &self;
        chronicle_bus::periodic::every(
            "files janitor",
            self.config.every,
            Duration::ZERO,
            shutdown,
            move || {
                let orphans = tokio::time::Instant::now() >= orphans_due;
                if orphans {
                    orphans_due = tokio::time::Instant::now() + janitor.config.orphans_every;
                }
                async move {
                    // A failed orphan sweep does not hold back the regular one.
                    let removed = match orphans {
                        true => janitor.sweep_orphans().await,
                        false => Ok(Vec::new()),
                    };
                    match removed {
                        Ok(removed) if !removed.is_empty() => {
                            tracing::info!(
                                parts = removed.len(),
                                "files janitor removed orphaned parts"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %ErrorChain(&e), "files janitor orphan sweep failed")
                        }
                    }
                    let swept = janitor.sweep().await?;
                    if swept != Swept::default() {
                        tracing::info!(
                            bytes = swept.bytes_removed.len(),
                            uploads = swept.uploads_expired.len(),
                            postponed = swept.postponed,
                            "files janitor swept"
                        );
                    }
                    Ok::<(), JanitorError>(())
                }
            },
        )
        .await;
        Ok(())
    }

    /// One sweep: abandoned uploads, then unreferenced bytes.
    ///
    /// # Errors
    /// The database's, the object store's, a command's.
    pub async fn sweep(&self) -> Result<Swept, JanitorError> {
        let js = async_nats::jetstream::new(self.nats.clone());
        let content = ContentStore::open(&js, 1).await?;
        // A grace too large for the calendar keeps everything, rather than panicking.
        let grace = chrono::TimeDelta::from_std(self.config.grace).ok();
        let before_grace = || {
            grace
                .and_then(|g| chrono::Utc::now().checked_sub_signed(g))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH)
        };
        let mut swept = Swept::default();
        let cutoff = before_grace();
        for upload in file_metadata::abandoned_uploads(&self.pool, cutoff, 100)
            .await
            .map_err(db("finding abandoned uploads"))?
        {
            // Every object the events name, and for chunks also the ones named after their
            // index (chunks recorded before they had objects of their own).
            let mut names = upload.segments;
            if upload.kind != "tus" {
                names.extend(
                    (0..u64::try_from(upload.parts).unwrap_or(0))
                        .map(|index| chronicle_bus::upload_part(&upload.id, index)),
                );
            }
            let parts: Vec<_> = names
                .into_iter()
                .map(|name| chronicle_bus::Part { name, size: 0 })
                .collect();
            content.drop_parts(&parts).await;
            // One upload that cannot be expired does not stop the sweep of the others.
            match self.expire(&upload.id, &upload.kind).await {
                Ok(()) => swept.uploads_expired.push(upload.id),
                Err(e) => {
                    tracing::warn!(upload = %upload.id, error = %ErrorChain(&e), "an abandoned upload was not expired")
                }
            }
        }
        // A sweep's cutoff is taken before it checks the read model is caught up: every
        // file pointing at bytes claimed before the cutoff is in the read model by then.
        let cutoff = before_grace();
        if !self.caught_up(&js).await? {
            swept.postponed = true;
            return Ok(swept);
        }
        for sha256 in file_metadata::unreferenced_bytes(&self.pool, cutoff, 100)
            .await
            .map_err(db("finding unreferenced bytes"))?
        {
            // Bytes that cannot be removed now do not stop the removal of the others.
            match self.remove(&content, &sha256, cutoff).await {
                Ok(true) => swept.bytes_removed.push(sha256),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%sha256, error = %ErrorChain(&e), "bytes were not removed")
                }
            }
        }
        Ok(swept)
    }

    /// Removes parts no manifest lists and no open upload holds, older than `orphan_age`
    /// (left by a gateway that died between writing bytes and naming them, or by the losing
    /// copy of two identical uploads sealed at once): their names. Lists the whole bucket.
    ///
    /// # Errors
    /// The object store's, the database's.
    pub async fn sweep_orphans(&self) -> Result<Vec<String>, JanitorError> {
        let js = async_nats::jetstream::new(self.nats.clone());
        let content = ContentStore::open(&js, 1).await?;
        let content_error = JanitorError::Content;
        // Which uploads are open is the read model's word: it must hold every upload begun.
        if !self.caught_up(&js).await? {
            return Ok(Vec::new());
        }
        let oldest = chrono::Utc::now().timestamp()
            - i64::try_from(self.config.orphan_age.as_secs()).unwrap_or(i64::MAX);
        let objects = content.objects().await.map_err(content_error)?;
        let mut listed = std::collections::HashSet::new();
        for manifest in objects.iter().filter(|o| o.manifest) {
            if let Some(blob) = content.blob(&manifest.name).await.map_err(content_error)? {
                listed.extend(blob.parts.into_iter().map(|p| p.name));
            }
        }
        let open: std::collections::HashSet<String> = file_metadata::open_uploads(&self.pool)
            .await
            .map_err(db("finding open uploads"))?
            .into_iter()
            .collect();
        let mut removed = Vec::new();
        for object in objects {
            let Some(upload) = part_of(&object.name) else {
                continue;
            };
            if object.written_at > oldest
                || listed.contains(&object.name)
                || upload.is_some_and(|id| open.contains(id))
            {
                continue;
            }
            match content.delete_object(&object.name).await {
                Ok(()) => removed.push(object.name),
                Err(e) => {
                    tracing::warn!(part = %object.name, error = %ErrorChain(&e), "an orphaned part was not removed")
                }
            }
        }
        Ok(removed)
    }

    /// Removes the bytes named `sha256` (with their thumbnails) if they may still go,
    /// holding their claim meanwhile: whether they were removed.
    async fn remove(
        &self,
        content: &ContentStore,
        sha256: &str,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, JanitorError> {
        let mut tx = self.pool.begin().await.map_err(db("beginning a removal"))?;
        if !file_metadata::lock_unreferenced(&mut tx, sha256, cutoff)
            .await
            .map_err(db("locking unreferenced bytes"))?
        {
            return Ok(false);
        }
        let content_error = JanitorError::Content;
        content.delete(sha256).await.map_err(content_error)?;
        for thumbnail in chronicle_files::ThumbnailBox::all() {
            content
                .delete_object(&chronicle_bus::thumbnail_object(
                    sha256,
                    &thumbnail.suffix(),
                ))
                .await
                .map_err(content_error)?;
        }
        file_metadata::mark_removed(&mut tx, sha256)
            .await
            .map_err(db("recording a removal"))?;
        tx.commit().await.map_err(db("committing a removal"))?;
        Ok(true)
    }

    /// Expires upload `id` (its parts are gone).
    async fn expire(&self, id: &str, kind: &str) -> Result<(), JanitorError> {
        let ctx = CommandContext {
            actor: Some(ACTOR.to_owned()),
            ..CommandContext::new()
        };
        let now = chrono::Utc::now();
        let outcome = if kind == "tus" {
            match self
                .commands
                .execute::<TusUpload>(id, TusCommand::Expire { now }, &(), &ctx)
                .await
            {
                Ok(_) | Err(CommandError::Rejected(TusError::NotExpired)) => Ok(()),
                Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            }
        } else {
            match self
                .commands
                .execute::<Upload>(id, UploadCommand::Expire { now }, &(), &ctx)
                .await
            {
                Ok(_) | Err(CommandError::Rejected(UploadError::NotExpired)) => Ok(()),
                Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            }
        };
        outcome.map_err(|source| JanitorError::Command {
            id: id.to_owned(),
            source,
        })
    }

    /// Whether the `file_metadata` read model holds every event stored before this call:
    /// the outbox rows present now are published, then the projector's consumer has
    /// nothing pending and nothing is parked. Waits up to `catch_up` for it.
    async fn caught_up(&self, js: &async_nats::jetstream::Context) -> Result<bool, JanitorError> {
        let deadline = tokio::time::Instant::now() + self.config.catch_up;
        let store = self.commands.store_for::<chronicle_files::File>();
        if let Some(newest) = store.outbox_newest().await? {
            loop {
                if !store.outbox_holds_through(newest).await? {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let name = chronicle_projections::Projection::name(&file_metadata::FileMetadataProjection);
        loop {
            let status = chronicle_bus::status(
                &self.pool,
                js,
                name,
                &chronicle_projections::durable_name(name),
            )
            .await?;
            if status.parked > 0 {
                return Ok(false);
            }
            if status.lag_events == 0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
