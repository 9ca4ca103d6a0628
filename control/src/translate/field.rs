//! Field-naming errors and warnings, and the value rules the traffic-management checks share. Paths are written
//! as the YAML nests them (`spec.http[0].route[1].weight`), so a user can find the field.
use std::fmt::Display;

/// An error on the field at `path`.
pub fn error(path: &str, message: impl Display) -> String {
    format!("field {path}: {message}")
}

/// A warning on the field at `path` (translate prefixes the object).
pub fn warning(path: &str, message: impl Display) -> String {
    format!("{path}: {message}")
}

pub fn port(path: &str, number: u32) -> Result<(), String> {
    if (1..=65535).contains(&number) { Ok(()) } else { Err(error(path, format!("{number} is not a port (1-65535)"))) }
}

/// Istio's signed limits and counts, where 0 means "the default".
pub fn non_negative(path: &str, value: i32) -> Result<(), String> {
    if value >= 0 { Ok(()) } else { Err(error(path, format!("{value} must not be negative"))) }
}

/// A share in percent, fractions allowed.
pub fn percent(path: &str, value: f64) -> Result<(), String> {
    if (0.0..=100.0).contains(&value) { Ok(()) } else { Err(error(path, format!("{value} is not a percentage (0-100)"))) }
}

/// An integer percentage (Istio's int32 `maxEjectionPercent`, route weights).
pub fn whole_percent(path: &str, value: i32) -> Result<(), String> {
    if (0..=100).contains(&value) { Ok(()) } else { Err(error(path, format!("{value} must be 0-100"))) }
}

pub fn not_empty(path: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() { Err(error(path, "must not be empty")) } else { Ok(()) }
}
