//! Go-style duration strings (`10s`, `0.5s`, `100ms`, `1h30m`) as Istio parses them.

use std::{fmt, time::Duration};

use serde::{de, Deserialize, Deserializer};

/// A duration written the way Istio accepts it (Go's `time.ParseDuration` syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// Parses `s` as a sequence of decimal numbers each followed by a unit
    /// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), like Go. Negative values are refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        let text = s.trim();
        if text == "0" {
            return Ok(Self(Duration::ZERO));
        }
        if text.is_empty() {
            return Err("empty duration".into());
        }
        let mut rest = text;
        let mut total = 0f64;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("duration {s:?} is missing a unit (e.g. \"5s\")"))?;
            let (num, tail) = rest.split_at(num_len);
            let value: f64 = num.parse().map_err(|_| format!("duration {s:?} has an invalid number {num:?}"))?;
            let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
            let (unit, next) = tail.split_at(unit_len);
            let secs_per_unit = match unit {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(format!("duration {s:?} has an unknown unit {unit:?} (use ns, us, ms, s, m or h)")),
            };
            total += value * secs_per_unit;
            rest = next;
        }
        Duration::try_from_secs_f64(total).map(Self).map_err(|_| format!("duration {s:?} is out of range"))
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"5s\" or \"100ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                GoDuration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let ms = |n| GoDuration(Duration::from_millis(n));
        assert_eq!(GoDuration::parse("10s"), Ok(ms(10_000)));
        assert_eq!(GoDuration::parse("0.5s"), Ok(ms(500)));
        assert_eq!(GoDuration::parse("100ms"), Ok(ms(100)));
        assert_eq!(GoDuration::parse("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(GoDuration::parse("0s"), Ok(ms(0)));
        assert!(GoDuration::parse("10").is_err());
        assert!(GoDuration::parse("5 parsecs").is_err());
        assert!(GoDuration::parse("-1s").is_err());
    }
}
