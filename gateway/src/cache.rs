//! The moka cache in front of the hot blog reads: post detail and the tag list.
//!
//! Entries are dropped when the projection notifies that a post changed (channel
//! `chronicle_posts`, sent when its batch commits, heard by the gateway's one listener). Two rules keep it from ever serving
//! older data than asked for:
//! - a read with `?min_version=N` uses a cached post only when its version is at least N,
//!   else it reads (and waits on) the read model;
//! - a value read from the database is cached only if no notification arrived while it
//!   was being read (an epoch counter), so a slow read cannot put back what an
//!   invalidation just removed. A lost listener connection empties the cache.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use chronicle_projections::posts::{PostView, TagCount};
use moka::sync::Cache;

struct Inner {
    posts: Cache<String, Arc<PostView>>,
    tags: Cache<(), Arc<Vec<TagCount>>>,
    epoch: AtomicU64,
}

impl Inner {
    fn invalidate(&self, post_id: Option<&str>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        match post_id {
            Some(id) => self.posts.invalidate(id),
            None => self.posts.invalidate_all(),
        }
        // Tags count published posts: any post change may move them.
        self.tags.invalidate_all();
    }
}

/// A [`PostCache`] that does not keep it alive (for the listener task).
pub(crate) struct WeakPostCache(Weak<Inner>);

impl WeakPostCache {
    pub(crate) fn upgrade(&self) -> Option<PostCache> {
        self.0.upgrade().map(|inner| PostCache { inner })
    }
}

/// Cheap to clone.
#[derive(Clone)]
pub struct PostCache {
    inner: Arc<Inner>,
}

impl PostCache {
    /// A cache of at most `capacity` posts; the gateway's listener
    /// (the freshness listener) drops entries as the projection notifies.
    pub fn new(capacity: u64) -> Self {
        let inner = Arc::new(Inner {
            posts: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(300))
                .build(),
            tags: Cache::builder()
                .max_capacity(1)
                .time_to_live(Duration::from_secs(300))
                .build(),
            epoch: AtomicU64::new(0),
        });
        Self { inner }
    }

    /// Drops the post `post_id` (everything with `None`) and the tag list.
    pub(crate) fn invalidate(&self, post_id: Option<&str>) {
        self.inner.invalidate(post_id);
    }

    pub(crate) fn downgrade(&self) -> WeakPostCache {
        WeakPostCache(Arc::downgrade(&self.inner))
    }

    /// The post from the cache when it is there and at least `min_version`, else from
    /// `read`, which is cached when nothing changed meanwhile.
    ///
    /// # Errors
    /// Whatever `read` fails with.
    pub async fn post<E, Fut>(
        &self,
        id: &str,
        min_version: Option<u64>,
        read: impl FnOnce() -> Fut,
    ) -> Result<Option<Arc<PostView>>, E>
    where
        Fut: Future<Output = Result<Option<PostView>, E>>,
    {
        if let Some(hit) = self.inner.posts.get(id) {
            if min_version.is_none_or(|min| hit.version as u64 >= min) {
                return Ok(Some(hit));
            }
        }
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        let Some(post) = read().await? else {
            return Ok(None);
        };
        let post = Arc::new(post);
        if self.inner.epoch.load(Ordering::SeqCst) == epoch {
            self.inner.posts.insert(id.to_owned(), post.clone());
        }
        Ok(Some(post))
    }

    /// The tag list, cached the same way.
    ///
    /// # Errors
    /// Whatever `read` fails with.
    pub async fn tags<E, Fut>(&self, read: impl FnOnce() -> Fut) -> Result<Arc<Vec<TagCount>>, E>
    where
        Fut: Future<Output = Result<Vec<TagCount>, E>>,
    {
        if let Some(hit) = self.inner.tags.get(&()) {
            return Ok(hit);
        }
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        let tags = Arc::new(read().await?);
        if self.inner.epoch.load(Ordering::SeqCst) == epoch {
            self.inner.tags.insert((), tags.clone());
        }
        Ok(tags)
    }
}
