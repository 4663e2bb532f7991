//! A small bounded TTL cache for review results (TokenReview, SubjectAccessReview).
//!
//! Overflow policy: when full, expired entries are swept (at most once a second); if it is
//! still full the new result is simply not cached (the next identical request asks the API
//! server again) and the caller counts it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shardmetrics_plumbing::clock::SharedClock;

/// Minimum spacing of full sweeps, in milliseconds, so a cache full of live entries does not
/// cost O(capacity) per insert.
const SWEEP_SPACING_MS: i64 = 1_000;

/// Bounded map from a request key to a result that expires after its TTL (wall clock).
pub(crate) struct TtlCache<V> {
    /// Entries with their expiry time in Unix milliseconds.
    entries: Mutex<Entries<V>>,
    /// Maximum number of entries.
    capacity: usize,
    /// Wall clock deciding expiry.
    clock: SharedClock,
}

/// The guarded state of a [`TtlCache`].
struct Entries<V> {
    /// Key -> (expires at, Unix ms; value).
    map: HashMap<String, (i64, V)>,
    /// When the last full sweep ran, Unix ms.
    last_sweep_ms: i64,
}

impl<V: Clone> TtlCache<V> {
    /// An empty cache of at most `capacity` entries.
    pub(crate) fn new(capacity: usize, clock: SharedClock) -> Self {
        Self {
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                last_sweep_ms: i64::MIN,
            }),
            capacity,
            clock,
        }
    }

    /// The live value for `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let now = self.clock.now_ms();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.map.get(key) {
            Some((expires, value)) if *expires > now => Some(value.clone()),
            Some(_) => {
                entries.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches `value` for `ttl`; a zero TTL caches nothing. Returns false when the cache was full
    /// (the value was not cached).
    pub(crate) fn insert(&self, key: String, value: V, ttl: Duration) -> bool {
        if ttl.is_zero() || self.capacity == 0 {
            return true;
        }
        let now = self.clock.now_ms();
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.map.len() >= self.capacity && !entries.map.contains_key(&key) {
            if now.saturating_sub(entries.last_sweep_ms) >= SWEEP_SPACING_MS {
                entries.map.retain(|_, (e, _)| *e > now);
                entries.last_sweep_ms = now;
            }
            if entries.map.len() >= self.capacity {
                return false;
            }
        }
        entries.map.insert(key, (expires, value));
        true
    }

    /// Forgets `key`.
    pub(crate) fn remove(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .remove(key);
    }

    /// Number of entries, live or not yet swept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }
}

#[cfg(test)]
mod tests {
    use shardmetrics_plumbing::clock::ManualClock;

    use super::*;

    #[test]
    fn a_value_lives_exactly_its_ttl() {
        let clock = ManualClock::new(1_000_000);
        let cache = TtlCache::new(10, clock.clone());
        assert!(cache.insert("k".into(), 1, Duration::from_secs(10)));
        clock.advance_ms(9_999);
        assert_eq!(cache.get("k"), Some(1));
        clock.advance_ms(1);
        assert_eq!(cache.get("k"), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_full_cache_sweeps_expired_entries_and_otherwise_refuses() {
        let clock = ManualClock::new(1_000_000);
        let cache = TtlCache::new(2, clock.clone());
        assert!(cache.insert("a".into(), 1, Duration::from_secs(1)));
        assert!(cache.insert("b".into(), 2, Duration::from_secs(60)));
        assert!(
            !cache.insert("c".into(), 3, Duration::from_secs(60)),
            "full of live entries"
        );
        assert!(
            cache.insert("b".into(), 4, Duration::from_secs(60)),
            "replacing a key needs no room"
        );
        clock.advance_ms(2_000);
        assert!(
            cache.insert("c".into(), 3, Duration::from_secs(60)),
            "a expired and was swept"
        );
        assert_eq!((cache.get("b"), cache.get("c")), (Some(4), Some(3)));
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let cache = TtlCache::new(2, ManualClock::new(0));
        assert!(cache.insert("k".into(), 1, Duration::ZERO));
        assert_eq!(cache.get("k"), None);
    }
}
