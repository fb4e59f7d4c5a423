//! Who runs what: each process's heartbeat row, and the buckets of jobs given by
//! rendezvous hashing to the live processes, so all agree without talking.

use std::time::{Duration, Instant};

use chronicle_scheduler::{bucket, BUCKETS};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Core;

/// What the heartbeat rows say.
#[derive(Default)]
pub(super) struct View {
    /// Whether each bucket is this process's.
    pub(super) mine: Vec<bool>,
    /// When each process ran: `(started, last seen + two heartbeats)`.
    pub(super) lives: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// When this process's own heartbeat last went through.
    pub(super) beat: Option<Instant>,
}

impl View {
    /// Whether this process's own heartbeat is recent enough for it to act on the view.
    pub(super) fn current(&self, alive_for: Duration) -> bool {
        self.beat.is_some_and(|b| b.elapsed() < alive_for)
    }
}

/// The rendezvous score of `process` for `bucket`: the bucket goes to the live process
/// with the highest. Each (process, bucket) pair is mixed to a well-spread number
/// (SplitMix64's finalizer), so every process wins its share of the buckets.
pub(super) fn score(process: Uuid, bucket: u16) -> u64 {
    let (high, low) = process.as_u64_pair();
    let mut x = high ^ low.rotate_left(29) ^ u64::from(bucket).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2 {
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

/// 0 to 99.
pub(super) fn rand_percent() -> u8 {
    Uuid::new_v4().as_bytes()[0] % 100
}

impl Core {
    /// Writes this process's heartbeat and reads everyone's: which buckets are whose, and
    /// when some scheduler ran.
    pub(super) async fn heartbeat(&self) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        sqlx::query(
            "INSERT INTO scheduler_processes (id, started_at, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET seen_at = $3",
        )
        .bind(self.id)
        .bind(self.started_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let beat = Instant::now();
        let keep = now - chrono::Duration::days(35);
        let rows: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>, bool)> = sqlx::query_as(
            "SELECT id, started_at, seen_at, stopped FROM scheduler_processes WHERE seen_at > $1",
        )
        .bind(keep)
        .fetch_all(&self.pool)
        .await?;
        let alive_for = chrono::Duration::from_std(self.config.alive_for).unwrap_or_default();
        let live: Vec<Uuid> = rows
            .iter()
            .filter(|(_, _, seen, stopped)| !stopped && *seen + alive_for > now)
            .map(|(id, ..)| *id)
            .collect();
        let mine = (0..BUCKETS)
            .map(|b| live.iter().max_by_key(|p| score(**p, b)) == Some(&self.id))
            .collect();
        // A process ran from its start to its last heartbeat, and a heartbeat's length
        // after (it may have died just before its next).
        let margin = chrono::Duration::from_std(self.config.heartbeat * 2).unwrap_or_default();
        let lives = rows
            .iter()
            .map(|(_, started, seen, stopped)| {
                (*started, if *stopped { *seen } else { *seen + margin })
            })
            .collect();
        *self
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = View {
            mine,
            lives,
            beat: Some(beat),
        };
        if rand_percent() == 0 {
            sqlx::query("DELETE FROM scheduler_processes WHERE seen_at <= $1")
                .bind(keep)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Whether job `job_id` is this process's to run now (its heartbeat current and the
    /// job's bucket given to it).
    pub(super) fn owns(&self, job_id: &str) -> bool {
        let view = self
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        view.current(self.config.alive_for)
            && view
                .mine
                .get(usize::from(bucket(job_id)))
                .copied()
                .unwrap_or(false)
    }

    /// Whether some scheduler was alive at `t` (this one, since it started, always).
    pub(super) fn covered(&self, t: DateTime<Utc>) -> bool {
        if t >= self.started_at {
            return true;
        }
        let view = self
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        view.lives.iter().any(|(from, to)| *from <= t && t <= *to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_shared_among_processes_started_together() {
        // UUID v7s made in the same millisecond differ only in their last bytes.
        let processes: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let mut won = vec![0; processes.len()];
        for bucket in 0..BUCKETS {
            let winner = (0..processes.len())
                .max_by_key(|i| score(processes[*i], bucket))
                .unwrap();
            won[winner] += 1;
        }
        assert!(won.iter().all(|w| *w >= 10), "{won:?} of {BUCKETS}");
    }
}
