//! Wires the edges together and owns startup and the shutdown order.
//!
//! ```text
//! broker or upstream ──Record──► processor ──Routed──► sink ──► Elasticsearch
//!         ▲                                              │
//!         └──────────── Settled (ack in order) ◄─────────┘
//! ```
//! The source is the embedded broker unless an `upstream` broker is configured.
//! Shutdown flows downstream: a signal stops intake at the connections, which drop their
//! record senders; the processor (`crate::processor`) drains and drops its sender; the sink
//! flushes and returns. Acks settle along the way and the connections send them before
//! disconnecting. If the sink cannot finish within `shutdown.grace_ms` (Elasticsearch down), it
//! is told to abandon: what is not stored stays unacknowledged, and the device (or the upstream
//! broker) sends it again.
//!
//! - `run`         — `mqtt2es run`: start in order, stop in order.
//! - `commands`    — `check`, `try` and `setup`.
//! - `parts`       — what several commands build from the configuration alike.
//! - `spooling`    — the spool's writer and shipper while `run` runs.
//! - `until_ready` — waiting for Elasticsearch at start, with progress once a minute.
//! - `signals`     — SIGTERM and Ctrl-C.

mod commands;
mod parts;
mod run;
mod signals;
mod spooling;
mod until_ready;

pub use commands::{Sample, check, setup, try_sample};
pub use run::run;
pub use signals::{signalled, stop_on_signal};
