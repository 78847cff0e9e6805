//! `timestamp`: the device's own time into `@timestamp`,
//! `{field: ts, formats: [rfc3339, epoch_s, epoch_ms, "%Y-%m-%d %H:%M:%S"], target: "@timestamp",
//!   max_past_s: 604800, max_future_s: 300, on_skew: receive_time}`.
//!
//! Formats are tried in order, and the first that gives a time inside the window wins (so
//! `[epoch_ms, epoch_s]` reads both kinds of device); strftime patterns without a zone are read
//! as UTC. The result is
//! RFC 3339 in UTC, like the receive time. A device time to the millisecond or coarser gets its
//! digits below the millisecond from the receive time, so that no two readings of a device
//! share an `@timestamp` (a time-series stream would merge them; see [`distinct`]). A missing or
//! unparseable value does not reject the reading: the target gets the receive time and
//! `mqtt2es.timestamp_fallback` says why (`missing`, `unparseable`, `too_old`, `too_new`).
//! A reading with a bad clock is still a reading; the marker makes such devices easy to find.
//! `on_skew: reject` turns a timestamp outside the window into a `timestamp_skew` rejection
//! instead. "Now" is the message's receive time, never the clock: the stage stays pure.

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::draft::{Draft, options, path, put};
use crate::pipeline::error::{ConfigError, StageError, show};
use crate::pipeline::path::FieldPath;
use crate::reading;
use crate::record::Message;

/// Where the reason for using the receive time is recorded.
const FALLBACK_FIELD: &str = "mqtt2es.timestamp_fallback";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    field: FieldPath,
    formats: Vec<Format>,
    target: FieldPath,
    fallback: FieldPath,
    max_past: Option<(u64, TimeDelta)>,
    max_future: Option<(u64, TimeDelta)>,
    reject_skew: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Format {
    Rfc3339,
    EpochS,
    EpochMs,
    Strftime(String),
}

fn default_formats() -> Vec<String> {
    vec!["rfc3339".to_owned()]
}

fn default_target() -> String {
    "@timestamp".to_owned()
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "timestamp options: {field, formats, target, max_past_s, max_future_s, on_skew}"
)]
struct Options {
    field: String,
    #[serde(default = "default_formats")]
    formats: Vec<String>,
    #[serde(default = "default_target")]
    target: String,
    max_past_s: Option<u64>,
    max_future_s: Option<u64>,
    on_skew: Option<String>,
}

impl Timestamp {
    pub fn parse(config: Value) -> Result<Timestamp, ConfigError> {
        let options: Options = options(config)?;
        if options.formats.is_empty() {
            return Err(ConfigError::invalid("formats", "needs at least one format"));
        }
        let formats = options
            .formats
            .iter()
            .map(|f| format(f))
            .collect::<Result<_, _>>()?;
        let reject_skew = match options.on_skew.as_deref() {
            None | Some("receive_time") => false,
            Some("reject") => true,
            Some(other) => {
                return Err(ConfigError::unknown(
                    "on_skew",
                    other,
                    "receive_time, reject",
                ));
            }
        };
        Ok(Timestamp {
            field: path("field", &options.field)?,
            formats,
            target: path("target", &options.target)?,
            fallback: path("target", FALLBACK_FIELD)?,
            max_past: window("max_past_s", options.max_past_s)?,
            max_future: window("max_future_s", options.max_future_s)?,
            reject_skew,
        })
    }

    /// Whether this stage writes `path` and reads nothing under it (neither its field nor,
    /// writing the reason for a fallback, its fallback path).
    pub fn only_writes(&self, path: &str) -> bool {
        let under = |other: &FieldPath| other.as_str().starts_with(path);
        self.target.as_str() == path && !under(&self.field) && !under(&self.fallback)
    }

    pub fn apply(&self, draft: &mut Draft, message: &Message) -> Result<(), StageError> {
        let now = message.received_at;
        let outcome = match self.field.get(&draft.source) {
            None | Some(Value::Null) => Err("missing"),
            Some(value) => {
                // The first format that gives a time inside the window wins, so that a number
                // of epoch seconds is not taken for milliseconds of 1970 because `epoch_ms` came
                // first; if none does, the first that parsed says why not.
                let mut parsed = self.formats.iter().filter_map(|f| f.read(value));
                let first = parsed.next();
                match first
                    .into_iter()
                    .chain(parsed)
                    .find(|&time| self.skew(time, now).is_none())
                {
                    Some(time) => Ok(time),
                    None => match first {
                        None => Err("unparseable"),
                        Some(time) => self.check_window(time, now, value)?,
                    },
                }
            }
        };
        let time = match outcome {
            Ok(time) => distinct(time, now),
            Err(why) => {
                put(draft, &self.fallback, Value::from(why))?;
                now
            }
        };
        put(draft, &self.target, Value::String(reading::rfc3339(time)))
    }

    /// Why `time` is outside the accepted window around `now`, if it is.
    fn skew(&self, time: DateTime<Utc>, now: DateTime<Utc>) -> Option<(&'static str, String)> {
        match (self.max_past, self.max_future) {
            (Some((s, max)), _) if now - time > max => {
                Some(("too_old", format!("more than {s} s before")))
            }
            (_, Some((s, max))) if time - now > max => {
                Some(("too_new", format!("more than {s} s after")))
            }
            _ => None,
        }
    }

    /// `Ok(Err(why))` asks for the receive time; `Err` rejects.
    fn check_window(
        &self,
        time: DateTime<Utc>,
        now: DateTime<Utc>,
        value: &Value,
    ) -> Result<Result<DateTime<Utc>, &'static str>, StageError> {
        match self.skew(time, now) {
            None => Ok(Ok(time)),
            Some((why, _)) if !self.reject_skew => Ok(Err(why)),
            Some((_, detail)) => Err(StageError::TimestampSkew {
                field: self.field.to_string(),
                value: show(value),
                why: detail,
                received_at: now.to_rfc3339_opts(SecondsFormat::Millis, true),
            }),
        }
    }
}

/// A device time given to the millisecond (or coarser) takes its digits below the millisecond
/// from the receive time, which no other reading has. Two readings with the same clock reading
/// (a clock of one-second resolution, two readings within a millisecond) thus stay two
/// documents on a time-series stream, which knows a reading by its series and `@timestamp`;
/// and a redelivery, which keeps its receive time, gets the same `@timestamp` again. A device
/// time with digits of its own below the millisecond is kept as it is.
fn distinct(device: DateTime<Utc>, received: DateTime<Utc>) -> DateTime<Utc> {
    const MS: u32 = 1_000_000;
    if !device.timestamp_subsec_nanos().is_multiple_of(MS) {
        return device;
    }
    device + TimeDelta::nanoseconds(i64::from(received.timestamp_subsec_nanos() % MS))
}

fn format(name: &str) -> Result<Format, ConfigError> {
    match name {
        "rfc3339" => Ok(Format::Rfc3339),
        "epoch_s" => Ok(Format::EpochS),
        "epoch_ms" => Ok(Format::EpochMs),
        pattern if pattern.contains('%') => {
            if StrftimeItems::new(pattern).any(|item| matches!(item, Item::Error)) {
                return Err(ConfigError::invalid(
                    "formats",
                    format!("\"{pattern}\" is not a valid strftime pattern"),
                ));
            }
            Ok(Format::Strftime(pattern.to_owned()))
        }
        other => Err(ConfigError::unknown(
            "format",
            other,
            "rfc3339, epoch_s, epoch_ms or a strftime pattern such as \"%Y-%m-%d %H:%M:%S\"",
        )),
    }
}

fn window(key: &str, seconds: Option<u64>) -> Result<Option<(u64, TimeDelta)>, ConfigError> {
    seconds
        .map(|s| {
            i64::try_from(s)
                .ok()
                .and_then(TimeDelta::try_seconds)
                .map(|delta| (s, delta))
                .ok_or_else(|| ConfigError::invalid(key, format!("{s} is too large")))
        })
        .transpose()
}

impl Format {
    fn read(&self, value: &Value) -> Option<DateTime<Utc>> {
        match self {
            Format::Rfc3339 => DateTime::parse_from_rfc3339(value.as_str()?)
                .ok()
                .map(|t| t.to_utc()),
            Format::EpochS => epoch(value, 1_000_000),
            Format::EpochMs => epoch(value, 1_000),
            Format::Strftime(pattern) => {
                let text = value.as_str()?;
                DateTime::parse_from_str(text, pattern)
                    .map(|t| t.to_utc())
                    .or_else(|_| NaiveDateTime::parse_from_str(text, pattern).map(|t| t.and_utc()))
                    .or_else(|_| {
                        NaiveDate::parse_from_str(text, pattern)
                            .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
                    })
                    .ok()
            }
        }
    }
}

/// A number (or numeric string) of epoch units, `micros_per_unit` microseconds each.
fn epoch(value: &Value, micros_per_unit: i64) -> Option<DateTime<Utc>> {
    let (whole, float) = match value {
        Value::Number(n) => (n.as_i64(), n.as_f64()),
        Value::String(s) => (s.trim().parse().ok(), s.trim().parse().ok()),
        _ => return None,
    };
    let micros = match whole {
        Some(units) => units.checked_mul(micros_per_unit)?,
        None => {
            let micros = float? * micros_per_unit as f64;
            if !micros.is_finite() || micros.abs() >= 9.2e18 {
                return None;
            }
            micros.round() as i64
        }
    };
    DateTime::from_timestamp_micros(micros)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::test_support::{config_error, run, stage};
    use crate::pipeline::error::StageError;

    fn stamp(formats: Value, ts: Value) -> Result<Value, StageError> {
        let s = stage("timestamp", json!({"field": "ts", "formats": formats}));
        run(&s, json!({ "ts": ts }))
    }

    fn at(doc: &Result<Value, StageError>) -> Value {
        doc.as_ref().expect("a document")["@timestamp"].clone()
    }

    #[test]
    fn a_device_time_to_the_millisecond_takes_the_sub_millisecond_digits_of_the_receive_time() {
        let received: chrono::DateTime<chrono::Utc> =
            "2026-11-22T10:00:05.250123456Z".parse().expect("a time");
        let whole_second = "2026-11-22T10:00:00Z".parse().expect("a time");
        assert_eq!(
            super::distinct(whole_second, received).to_rfc3339(),
            "2026-11-22T10:00:00.000123456+00:00"
        );
        // Two readings with one clock reading, received apart, stay apart.
        let later = "2026-11-22T10:00:05.350987654Z".parse().expect("a time");
        assert_ne!(
            super::distinct(whole_second, received),
            super::distinct(whole_second, later)
        );
        // A device that gives digits below the millisecond keeps them.
        let fine = "2026-11-22T10:00:00.000000700Z".parse().expect("a time");
        assert_eq!(super::distinct(fine, received), fine);
    }

    #[test]
    fn epoch_seconds_are_not_taken_for_milliseconds_of_1970_when_epoch_ms_comes_first() {
        let s = stage(
            "timestamp",
            json!({"field": "ts", "formats": ["epoch_ms", "epoch_s"], "max_past_s": 604800}),
        );
        // The test message is received at 2026-11-22T10:00:05.250Z.
        let doc = run(&s, json!({ "ts": 1795341600 })).expect("a document");
        assert_eq!(doc["@timestamp"], json!("2026-11-22T10:00:00.000Z"));
        let doc = run(&s, json!({ "ts": 1795341600123_i64 })).expect("a document");
        assert_eq!(doc["@timestamp"], json!("2026-11-22T10:00:00.123Z"));
        // Neither plausible: the first reading says why.
        let doc = run(&s, json!({ "ts": 5 })).expect("a document");
        assert_eq!(doc["mqtt2es"]["timestamp_fallback"], json!("too_old"));
    }

    #[test]
    fn rfc3339_is_normalised_to_utc_millis() {
        let doc = stamp(json!(["rfc3339"]), json!("2026-11-22T11:00:00+01:00"));
        assert_eq!(at(&doc), json!("2026-11-22T10:00:00.000Z"));
        assert_eq!(doc.expect("ok").get("mqtt2es"), None);
    }

    #[test]
    fn epoch_seconds_and_milliseconds_accept_numbers_and_strings() {
        let s = json!(["epoch_s"]);
        assert_eq!(
            at(&stamp(s.clone(), json!(1795341600))),
            json!("2026-11-22T10:00:00.000Z")
        );
        assert_eq!(
            at(&stamp(s.clone(), json!(1795341600.25))),
            json!("2026-11-22T10:00:00.250Z")
        );
        assert_eq!(
            at(&stamp(s, json!("1795341600"))),
            json!("2026-11-22T10:00:00.000Z")
        );
        let ms = json!(["epoch_ms"]);
        assert_eq!(
            at(&stamp(ms, json!(1795341600123_i64))),
            json!("2026-11-22T10:00:00.123Z")
        );
    }

    #[test]
    fn strftime_patterns_without_a_zone_are_utc() {
        let doc = stamp(json!(["%Y-%m-%d %H:%M:%S"]), json!("2026-11-22 10:00:00"));
        assert_eq!(at(&doc), json!("2026-11-22T10:00:00.000Z"));
        let doc = stamp(json!(["%d/%m/%Y"]), json!("22/11/2026"));
        assert_eq!(at(&doc), json!("2026-11-22T00:00:00.000Z"));
    }

    #[test]
    fn formats_are_tried_in_order() {
        let formats = json!(["rfc3339", "epoch_ms"]);
        assert_eq!(
            at(&stamp(formats, json!(1795341600000_i64))),
            json!("2026-11-22T10:00:00.000Z")
        );
    }

    #[test]
    fn missing_or_unparseable_values_fall_back_to_the_receive_time_with_a_reason() {
        let s = stage("timestamp", json!({"field": "ts"}));
        assert_eq!(
            run(&s, json!({})),
            Ok(json!({
                "@timestamp": "2026-11-22T10:00:05.250Z",
                "mqtt2es": {"timestamp_fallback": "missing"}
            }))
        );
        let doc = run(&s, json!({"ts": "yesterday"})).expect("a document");
        assert_eq!(doc["mqtt2es"]["timestamp_fallback"], json!("unparseable"));
        assert_eq!(doc["ts"], json!("yesterday"));
    }

    #[test]
    fn skewed_timestamps_fall_back_by_default() {
        let s = stage(
            "timestamp",
            json!({"field": "ts", "max_past_s": 60, "max_future_s": 1, "target": "t"}),
        );
        let old = run(&s, json!({"ts": "2026-11-22T09:00:00Z"})).expect("a document");
        assert_eq!(old["t"], json!("2026-11-22T10:00:05.250Z"));
        assert_eq!(old["mqtt2es"]["timestamp_fallback"], json!("too_old"));
        let new = run(&s, json!({"ts": "2026-11-22T10:00:07Z"})).expect("a document");
        assert_eq!(new["mqtt2es"]["timestamp_fallback"], json!("too_new"));
        let fine = run(&s, json!({"ts": "2026-11-22T10:00:00Z"})).expect("a document");
        assert_eq!(fine["t"], json!("2026-11-22T10:00:00.000Z"));
    }

    #[test]
    fn skewed_timestamps_are_rejected_when_asked() {
        let s = stage(
            "timestamp",
            json!({"field": "ts", "max_future_s": 300, "on_skew": "reject"}),
        );
        let err = run(&s, json!({"ts": "2027-01-01T00:00:00Z"})).expect_err("future");
        assert_eq!(err.reason(), "timestamp_skew");
        assert_eq!(
            err.to_string(),
            "field \"ts\": timestamp \"2027-01-01T00:00:00Z\" is more than 300 s after the \
             receive time 2026-11-22T10:00:05.250Z"
        );
    }

    #[test]
    fn bad_timestamp_options_are_config_errors() {
        let cases = [
            (
                json!({"field": "ts", "formats": []}),
                "formats: needs at least one format",
            ),
            (
                json!({"field": "ts", "formats": ["iso"]}),
                "unknown format \"iso\"; expected one of rfc3339",
            ),
            (
                json!({"field": "ts", "formats": ["%Y-%Q"]}),
                "formats: \"%Y-%Q\" is not a valid strftime",
            ),
            (
                json!({"field": "ts", "on_skew": "clamp"}),
                "unknown on_skew \"clamp\"; expected one of receive_time, reject",
            ),
            (
                json!({"field": "ts", "max_past_s": -1}),
                "invalid value: integer `-1`",
            ),
            (
                json!({"field": "ts", "max_past_s": u64::MAX}),
                "max_past_s: 18446744073709551615 is too large",
            ),
            (
                json!({"field": "ts", "target": "a..b"}),
                "target: field path \"a..b\"",
            ),
            (
                json!({"field": "ts", "timezone": "UTC"}),
                "unknown field `timezone`",
            ),
            (json!({"formats": ["rfc3339"]}), "missing field `field`"),
        ];
        for (config, expected) in cases {
            let err = config_error("timestamp", config);
            assert!(err.contains(expected), "{err}");
        }
    }
}
