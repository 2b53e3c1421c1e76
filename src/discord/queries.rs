//! The searches whose buttons still work: kept for [`QUERY_LIFETIME`], and bounded in count and
//! in image bytes, oldest dropped first, so that a busy server cannot grow the bot's memory
//! without end (a dropped search's buttons answer that it expired).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How long the buttons under a reply keep working.
pub const QUERY_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Searches kept at most, whatever their age.
const MAX_QUERIES: usize = 1_000;
/// Image bytes kept at most: 128 MiB, sixteen searches with the largest photo allowed by default.
const MAX_IMAGE_BYTES: usize = 128 << 20;

/// A search the buttons under its reply can continue.
#[derive(Clone)]
pub struct StoredQuery {
    pub image: Arc<Vec<u8>>,
    pub text: Option<String>,
    pub k: usize,
    pub page: usize,
    pub categories: Vec<String>,
    /// The categories the bot's own decision searched first (what a correction corrects).
    pub decided: Vec<String>,
    pub created: Instant,
}

pub struct RecentQueries {
    queries: DashMap<u64, StoredQuery>,
    max_queries: usize,
    max_image_bytes: usize,
}

impl Default for RecentQueries {
    fn default() -> RecentQueries {
        RecentQueries::with_bounds(MAX_QUERIES, MAX_IMAGE_BYTES)
    }
}

impl RecentQueries {
    fn with_bounds(max_queries: usize, max_image_bytes: usize) -> RecentQueries {
        RecentQueries { queries: DashMap::new(), max_queries, max_image_bytes }
    }

    /// Keeps `query` under `key`, dropping expired searches, then the oldest until both bounds hold.
    pub fn insert(&self, key: u64, query: StoredQuery) {
        self.queries.retain(|_, q| q.created.elapsed() < QUERY_LIFETIME);
        self.queries.insert(key, query);
        loop {
            // A photo shared by a search and its "More" pages counts once per search: the bound
            // errs on the safe side.
            let bytes: usize = self.queries.iter().map(|q| q.image.len()).sum();
            if self.queries.len() <= self.max_queries && bytes <= self.max_image_bytes {
                return;
            }
            let Some(oldest) = self.queries.iter().min_by_key(|q| q.created).map(|q| *q.key()) else { return };
            if oldest == key && self.queries.len() == 1 {
                return; // the newest search is kept even alone over the bound
            }
            self.queries.remove(&oldest);
        }
    }

    /// The search under `key`, unless it expired or was dropped.
    pub fn get(&self, key: u64) -> Option<StoredQuery> {
        self.queries.get(&key).map(|q| q.clone()).filter(|q| q.created.elapsed() < QUERY_LIFETIME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(bytes: usize, created: Instant) -> StoredQuery {
        StoredQuery { image: Arc::new(vec![0; bytes]), text: None, k: 5, page: 0, categories: Vec::new(), decided: Vec::new(), created }
    }

    #[test]
    fn the_oldest_searches_go_first_when_count_or_bytes_run_over() {
        let now = Instant::now();
        let recent = RecentQueries::with_bounds(3, 1000);
        for key in 0..5u64 {
            recent.insert(key, query(10, now + Duration::from_millis(key)));
        }
        assert_eq!((0..5).map(|k| recent.get(k).is_some()).collect::<Vec<_>>(), [false, false, true, true, true], "count bound: the two oldest dropped");

        let recent = RecentQueries::with_bounds(10, 1000);
        for key in 0..5u64 {
            recent.insert(key, query(10, now + Duration::from_millis(key)));
        }
        recent.insert(9, query(975, now + Duration::from_millis(9)));
        assert_eq!([0, 1, 2, 3, 4, 9].map(|k| recent.get(k).is_some()), [false, false, false, true, true, true], "byte bound: 1,025 bytes over 1,000, so the oldest go until it fits");
    }

    #[test]
    fn expired_searches_are_not_answered() {
        let recent = RecentQueries::default();
        let Some(long_ago) = Instant::now().checked_sub(QUERY_LIFETIME + Duration::from_secs(1)) else { return };
        recent.insert(1, query(10, long_ago));
        assert!(recent.get(1).is_none());
    }
}
