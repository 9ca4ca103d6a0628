//! What the watches have said, kept slim: a map per kind, fed by kube-rs watcher events.
//!
//! A relist (the first list, or one after a 410 Gone or a lost connection) is buffered and swapped in whole at its
//! end (`InitDone`), so a list cut short by an API server going away never shows the agent a partial world: until
//! a list completes, the last complete one stays. That is what keeps an unreachable API server from unenrolling
//! anything.
use std::collections::BTreeMap;

use kube::runtime::watcher::Event;

#[derive(Debug)]
pub struct WatchCache<V> {
    items: BTreeMap<String, V>,
    /// The relist in progress.
    relisting: Option<BTreeMap<String, V>>,
    /// A complete list has been seen.
    synced: bool,
}

impl<V> Default for WatchCache<V> {
    fn default() -> Self {
        WatchCache { items: BTreeMap::new(), relisting: None, synced: false }
    }
}

/// What an event did to the cache's view.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The view changed (an object, or a whole list swapped in).
    Changed,
    /// Buffered into a relist that is not complete yet.
    Buffered,
}

impl<V> WatchCache<V> {
    /// Applies one watcher event; `read` turns an object into its key and value (`None`: the object is unusable and
    /// skipped; the reader logs why).
    pub fn apply<K>(&mut self, event: Event<K>, read: impl Fn(&K) -> Option<(String, V)>) -> Applied {
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                Applied::Buffered
            }
            Event::InitApply(object) => {
                if let Some((key, value)) = read(&object) {
                    self.relisting.get_or_insert_with(BTreeMap::new).insert(key, value);
                }
                Applied::Buffered
            }
            Event::InitDone => {
                self.items = self.relisting.take().unwrap_or_default();
                self.synced = true;
                Applied::Changed
            }
            Event::Apply(object) => {
                if let Some((key, value)) = read(&object) {
                    self.items.insert(key, value);
                }
                Applied::Changed
            }
            Event::Delete(object) => {
                if let Some((key, _)) = read(&object) {
                    self.items.remove(&key);
                }
                Applied::Changed
            }
        }
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.items.get(key)
    }

    pub fn items(&self) -> &BTreeMap<String, V> {
        &self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(object: &(&'static str, u32)) -> Option<(String, u32)> {
        Some((object.0.to_owned(), object.1))
    }

    #[test]
    fn a_relist_replaces_the_view_only_when_complete() {
        let mut cache = WatchCache::default();
        assert!(!cache.synced());
        for event in [Event::Init, Event::InitApply(("a", 1)), Event::InitApply(("b", 2))] {
            assert_eq!(cache.apply(event, read), Applied::Buffered);
        }
        assert!(cache.is_empty() && !cache.synced(), "nothing is shown before the list is complete");
        assert_eq!(cache.apply(Event::InitDone, read), Applied::Changed);
        assert_eq!((cache.synced(), cache.get("a"), cache.len()), (true, Some(&1), 2));

        cache.apply(Event::Apply(("c", 3)), read);
        cache.apply(Event::Apply(("a", 4)), read);
        cache.apply(Event::Delete(("b", 2)), read);
        assert_eq!(cache.items().iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(), [("a", 4), ("c", 3)]);

        // The API server goes away mid-relist: the last complete view stays.
        cache.apply(Event::Init, read);
        cache.apply(Event::InitApply(("a", 5)), read);
        assert_eq!(cache.len(), 2, "a relist cut short shows nothing of itself");
        // The next relist completes: objects it does not list are gone.
        cache.apply(Event::Init, read);
        cache.apply(Event::InitApply(("d", 6)), read);
        cache.apply(Event::InitDone, read);
        assert_eq!(cache.items().keys().collect::<Vec<_>>(), ["d"]);
    }

    #[test]
    fn unusable_objects_are_skipped() {
        let mut cache: WatchCache<u32> = WatchCache::default();
        cache.apply(Event::Init, read);
        cache.apply(Event::InitDone, read);
        cache.apply(Event::Apply(("x", 1)), |_: &(&str, u32)| None);
        assert!(cache.is_empty());
    }
}
