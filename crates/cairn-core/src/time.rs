//! [`Timestamp`]: a moment as microseconds since the Unix epoch, written in JSON as an RFC 3339
//! UTC string with exactly six fractional digits (`"2026-12-01T21:14:29.123456Z"`).
//!
//! It reads back from that string (any RFC 3339 offset is accepted and converted to UTC) and
//! also from a bare integer of microseconds, which is how logs, store snapshots and requests
//! written before timestamps became strings carry them: such documents must keep reading the
//! same. Stores keep the integer in their own columns.

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
        let t: jiff::Timestamp = s.trim().parse().map_err(|e| {
            format!("{s:?} is not an RFC 3339 time like \"2026-12-01T21:14:29.123456Z\" ({e})")
        })?;
        Ok(Timestamp(t.as_microsecond()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
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

    #[test]
    fn arithmetic_is_in_microseconds() {
        let t = Timestamp::from_micros(10);
        assert_eq!(t + 5, Timestamp::from_micros(15));
        assert_eq!(Timestamp::from_micros(15) - t, 5);
    }
}
