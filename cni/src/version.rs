//! The CNI spec versions keel-cni speaks. It never rewrites a result (it passes `prevResult` through), so it can
//! chain after a primary plugin of any version whose results name addresses the same way (0.3.0 onwards) — flannel
//! and Calico configurations still say 0.3.1. CHECK exists from 0.4.0, STATUS and GC from 1.1.0.
use crate::error::CniError;

pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// `version` as (major, minor, patch), if it is one of [`SUPPORTED`].
pub fn check(version: &str) -> Result<(u32, u32, u32), CniError> {
    if !SUPPORTED.contains(&version) {
        return Err(CniError::IncompatibleVersion { requested: version.to_owned(), supported: SUPPORTED.join(", ") });
    }
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
}

/// Fails unless `version` is at least `minimum` (both supported versions).
pub fn require(command: &'static str, version: &str, minimum: &'static str) -> Result<(), CniError> {
    if check(version)? < check(minimum)? {
        return Err(CniError::CommandNeedsNewerVersion { command, minimum, requested: version.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked_and_ordered() {
        assert_eq!(check("1.1.0").unwrap(), (1, 1, 0));
        assert!(matches!(check("2.0.0"), Err(CniError::IncompatibleVersion { .. })));
        assert!(matches!(check("0.2.0"), Err(CniError::IncompatibleVersion { .. })));
        assert!(require("CHECK", "0.4.0", "0.4.0").is_ok());
        assert!(require("CHECK", "1.0.0", "0.4.0").is_ok());
        assert!(matches!(require("CHECK", "0.3.1", "0.4.0"), Err(CniError::CommandNeedsNewerVersion { command: "CHECK", .. })));
    }
}
