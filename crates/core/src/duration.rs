//! Durations as written in configuration files: `500ms`, `30s`, `15m`, `2h`, `30d`.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A [`Duration`] that (de)serializes as `<integer><unit>` with unit one of
/// `ms`, `s`, `m`, `h`, `d`. Anything else — fractions, spaces, signs, a bare
/// number — is rejected so a typo never silently becomes "seconds".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigDuration(pub Duration);

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: expected an integer followed by ms, s, m, h or d (e.g. 15m)")]
pub struct DurationError {
    input: String,
}

impl ConfigDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for ConfigDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError { input: s.to_owned() };
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (digits, unit) = s.split_at(split);
        if digits.is_empty() {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        let millis = n.checked_mul(millis_per_unit).ok_or_else(err)?;
        Ok(Self(Duration::from_millis(millis)))
    }
}

impl fmt::Display for ConfigDuration {
    /// Prints the largest unit that represents the value exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms != 0 && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("15m", 900_000),
            ("2h", 7_200_000),
            ("30d", 2_592_000_000),
            ("0s", 0),
        ] {
            let d: ConfigDuration = text.parse().unwrap();
            assert_eq!(d.0, Duration::from_millis(ms), "parsing {text}");
        }
    }

    #[test]
    fn rejects_ambiguous_or_malformed_input() {
        for text in ["", "15", "m", "1.5h", "-1s", " 1s", "1s ", "1 s", "1w", "1S", "99999999999999999999d"] {
            assert!(text.parse::<ConfigDuration>().is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        for (text, shown) in
            [("90s", "90s"), ("120s", "2m"), ("1500ms", "1500ms"), ("24h", "1d"), ("0s", "0ms")]
        {
            assert_eq!(text.parse::<ConfigDuration>().unwrap().to_string(), shown);
        }
    }
}
