//! One `create` op on its way to Elasticsearch: its encoded lines, and what it needs to settle,
//! retry, move to a later time or become a dead letter.
//!
//! The decision a reader would question: an item keeps only its encoded bytes and offsets into
//! them (where the source, `event.ingested` and `@timestamp` sit), never the document as a
//! value. Everything later (the index, the time for the latency figure, a later time on a
//! time-series stream) is read from or written into those bytes in place.

use chrono::{DateTime, Utc};

use crate::record::{Ack, Message};

/// How many later times a time-series reading tries when its `@timestamp` is taken by another
/// reading of its series. With nanosecond times a second try is already rare.
pub const MAX_PROBES: u32 = 100;

/// What an item is: a document, or the dead letter of a message that could not be one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Document {
        pipeline: std::sync::Arc<str>,
        conflict: Conflict,
    },
    DeadLetter {
        reason: String,
    },
}

/// What a 409 (a document with this `_id` exists) tells about an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// The `_id` is the reading's own: whatever holds it is this reading, stored before.
    Ours,
    /// The `_id` comes from fields another reading may share: a pipeline's `id` stage, or a
    /// time-series stream's series and `@timestamp`. Only the stored document's
    /// `mqtt2es.reading_id` tells whether it is this reading.
    Check { time_series: bool },
}

/// One `create` op on its way to Elasticsearch, with what it needs to settle or be
/// dead-lettered later.
#[derive(Debug)]
pub struct Item {
    pub kind: Kind,
    /// Kept (the payload is shared, not copied) so a document refused by Elasticsearch can
    /// still become a dead letter with its original topic and payload.
    pub message: Message,
    pub ack: Ack,
    /// Retryable failures so far; dead letters go to the local file after a few.
    pub failures: u32,
    /// Later `@timestamp`s tried because other readings of the series held the earlier ones.
    pub probes: u32,
    /// Refused by a cluster block at least once: stored later, it tells that the block is gone.
    pub blocked: bool,
    pub(super) ndjson: Vec<u8>,
    pub(super) source_at: usize,
    /// Where the `event.ingested` placeholder sits in `ndjson`, if the document gets one.
    pub(super) stamp_at: Option<usize>,
    /// Where the text of `@timestamp` starts in `ndjson` (after its opening quote), if it is a
    /// string: read for the latency figure once stored, without parsing the document again, and
    /// where a time-series document moves to a later time (it is written first there).
    pub(super) timestamp_at: Option<usize>,
}

impl Item {
    /// Encoded size in the bulk body (both lines and their newlines).
    pub fn bytes(&self) -> usize {
        self.ndjson.len()
    }

    /// The document's JSON alone, without a newline: a line of the dead-letter file.
    pub fn source(&self) -> &[u8] {
        &self.ndjson[self.source_at..self.ndjson.len() - 1]
    }

    /// The index or data stream the item goes to, read back from its action line rather than
    /// kept twice. Index names never hold a quote or a backslash (Elasticsearch's naming rules,
    /// which routing enforces), so the name is the text up to the next quote.
    pub fn index(&self) -> &str {
        let rest = &self.ndjson[ACTION_START.len()..];
        let len = rest.iter().position(|&b| b == b'"').unwrap_or(0);
        std::str::from_utf8(&rest[..len]).unwrap_or_default()
    }

    /// The text of the document's `@timestamp`, if it is a string. RFC 3339 has nothing to
    /// escape, so the text ends at the next quote.
    pub fn timestamp(&self) -> Option<&str> {
        let at = self.timestamp_at?;
        let len = self.ndjson[at..].iter().position(|&b| b == b'"')?;
        std::str::from_utf8(&self.ndjson[at..at + len]).ok()
    }

    /// What a 409 on this item means. Dead letters carry the reading's own id.
    pub fn conflict(&self) -> Conflict {
        match self.kind {
            Kind::Document { conflict, .. } => conflict,
            Kind::DeadLetter { .. } => Conflict::Ours,
        }
    }

    /// Moves a time-series document to the next time it may take in its series: one
    /// millisecond and one nanosecond later, so that it moves on a `date_nanos` stream and on
    /// an older `date` one alike, and the same way every time, so that a redelivery of it
    /// finds it again by walking the same times. False if it has no such time.
    pub fn probe_later_time(&mut self) -> bool {
        let time_series = matches!(self.conflict(), Conflict::Check { time_series: true });
        let Some(at) = self.timestamp_at.filter(|_| time_series) else {
            return false;
        };
        let Some(len) = self.ndjson[at..].iter().position(|&b| b == b'"') else {
            return false;
        };
        let Some(time) = std::str::from_utf8(&self.ndjson[at..at + len])
            .ok()
            .and_then(|text| text.parse::<DateTime<Utc>>().ok())
        else {
            return false;
        };
        let later = time + chrono::TimeDelta::milliseconds(1) + chrono::TimeDelta::nanoseconds(1);
        self.ndjson
            .splice(at..at + len, crate::reading::rfc3339(later).into_bytes());
        self.probes += 1;
        true
    }
}

/// How every action line starts, up to the index name's first character (see `action_line`).
pub(super) const ACTION_START: &[u8] = b"{\"create\":{\"_index\":\"";
