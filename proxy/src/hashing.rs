//! A hash that is the same in every keel and every release: consistent-hash load balancing and the keys of
//! metric series use it.
use std::hash::{Hash, Hasher};

/// A stable 64-bit hash (SipHash with fixed keys): the same key maps to the same endpoint in every keel.
pub fn stable_hash(value: impl Hash) -> u64 {
    #[allow(deprecated)] // SipHasher's fixed keys are the point: DefaultHasher's algorithm may change.
    let mut h = std::hash::SipHasher::new();
    value.hash(&mut h);
    h.finish()
}
