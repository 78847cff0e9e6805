//! What the sink tells whoever watches it (the metrics, in `run`): the one way out of the sink
//! besides settling acks. The sink defines it and knows nothing of who implements it, so the
//! dependency between sink and metrics points one way (metrics reads the sink's counters and
//! implements this; the sink never calls metrics).

use std::time::Duration;

use chrono::{DateTime, Utc};

pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A bulk request took `elapsed`; `status` is its HTTP status, `None` if there was no answer.
    fn bulk_request(&self, elapsed: Duration, status: Option<u16>);

    /// Elasticsearch confirmed a new document in `data_stream` stored at `now`; `timestamp` is
    /// the text of its `@timestamp`, if it has one.
    fn document_stored(&self, data_stream: &str, timestamp: Option<&str>, now: DateTime<Utc>);

    /// Elasticsearch refused writes with a cluster block (`reason`); true if this starts one.
    fn write_blocked(&self, reason: &str) -> bool;

    /// Documents a block had refused were stored; how long the block lasted, if one was on.
    fn writes_accepted(&self) -> Option<Duration>;
}

/// Nobody watching (tests of the sink alone, tools).
#[derive(Debug)]
pub struct Unobserved;

impl Observer for Unobserved {
    fn bulk_request(&self, _: Duration, _: Option<u16>) {}
    fn document_stored(&self, _: &str, _: Option<&str>, _: DateTime<Utc>) {}
    fn write_blocked(&self, _: &str) -> bool {
        false
    }
    fn writes_accepted(&self) -> Option<Duration> {
        None
    }
}
