//! Human-readable units used in configuration files: byte sizes (`512MiB`) and durations
//! (`30s`). Both also accept a bare integer (bytes, or seconds).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A number of bytes, written in configuration as an integer or as `<number><unit>` with
/// units `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Splits `text` into its leading number and the unit after it; `what` names the kind of
/// value for the error (`a byte size (expected e.g. `512MiB`)`).
fn number_and_unit<'t>(text: &'t str, what: &str) -> Result<(f64, &'t str), String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number = number
        .parse()
        .map_err(|_| format!("`{text}` is not {what}"))?;
    Ok((number, unit.trim()))
}

/// Parses `512MiB`, `1.5GB`, `1024`, `64 KiB`.
pub fn parse_bytes(text: &str) -> Result<ByteSize, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text, "a byte size (expected e.g. `512MiB`)")?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => return Err(format!("unknown byte unit `{other}` in `{text}`")),
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(ByteSize(bytes.round() as u64))
}

/// Parses `250ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text, "a duration (expected e.g. `30s`)")?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1e3,
        "us" | "µs" => number / 1e6,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown duration unit `{other}` in `{text}`")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

/// Deserialises either an integer or a string through `parse`.
fn int_or_string<'de, D, T>(
    deserializer: D,
    from_int: fn(u64) -> T,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Int(n) => Ok(from_int(n)),
        Raw::Text(text) => parse(&text).map_err(de::Error::custom),
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        int_or_string(deserializer, ByteSize, parse_bytes)
    }
}

/// A [`Duration`] that deserialises from `30s`-style text or an integer number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        int_or_string(
            deserializer,
            |secs| HumanDuration(Duration::from_secs(secs)),
            |text| parse_duration(text).map(HumanDuration),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_binary_and_decimal_units() {
        assert_eq!(parse_bytes("512MiB"), Ok(ByteSize(512 << 20)));
        assert_eq!(parse_bytes("1.5 GiB"), Ok(ByteSize(3 << 29)));
        assert_eq!(parse_bytes("2GB"), Ok(ByteSize(2_000_000_000)));
        assert_eq!(parse_bytes("1024"), Ok(ByteSize(1024)));
        assert!(parse_bytes("12 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_bytes("MiB").is_err());
    }

    #[test]
    fn byte_sizes_display_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("3 fortnights").is_err());
    }
}
