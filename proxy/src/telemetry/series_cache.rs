//! The metric series of label sets seen before, by a hash of what their labels are made from.
//!
//! Istio's labels are a dozen strings; building them and hashing them into each metric family per request or
//! connection was most of what counting cost. A hit here hands back the series' handles (counters and histograms
//! are shared handles) for the price of one hash of fields keel already holds.
use std::{collections::HashMap, sync::Mutex};

/// Bound on cached label sets (each a few hundred bytes); past it the cache starts over.
const MAX_CACHED_SERIES: usize = 4096;

pub struct SeriesCache<S> {
    series: Mutex<HashMap<u64, S>>,
}

impl<S> Default for SeriesCache<S> {
    fn default() -> Self {
        SeriesCache { series: Mutex::new(HashMap::new()) }
    }
}

impl<S: Clone> SeriesCache<S> {
    /// The series for `key`, made by `make` (which builds the labels) the first time.
    pub fn get_or_make(&self, key: u64, make: impl FnOnce() -> S) -> S {
        let mut cache = self.series.lock().expect("series cache poisoned");
        if let Some(series) = cache.get(&key) {
            return series.clone();
        }
        let series = make();
        if cache.len() >= MAX_CACHED_SERIES {
            cache.clear();
        }
        cache.insert(key, series.clone());
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_and_the_cache_stays_bounded() {
        let cache = SeriesCache::default();
        let mut made = 0;
        for _ in 0..3 {
            cache.get_or_make(7, || {
                made += 1;
                made
            });
        }
        assert_eq!(made, 1);
        for key in 0..(MAX_CACHED_SERIES as u64 * 2) {
            cache.get_or_make(key, || 0);
        }
        assert!(cache.series.lock().unwrap().len() <= MAX_CACHED_SERIES);
    }
}
