//! Per-invocation limits and the human-readable sizes and durations used to
//! write them on the command line and in config files.
//!
//! [`Limits`] is plain data: it travels with every invocation and is applied
//! to a fresh store by the (private) `store` module. Parsing lives here so that the CLI,
//! the config file and embedders all accept exactly the same spellings.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Default cap on an invocation's total memory: 256 MiB.
pub const DEFAULT_MAX_MEMORY: u64 = 256 * MIB;

/// The largest memory cap accepted: 4 GiB, all a wasm32 guest can address.
pub const MAX_MEMORY_CEILING: u64 = 4 * GIB;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Most wasm instances (a component counts each core instance), tables and
/// memories one invocation may create; also the instance pool's
/// per-component limits.
pub const MAX_INSTANCES: usize = 64;
/// See [`MAX_INSTANCES`].
pub const MAX_TABLES: usize = 64;
/// See [`MAX_INSTANCES`].
pub const MAX_MEMORIES: usize = 16;

/// Most open descriptors one invocation may hold through its preopened
/// directories: a file or directory is opened only while the invocation
/// holds fewer than this many descriptors and streams in all (each open
/// file is an operating-system descriptor, and a stream keeps its file's
/// descriptor open after the descriptor is dropped, so this bounds the
/// descriptors it holds). Past it the open fails (`insufficient-memory`
/// for WASI 0.2, `EMFILE` for preview 1); the guest can close some and
/// try again. Preopens themselves count.
pub const MAX_OPEN_FILES: usize = 64;

/// The limits one invocation runs under.
///
/// Every field has a safe default: no fuel budget, a 256 MiB memory cap and
/// no deadline. A guest that exceeds a limit is killed and the invocation's
/// [`crate::Outcome`] says which limit it hit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Limits {
    /// Fuel budget: roughly one unit per wasm instruction executed. `None`
    /// (the default) means unlimited; fuel is still counted and reported.
    pub fuel: Option<u64>,
    /// Cap on the invocation's *total* memory, in bytes: linear memory and
    /// tables (each element [`crate::TABLE_ELEMENT_BYTES`]), summed over
    /// every memory and table of every instance (a component may have
    /// several). A grow
    /// past it kills the invocation, like the OOM killer. Default 256 MiB.
    #[serde(deserialize_with = "de_memory_cap")]
    pub max_memory: u64,
    /// Wall-clock deadline for the whole invocation, including time the guest
    /// spends blocked in host calls such as sleeping. `None` (the default)
    /// means no deadline.
    #[serde(deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    /// CPU-time limit, like `RLIMIT_CPU`: CPU the invocation spends in wasm
    /// and in synchronous host calls, on whichever thread runs it; time
    /// blocked (sleeping, waiting for I/O) does not count. Past it the
    /// invocation is killed as `cpu_exceeded`. `None` (the default) means
    /// no limit; CPU time is still measured and reported.
    #[serde(deserialize_with = "de_opt_cpu_limit")]
    pub max_cpu: Option<Duration>,
    /// Cap on the bytes of stdout and of stderr kept for an embedder that
    /// captures output; output past it is discarded (the guest is not told,
    /// and its other limits stop a flood that never ends) and the capture is
    /// marked truncated. Inherited stdio (the CLI) is not capped.
    /// Default 1 MiB.
    #[serde(deserialize_with = "de_size")]
    pub max_output: u64,
}

/// Default cap on captured stdout/stderr: 1 MiB each.
pub const DEFAULT_MAX_OUTPUT: u64 = MIB;

/// Limits that cannot be honoured, and which one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidLimits {
    /// `max_memory` is past [`MAX_MEMORY_CEILING`].
    #[error(
        "max_memory of {given} bytes is past the ceiling of {MAX_MEMORY_CEILING} bytes (4 GiB, \
         all a wasm32 guest can address)"
    )]
    MemoryOverCeiling {
        /// The `max_memory` asked for.
        given: u64,
    },
    /// `timeout` is longer than [`MAX_DURATION`].
    #[error("timeout is longer than 366 days")]
    TimeoutTooLong,
    /// `max_cpu` is longer than [`MAX_DURATION`].
    #[error("max_cpu is longer than 366 days")]
    CpuTooLong,
    /// `max_cpu` is zero.
    #[error("max_cpu must be above zero")]
    CpuZero,
}

impl Limits {
    /// Checks what these limits can be: `max_memory` at most
    /// [`MAX_MEMORY_CEILING`], durations at most [`MAX_DURATION`] and a
    /// CPU-time limit above zero. Every invocation checks its limits this
    /// way (an error, never a panic); the CLI and the server's config check
    /// the same rules when they parse.
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        if self.max_memory > MAX_MEMORY_CEILING {
            return Err(InvalidLimits::MemoryOverCeiling {
                given: self.max_memory,
            });
        }
        if self.timeout.is_some_and(|t| t > MAX_DURATION) {
            return Err(InvalidLimits::TimeoutTooLong);
        }
        match self.max_cpu {
            Some(cpu) if cpu > MAX_DURATION => Err(InvalidLimits::CpuTooLong),
            Some(cpu) if cpu.is_zero() => Err(InvalidLimits::CpuZero),
            _ => Ok(()),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: None,
            max_memory: DEFAULT_MAX_MEMORY,
            timeout: None,
            max_cpu: None,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }
}

/// A value that could not be parsed as a size or duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: {reason} (for example {example})")]
pub struct ParseError {
    /// What was being parsed: "size" or "duration".
    pub what: &'static str,
    /// The text that was rejected.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
    /// A valid spelling to show the user.
    pub example: &'static str,
}

impl ParseError {
    fn new(what: &'static str, value: &str, reason: &'static str, example: &'static str) -> Self {
        ParseError {
            what,
            value: value.to_string(),
            reason,
            example,
        }
    }
}

/// `FromStr` for newtypes, each through its parser.
macro_rules! from_str_by {
    ($($ty:ident => $parse:ident),* $(,)?) => {$(
        impl FromStr for $ty {
            type Err = ParseError;

            fn from_str(s: &str) -> Result<Self, ParseError> {
                $parse(s).map($ty)
            }
        }
    )*};
}

from_str_by! {
    ByteSize => parse_size,
    HumanDuration => parse_duration,
    MemoryCap => parse_memory_cap,
    CpuLimit => parse_cpu_limit,
}

/// Deserializes a string through `parse`.
fn de_text<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl Fn(&str) -> Result<T, ParseError>,
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// A byte size written as `65536`, `512KiB`, `64MiB`, `1GiB` (also `K`, `KB`,
/// `M`, `MB`, `G`, `GB`, all binary multiples; case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
            if n >= size && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}")
    }
}

/// Parses a byte size: a whole number with an optional binary unit.
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let err = |reason| ParseError::new("size", s, reason, "`64MiB`, `1GiB`, `512KiB` or `65536`");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(err(
            "expected a whole number of bytes, optionally with a unit",
        ));
    }
    let n: u64 = digits.parse().map_err(|_| err("number too large"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        _ => return Err(err("unknown unit; use B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| err("size too large"))
}

/// A duration written as `250ms`, `2s`, `1.5s`, `1m`, `1h` (also `us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// The longest duration accepted anywhere (deadlines, timeouts): 366 days.
/// Longer values are a usage error rather than a deadline too far away to
/// represent.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses a duration: a number followed by a unit (`us`, `ms`, `s`, `m`, `h`),
/// at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let err = |reason| ParseError::new("duration", s, reason, "`250ms`, `2s` or `1m`");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(err("expected a number followed by a unit"));
    }
    let value: f64 = number.parse().map_err(|_| err("not a number"))?;
    let secs_per_unit = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => return Err(err("missing unit")),
        _ => return Err(err("unknown unit; use us, ms, s, m or h")),
    };
    let d = Duration::try_from_secs_f64(value * secs_per_unit)
        .map_err(|_| err("duration out of range"))?;
    if d > MAX_DURATION {
        return Err(err("duration too long (at most 366 days)"));
    }
    Ok(d)
}

/// Parses a memory cap: a size (as [`parse_size`]) of at most
/// [`MAX_MEMORY_CEILING`].
pub fn parse_memory_cap(s: &str) -> Result<u64, ParseError> {
    let n = parse_size(s)?;
    check_memory_cap(s, n)
}

fn check_memory_cap(s: &str, n: u64) -> Result<u64, ParseError> {
    if n > MAX_MEMORY_CEILING {
        let example = "`64MiB`, `1GiB` or `4GiB`";
        return Err(ParseError::new(
            "memory cap",
            s,
            "more than the 4GiB ceiling",
            example,
        ));
    }
    Ok(n)
}

/// A memory cap written as a [`ByteSize`], at most [`MAX_MEMORY_CEILING`]
/// (what `--max-memory` and `max-memory` accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemoryCap(pub u64);

impl fmt::Display for MemoryCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ByteSize(self.0).fmt(f)
    }
}

impl<'de> Deserialize<'de> for MemoryCap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_memory_cap(d).map(MemoryCap)
    }
}

fn de_memory_cap<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = de_size(d)?;
    check_memory_cap(&ByteSize(n).to_string(), n).map_err(serde::de::Error::custom)
}

/// Parses a CPU-time limit: a duration (as [`parse_duration`]) of more than
/// zero.
pub fn parse_cpu_limit(s: &str) -> Result<Duration, ParseError> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        let example = "`50ms`, `2s` or `1m`";
        return Err(ParseError::new(
            "CPU-time limit",
            s,
            "it must be more than zero",
            example,
        ));
    }
    Ok(d)
}

/// A CPU-time limit written as a [`HumanDuration`] of more than zero (what
/// `--max-cpu` and `max-cpu` accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CpuLimit(pub Duration);

impl<'de> Deserialize<'de> for CpuLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_text(d, parse_cpu_limit).map(CpuLimit)
    }
}

fn de_opt_cpu_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    CpuLimit::deserialize(d).map(|c| Some(c.0))
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    SizeOrNumber::deserialize(d)?.into_bytes()
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_text(d, parse_duration).map(Some)
}

/// Config files may write a size as a number of bytes or as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeOrNumber {
    Number(u64),
    Text(String),
}

impl SizeOrNumber {
    fn into_bytes<E: serde::de::Error>(self) -> Result<u64, E> {
        match self {
            SizeOrNumber::Number(n) => Ok(n),
            SizeOrNumber::Text(s) => parse_size(&s).map_err(E::custom),
        }
    }
}

/// Deserializes a [`ByteSize`] from a number of bytes or a string like `"64MiB"`.
impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SizeOrNumber::deserialize(d)?.into_bytes().map(ByteSize)
    }
}

/// Deserializes a [`HumanDuration`] from a string like `"250ms"`.
impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_text(d, parse_duration).map(HumanDuration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size(" 2 G "), Ok(2 << 30));
    }

    #[test]
    fn bad_sizes_name_the_value_and_show_an_example() {
        for bad in ["", "MiB", "12XB", "-1", "1.5GiB", "99999999999999999999"] {
            let e = parse_size(bad).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
            assert!(msg.contains("64MiB"), "{msg}");
        }
        assert!(parse_size("18446744073709551615GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
    }

    #[test]
    fn bad_durations_name_the_value_and_show_an_example() {
        for bad in [
            "",
            "5",
            "ms",
            "2 fortnights",
            "1e999s",
            "-1s",
            "1000000000000000h",
            "367d",
            "8785h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
            assert!(msg.contains("250ms"), "{msg}");
        }
    }

    #[test]
    fn cpu_limits_are_positive_durations() {
        assert_eq!(parse_cpu_limit("50ms"), Ok(Duration::from_millis(50)));
        for bad in ["0", "0ms", "lots", "400d", "-1s"] {
            let e = parse_cpu_limit(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
        let l: Limits = toml::from_str("max-cpu = \"20ms\"").expect("parses");
        assert_eq!(l.max_cpu, Some(Duration::from_millis(20)));
        assert!(toml::from_str::<Limits>("max-cpu = \"0s\"").is_err());
    }

    #[test]
    fn memory_caps_stop_at_the_ceiling() {
        assert_eq!(parse_memory_cap("4GiB"), Ok(MAX_MEMORY_CEILING));
        let e = parse_memory_cap("5GiB").unwrap_err();
        assert!(e.to_string().contains("`5GiB`"), "{e}");
        assert!(toml::from_str::<Limits>("max-memory = \"8GiB\"").is_err());
        assert!(toml::from_str::<Limits>("max-memory = 18446744073709551615").is_err());
    }

    #[test]
    fn byte_size_display_round_trips() {
        for s in ["64MiB", "1GiB", "512KiB", "1000"] {
            assert_eq!(s.parse::<ByteSize>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn limits_from_toml_accepts_strings_and_numbers() {
        let l: Limits =
            toml::from_str("fuel = 10\nmax-memory = \"32MiB\"\ntimeout = \"2s\"").expect("parses");
        assert_eq!(l.fuel, Some(10));
        assert_eq!(l.max_memory, 32 << 20);
        assert_eq!(l.timeout, Some(Duration::from_secs(2)));
        let l: Limits = toml::from_str("max-memory = 65536").expect("parses");
        assert_eq!(l.max_memory, 65536);
        let e = toml::from_str::<Limits>("max-memory = \"lots\"").unwrap_err();
        assert!(e.to_string().contains("`lots`"), "{e}");
        let e = toml::from_str::<Limits>("fuel = 1\nmemory = 2").unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
    }
}
