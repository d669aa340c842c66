//! [`Timestamp`]: a moment as microseconds since the Unix epoch, written in JSON as an RFC 3339
//! UTC string with exactly six fractional digits (`"2026-12-01T21:14:29.123456Z"`).
//!
//! It reads back from that string (any RFC 3339 offset is accepted and converted to UTC) and
//! also from a bare integer of microseconds, which is how logs, store snapshots and requests
//! written before timestamps became strings carry them: such documents must keep reading the
//! same. Stores keep the integer in their own columns, and binary store snapshots (MessagePack,
//! a format that is not human-readable) hold the integer again.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A moment in time, microseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch itself (also what an empty state carries before its first event).
    pub const EPOCH: Timestamp = Timestamp(0);

    pub const fn from_micros(micros: i64) -> Timestamp {
        Timestamp(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The same moment as a `jiff` timestamp, when it is within years -9999..=9999.
    fn to_jiff(self) -> Option<jiff::Timestamp> {
        jiff::Timestamp::from_microsecond(self.0).ok()
    }

    /// The canonical text (`YYYY-MM-DDTHH:MM:SS.ffffffZ`) of a moment in years 1970–9999,
    /// written without a calendar library: every event, snapshot and answer writes timestamps.
    fn canonical(self) -> Option<[u8; 27]> {
        if !(0..MAX_FAST).contains(&self.0) {
            return None;
        }
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let s = secs.rem_euclid(86_400);
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, mo);
        put(8, 2, d);
        put(11, 2, s / 3_600);
        put(14, 2, s / 60 % 60);
        put(17, 2, s % 60);
        put(20, 6, micros);
        Some(out)
    }

    /// Reads exactly the canonical text (years 1970–9999) without a calendar library: every
    /// snapshot, restore and event read parses timestamps. Anything else (offsets, fewer
    /// digits, other years, a leap second) is left to the full RFC 3339 parser.
    fn from_canonical(s: &[u8]) -> Option<Timestamp> {
        if s.len() != 27
            || s[4] != b'-'
            || s[7] != b'-'
            || s[10] != b'T'
            || s[13] != b':'
            || s[16] != b':'
            || s[19] != b'.'
            || s[26] != b'Z'
        {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<i64> {
            s[from..to].iter().try_fold(0i64, |v, c| {
                c.is_ascii_digit().then(|| v * 10 + i64::from(c - b'0'))
            })
        };
        let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (h, mi, se, us) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 26)?);
        if y < 1970 || !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
            return None;
        }
        if h > 23 || mi > 59 || se > 59 {
            return None;
        }
        let secs = days_from_civil(y, mo, d) * 86_400 + h * 3_600 + mi * 60 + se;
        Some(Timestamp(secs * 1_000_000 + us))
    }

    /// Checks that an integer of microseconds is a moment RFC 3339 can write.
    fn checked(micros: i64) -> Result<Timestamp, String> {
        let t = Timestamp(micros);
        match t.to_jiff() {
            Some(_) => Ok(t),
            None => Err(format!(
                "{micros} microseconds since the epoch is out of range"
            )),
        }
    }
}

/// 10000-01-01T00:00:00Z: the canonical fast paths cover the moments before it.
const MAX_FAST: i64 = 253_402_300_800_000_000;

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `z` days after 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Moves a timestamp by a number of microseconds.
impl Add<i64> for Timestamp {
    type Output = Timestamp;
    fn add(self, micros: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(micros))
    }
}

impl AddAssign<i64> for Timestamp {
    fn add_assign(&mut self, micros: i64) {
        *self = *self + micros;
    }
}

/// The microseconds from `other` to `self` (negative when `other` is later).
impl Sub for Timestamp {
    type Output = i64;
    fn sub(self, other: Timestamp) -> i64 {
        self.0.saturating_sub(other.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = self.canonical() {
            // ASCII digits and separators only.
            return f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
        }
        match self.to_jiff() {
            Some(t) => write!(f, "{t:.6}"),
            // Only a corrupt document can hold such a value; show the number rather than lie.
            None => write!(f, "{}", self.0),
        }
    }
}

impl FromStr for Timestamp {
    type Err = String;

    fn from_str(s: &str) -> Result<Timestamp, String> {
        if let Some(t) = Timestamp::from_canonical(s.as_bytes()) {
            return Ok(t);
        }
        let t: jiff::Timestamp = s.trim().parse().map_err(|e| {
            format!("{s:?} is not an RFC 3339 time like \"2026-12-01T21:14:29.123456Z\" ({e})")
        })?;
        Ok(Timestamp(t.as_microsecond()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A binary format (store snapshots' MessagePack) carries the integer, which every
        // release reads back: 9 bytes instead of 28, and no text to write or parse.
        if !serializer.is_human_readable() {
            return serializer.serialize_i64(self.0);
        }
        if let Some(text) = self.canonical() {
            if let Ok(text) = std::str::from_utf8(&text) {
                return serializer.serialize_str(text);
            }
        }
        match self.to_jiff() {
            Some(t) => serializer.collect_str(&format_args!("{t:.6}")),
            None => serializer.serialize_i64(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        deserializer.deserialize_any(Visitor)
    }
}

struct Visitor;

impl serde::de::Visitor<'_> for Visitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 time such as \"2026-12-01T21:14:29.123456Z\"")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timestamp, E> {
        s.parse().map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
        Timestamp::checked(v).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
        let v =
            i64::try_from(v).map_err(|_| E::custom(format!("{v} microseconds is out of range")))?;
        Timestamp::checked(v).map_err(E::custom)
    }
}

#[cfg(feature = "utoipa")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "RFC 3339 UTC time with microseconds, e.g. 2026-12-01T21:14:29.123456Z",
            ))
            .into()
    }
}

#[cfg(feature = "utoipa")]
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_rfc3339_with_microseconds() {
        let t = Timestamp::from_micros(1_796_159_669_123_456);
        assert_eq!(t.to_string(), "2026-12-01T21:14:29.123456Z");
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2026-12-01T21:14:29.123456Z\""
        );
        // Whole seconds still carry six digits, so every answer has the same shape.
        assert_eq!(
            Timestamp::from_micros(1_796_159_669_000_000).to_string(),
            "2026-12-01T21:14:29.000000Z"
        );
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn reads_strings_offsets_and_integers() {
        let want = Timestamp::from_micros(1_796_159_669_123_456);
        for text in [
            "\"2026-12-01T21:14:29.123456Z\"",
            "\"2026-12-01T22:14:29.123456+01:00\"",
            "1796159669123456",
        ] {
            assert_eq!(
                serde_json::from_str::<Timestamp>(text).unwrap(),
                want,
                "{text}"
            );
        }
        assert_eq!(
            serde_json::from_str::<Timestamp>("\"2026-12-01T21:14:29Z\"").unwrap(),
            Timestamp::from_micros(1_796_159_669_000_000)
        );
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for text in [
            "\"yesterday\"",
            "\"2026-12-01 21:14\"",
            "\"2026-12-01T21:14:29\"",
            "9223372036854775807",
            "1.5",
            "null",
        ] {
            assert!(serde_json::from_str::<Timestamp>(text).is_err(), "{text}");
        }
    }

    proptest::proptest! {
        /// The canonical fast paths write and read exactly what the calendar library does.
        #[test]
        fn the_fast_paths_agree_with_jiff(micros in 0i64..MAX_FAST) {
            let t = Timestamp::from_micros(micros);
            let slow = format!("{:.6}", t.to_jiff().unwrap());
            proptest::prop_assert_eq!(t.to_string(), slow.clone());
            proptest::prop_assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{slow}\""));
            proptest::prop_assert_eq!(Timestamp::from_canonical(slow.as_bytes()), Some(t));
            proptest::prop_assert_eq!(slow.parse::<Timestamp>(), Ok(t));
        }
    }

    #[test]
    fn the_fast_reader_leaves_the_rest_to_the_full_parser() {
        // Not canonical: the full parser decides (a valid date, or a clear error).
        for text in [
            "2026-02-29T00:00:00.000000Z",
            "2026-13-01T00:00:00.000000Z",
            "2026-12-01T24:00:00.000000Z",
            "2026-12-01T21:14:60.000000Z",
            "1969-12-31T23:59:59.999999Z",
            "2026-12-01T21:14:29.12345xZ",
        ] {
            assert_eq!(Timestamp::from_canonical(text.as_bytes()), None, "{text}");
        }
        assert!("2026-02-29T00:00:00.000000Z".parse::<Timestamp>().is_err());
        assert_eq!(
            "2024-02-29T00:00:00.000000Z".parse::<Timestamp>(),
            Ok(Timestamp::from_micros(1_709_164_800_000_000))
        );
        assert_eq!(
            "1969-12-31T23:59:59.999999Z".parse::<Timestamp>(),
            Ok(Timestamp::from_micros(-1))
        );
        assert_eq!(
            Timestamp::from_micros(-1).to_string(),
            "1969-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn arithmetic_is_in_microseconds() {
        let t = Timestamp::from_micros(10);
        assert_eq!(t + 5, Timestamp::from_micros(15));
        assert_eq!(Timestamp::from_micros(15) - t, 5);
    }
}
