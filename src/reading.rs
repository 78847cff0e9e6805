//! What makes a reading itself: an id and a receive time, assigned once when a message first
//! arrives and never given to another reading.
//!
//! Why mqtt2es assigns its own identity instead of hashing what the device sent: two distinct
//! readings may be byte-identical, may carry no time, or a time of one-second resolution, so
//! nothing in the payload tells them apart; and a redelivery of one reading (a DUP resend, the
//! upstream broker's redelivery) must be recognised as that reading. MQTT identifies a
//! redelivery by session and packet id, so the producer (broker connection, upstream driver)
//! keeps the [`Assigned`] of every unacknowledged message and hands the same one to its resend.
//!
//! The id is 128 bits: a random per-process half and a counter, so ids never repeat within a
//! process and collide across processes with negligible probability. Receive times are strictly
//! increasing nanoseconds within a process, so no two readings share one: on a time-series data
//! stream, where Elasticsearch identifies a document by its series and `@timestamp`, a reading
//! without a device time therefore never meets another's id.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};

/// A reading's own id, shown as 22 base64url characters (the `_id` of its document unless a
/// pipeline names other fields, and `mqtt2es.reading_id` in every document).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadingId(u128);

impl ReadingId {
    /// A fresh id, unlike any other this process has made.
    pub fn next() -> ReadingId {
        static PROCESS: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let process = *PROCESS.get_or_init(rand::random::<u64>);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        ReadingId((u128::from(process) << 64) | u128::from(count))
    }

    pub fn from_u128(value: u128) -> ReadingId {
        ReadingId(value)
    }

    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// Reads the 22-character form back; `None` if it is not one.
    pub fn parse(text: &str) -> Option<ReadingId> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let bytes: [u8; 16] = bytes.try_into().ok()?;
        Some(ReadingId(u128::from_be_bytes(bytes)))
    }
}

impl fmt::Display for ReadingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// A reading id's 22 characters, on the stack: every document carries one, and writing it
/// needs no `String`.
#[derive(Clone, Copy)]
pub struct ReadingText([u8; 22]);

impl ReadingId {
    pub fn text(self) -> ReadingText {
        let mut text = [0u8; 22];
        URL_SAFE_NO_PAD
            .encode_slice(self.0.to_be_bytes(), &mut text)
            .expect("16 bytes encode to 22 base64url characters");
        ReadingText(text)
    }
}

impl ReadingText {
    /// Base64url: nothing in it needs escaping in JSON.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base64 is ASCII")
    }
}

impl fmt::Debug for ReadingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadingId({self})")
    }
}

/// What a message was given when it first arrived; its resends get the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    pub reading: ReadingId,
    pub received_at: DateTime<Utc>,
}

impl Assigned {
    /// A new reading received now.
    pub fn now() -> Assigned {
        Assigned {
            reading: ReadingId::next(),
            received_at: receive_time(),
        }
    }
}

/// What each QoS 1/2 message of one sender not acknowledged yet was assigned, by packet id:
/// the broker connection's for a device, the upstream driver's for the broker it subscribes to.
/// A `BTreeMap`: it holds at most a sender's window, and empty it is 24 bytes with no random
/// state, where a `HashMap` is 48 (it sits in every connection and every session).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Assignments(BTreeMap<u16, Assigned>);

impl Assignments {
    /// A resend (DUP) of a message still unacknowledged gets what its first copy got; anything
    /// else is a new reading and gets `fresh()`, remembered until `forget`. Without DUP a packet
    /// id is new by definition: a sender reuses one only after it was acknowledged. The bool
    /// says whether the assignment is new (and so must be kept on disk).
    pub fn assign(
        &mut self,
        pkid: u16,
        dup: bool,
        fresh: impl FnOnce() -> Assigned,
    ) -> (Assigned, bool) {
        if dup && let Some(first) = self.0.get(&pkid) {
            return (*first, false);
        }
        let assigned = fresh();
        self.0.insert(pkid, assigned);
        (assigned, true)
    }

    /// Forgets `pkid` (its acknowledgement is going out); whether it was remembered.
    pub fn forget(&mut self, pkid: u16) -> bool {
        self.0.remove(&pkid).is_some()
    }

    /// Forgets each of `pkids` (their acknowledgements are going out); the ones remembered,
    /// whose forgetting the state store must hear of too.
    pub fn forget_each(&mut self, pkids: impl IntoIterator<Item = u16>) -> Vec<u16> {
        pkids
            .into_iter()
            .filter(|&pkid| self.forget(pkid))
            .collect()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl From<HashMap<u16, Assigned>> for Assignments {
    fn from(map: HashMap<u16, Assigned>) -> Self {
        Assignments(map.into_iter().collect())
    }
}

/// The wall clock in nanoseconds, but never the same value twice in this process and never
/// earlier than the last one handed out (a clock stepped back holds still until it catches up).
pub fn receive_time() -> DateTime<Utc> {
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    let now = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX - 1);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return DateTime::from_timestamp_nanos(next),
            Err(seen) => last = seen,
        }
    }
}

/// RFC 3339 in UTC as documents carry it: milliseconds, or nanoseconds when the time has
/// digits below the millisecond (assigned receive times do; a time-series data stream maps
/// `@timestamp` as `date_nanos` so that they tell readings apart).
///
/// Written digit by digit: every reading gets one or two of these, and chrono's general
/// formatter took 3.5 % of the CPU per reading. Times chrono would write otherwise (years
/// outside 0–9999, a leap second) go through chrono.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    // The UTC fields once: each accessor of a `DateTime` adds its (zero) offset again.
    let utc = time.naive_utc();
    let nanos = utc.nanosecond();
    let millis_only = nanos.is_multiple_of(1_000_000);
    let year = utc.year();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        let digits = match millis_only {
            true => SecondsFormat::Millis,
            false => SecondsFormat::Nanos,
        };
        return time.to_rfc3339_opts(digits, true);
    }
    let mut out = [0u8; 30];
    let mut at = 0;
    let mut put = |value: u32, width: usize, after: u8| {
        let mut rest = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out[at + width] = after;
        at += width + 1;
    };
    put(year as u32, 4, b'-');
    put(utc.month(), 2, b'-');
    put(utc.day(), 2, b'T');
    put(utc.hour(), 2, b':');
    put(utc.minute(), 2, b':');
    put(utc.second(), 2, b'.');
    match millis_only {
        true => put(nanos / 1_000_000, 3, b'Z'),
        false => put(nanos, 9, b'Z'),
    }
    // Only ASCII digits and separators were written.
    std::str::from_utf8(&out[..at]).expect("ASCII").to_owned()
}

/// Reads back a time as `rfc3339` writes it (`YYYY-MM-DDTHH:MM:SS`, 1 to 9 fraction digits,
/// `Z`) without chrono's general parser, which was the larger part of the cost of the latency
/// figure of each stored document; anything else (offsets, lowercase, leap seconds) goes
/// through chrono.
pub fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    parse_own(text.as_bytes()).or_else(|| {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    })
}

fn parse_own(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        bytes.get(range)?.iter().try_fold(0u32, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if bytes.len() < 20 || separators.iter().any(|&(at, c)| bytes[at] != c) {
        return None;
    }
    let nanos = match (bytes[19], bytes.last()) {
        (b'Z', _) if bytes.len() == 20 => 0,
        (b'.', Some(b'Z')) if (22..=30).contains(&bytes.len()) => {
            let digits = bytes.len() - 21;
            number(20..bytes.len() - 1)? * 10u32.pow(9 - digits as u32)
        }
        _ => return None,
    };
    let date =
        chrono::NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)?;
    // Second 60 (a leap second) is refused here and left to chrono.
    let time = chrono::NaiveTime::from_hms_nano_opt(
        number(11..13)?,
        number(14..16)?,
        number(17..19)?,
        nanos,
    )?;
    Some(date.and_time(time).and_utc())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn parse_rfc3339_reads_what_chrono_reads() {
        let mut time: DateTime<Utc> = "0001-01-01T00:00:00Z".parse().expect("a time");
        let step = chrono::Duration::nanoseconds(7 * 86_399_123_456_789);
        for _ in 0..50_000 {
            for digits in [
                SecondsFormat::Secs,
                SecondsFormat::Millis,
                SecondsFormat::Nanos,
            ] {
                let text = time.to_rfc3339_opts(digits, true);
                assert_eq!(parse_rfc3339(&text), chrono_parse(&text), "{text}");
            }
            time += step;
        }
        for text in [
            "2026-11-22T10:00:00.5Z",
            "2026-11-22T10:00:00.123456Z",
            "2026-11-22T10:00:00+01:00",
            "2026-11-22t10:00:00z",
            "2016-12-31T23:59:60Z",
            "2026-02-30T10:00:00Z",
            "2026-11-22T10:00:00.Z",
            "2026-11-22T10:00:00.1234567891Z",
            "2026-11-22T1a:00:00Z",
            "2026-11-22 10:00:00Z",
            "",
        ] {
            assert_eq!(parse_rfc3339(text), chrono_parse(text), "{text}");
        }
    }

    fn chrono_parse(text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    #[test]
    fn rfc3339_writes_what_chrono_writes_for_milliseconds_and_nanoseconds() {
        let chrono_of = |time: DateTime<Utc>| match time.timestamp_subsec_nanos() % 1_000_000 {
            0 => time.to_rfc3339_opts(SecondsFormat::Millis, true),
            _ => time.to_rfc3339_opts(SecondsFormat::Nanos, true),
        };
        // Years 0 to ~7100 in uneven steps, each time also cut to its millisecond.
        let mut time: DateTime<Utc> = "0000-01-01T00:00:00Z".parse().expect("a time");
        let step = chrono::Duration::nanoseconds(13 * 86_399_123_000_007);
        for _ in 0..100_000 {
            let millis =
                chrono::Duration::nanoseconds(i64::from(time.timestamp_subsec_nanos() % 1_000_000));
            for shown in [time, time - millis] {
                assert_eq!(rfc3339(shown), chrono_of(shown));
            }
            time += step;
        }
        let past_9999 = "9999-12-31T23:59:59Z"
            .parse::<DateTime<Utc>>()
            .expect("a time")
            + chrono::Duration::days(400);
        assert_eq!(rfc3339(past_9999), chrono_of(past_9999));
    }

    #[test]
    fn reading_ids_never_repeat_and_read_back_from_their_text() {
        let ids: Vec<ReadingId> = (0..10_000).map(|_| ReadingId::next()).collect();
        let unique: HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids[..10] {
            let text = id.to_string();
            assert_eq!(text.len(), 22);
            assert_eq!(ReadingId::parse(&text), Some(*id));
        }
        assert_eq!(ReadingId::parse("not an id"), None);
    }

    #[test]
    fn a_resend_gets_the_first_copys_assignment_and_a_new_message_a_fresh_one() {
        let mut assignments = Assignments::default();
        let (first, new) = assignments.assign(7, false, Assigned::now);
        assert!(new);
        assert_eq!(assignments.assign(7, true, Assigned::now), (first, false));
        // Without DUP the packet id was acknowledged and reused: a new reading.
        let (again, new) = assignments.assign(7, false, Assigned::now);
        assert!(new && again != first);
        assert!(assignments.forget(7));
        assert!(
            assignments.assign(7, true, Assigned::now).1,
            "forgotten: new"
        );
    }

    #[test]
    fn times_show_nanoseconds_only_when_they_have_them() {
        let ms: DateTime<Utc> = "2026-11-22T10:00:05.250Z".parse().expect("a time");
        assert_eq!(rfc3339(ms), "2026-11-22T10:00:05.250Z");
        let ns: DateTime<Utc> = "2026-11-22T10:00:05.250000001Z".parse().expect("a time");
        assert_eq!(rfc3339(ns), "2026-11-22T10:00:05.250000001Z");
    }

    #[test]
    fn receive_times_strictly_increase_even_within_one_clock_tick() {
        let times: Vec<_> = (0..10_000).map(|_| receive_time()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn receive_times_from_many_threads_are_all_distinct() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..5_000).map(|_| receive_time()).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for thread in threads {
            for time in thread.join().expect("thread") {
                assert!(all.insert(time), "{time} handed out twice");
            }
        }
    }
}
