//! Istio's durations (timeouts, delays, intervals) as its YAML writes them: a protobuf Duration string ("1.5s") or
//! the Go form Istio also accepts ("500ms", "2m", "1h30m"). They are read into [`std::time::Duration`] while
//! parsing, so a bad one is reported on its own field. A negative duration is refused there too: no Istio duration
//! field means anything below zero.
use std::{fmt, time::Duration};

use serde::{de, Deserialize, Deserializer};

/// A non-negative duration read from an Istio duration string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtoDuration(pub Duration);

impl ProtoDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for ProtoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ProtoDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"1s\", \"500ms\", \"1.5s\" or \"2m\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ProtoDuration, E> {
                parse(text).map(ProtoDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// In a CRD a duration is a string; its grammar is checked when keel parses the object.
impl schemars::JsonSchema for ProtoDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

/// Nanoseconds per unit, longest unit names first so "ms" is not read as "m" followed by garbage.
const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Fraction digits kept: nanosecond precision needs 9, the rest only guards the arithmetic against overflow.
const MAX_FRACTION_DIGITS: usize = 18;

/// Parses `[-]<number><unit>...` (Go's `time.ParseDuration` grammar, which covers protobuf's `<seconds>s`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration (a number and a unit of h, m, s, ms, us or ns, e.g. \"1.5s\")");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(invalid());
        }
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let scale = UNITS.iter().find(|(name, _)| *name == unit).map(|(_, scale)| *scale).ok_or_else(invalid)?;
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| invalid())? };
        let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
        let fraction_nanos =
            if fraction.is_empty() { 0 } else { fraction.parse::<u128>().map_err(|_| invalid())? * scale / 10u128.pow(fraction.len() as u32) };
        nanos = whole
            .checked_mul(scale)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(nanos))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        rest = next;
    }
    if negative && nanos > 0 {
        return Err(format!("{text:?} is negative; a duration must be zero or more"));
    }
    let seconds = u64::try_from(nanos / 1_000_000_000).map_err(|_| format!("{text:?} is too long a duration"))?;
    Ok(Duration::new(seconds, (nanos % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_protobuf_and_go_forms() {
        let ms = Duration::from_millis;
        let cases = [
            ("1s", ms(1_000)),
            ("500ms", ms(500)),
            ("1.5s", ms(1_500)),
            ("2m", ms(120_000)),
            ("1h30m", ms(5_400_000)),
            (".25s", ms(250)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("-0s", Duration::ZERO),
            ("1.000000001s", Duration::new(1, 1)),
            ("10us", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_non_negative_duration() {
        for text in ["", "1", "s", "1x", "1.2.3s", "1 s", "one second", "1sm", "-", "."] {
            let error = parse(text).unwrap_err();
            assert!(error.contains("is not a duration"), "{text}: {error}");
        }
        assert!(parse("-1s").unwrap_err().contains("negative"));
        assert!(parse("99999999999999999999999h").unwrap_err().contains("too long"));
    }
}
