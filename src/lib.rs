//! mqtt2es: an MQTT to Elasticsearch telemetry bridge whose promise is that an acknowledged
//! reading is a durable reading.
//!
//! Messages come in through the embedded broker (or from an upstream broker), run through the
//! pipelines configured in YAML, and are written to Elasticsearch data streams with `_bulk`.
//! The MQTT acknowledgement for QoS 1 and 2 is sent only after the document is stored or
//! dead-lettered, so every failure in between is covered by MQTT's own redelivery.
//!
//! # Layout
//! - `main.rs`   — CLI: parse, init logs, load config, run, map errors to exit codes.
//! - `app`       — wires source → processor → sink together; owns startup and shutdown order;
//!   the `check`, `try` and `setup` commands; signals.
//! - `config`    — typed configuration (defaults → YAML → `MQTT2ES_` env), fully checked at load:
//!   it gathers the sections each module owns and checks; its tests keep README's
//!   "Configuration reference" in step with them.
//! - `settings`  — `SettingsError`, what every section reports with (so modules never import
//!   `config`).
//! - `record`    — `Record`, `Message` and the `Ack` handle: what flows through the system.
//! - `reading` — a reading's own id and receive time, assigned once, kept for its redeliveries.
//! - `state`   — the state directory's embedded database (fjall), for the broker's store.
//! - `kept`    — what each unacknowledged message was assigned, in a journal on disk, for resends.
//! - `spool`     — store and forward (`delivery.mode: spool`): segment files, writer, shipper.
//! - `acks`      — releases acknowledgements in arrival order as records settle out of order.
//! - `document`  — what pipelines produce: `Document`, `Rejection`, `Processed`.
//! - `object`    — a document's top level as pipelines build it: members in arrival order.
//! - `secret`    — `Secret`: a string whose Debug/Display print `[redacted]`.
//! - `topic`     — MQTT topic filters (`+`, `#`, `$share`) and topic patterns (`{site}`).
//! - `pipeline`  — pipelines loaded from `pipelines/*.yaml`, routing, field paths, stages.
//! - `processor` — the task that runs records through the pipelines between the channels.
//! - `sink`      — batching, `_bulk` encoding and per-item classification, the writer, dead letters.
//! - `elastic`   — the Elasticsearch client and its node pool; setup: engine detection,
//!   templates, lifecycle, data streams, and the Kibana dashboard import.
//! - `upstream`  — the subscriber: a connection loop of our own on rumqttc's packet codec, acks
//!   in arrival order once durable.
//! - `broker`    — the embedded mini-broker (the default source): codec, connections, sessions,
//!   fan-out, retained messages, persisted state, listeners, auth; acks only once durable.
//! - `metrics`   — own figures: Prometheus `/metrics`, `/healthz`, `/readyz`, shipped documents.
//! - `simulate`  — `mqtt2es simulate`: a fleet of virtual Pi thermometers (one connection each).
//! - `top`       — `mqtt2es top`: a live terminal view of a running mqtt2es, from its `/metrics`.
//! - `stand_in`  — tests only: a fault-injection HTTP stand-in for Elasticsearch and Kibana.
//! - `layout_tests` — tests only: no import circles in `src/`, no unexplained file over 600 lines.

pub mod acks;
pub mod app;
pub mod broker;
pub mod config;
pub mod document;
pub mod elastic;
pub mod kept;
#[cfg(test)]
mod layout_tests;
pub mod metrics;
pub mod object;
pub mod pipeline;
pub mod processor;
pub mod reading;
pub mod record;
pub mod secret;
pub mod settings;
pub mod simulate;
pub mod sink;
pub mod spool;
#[cfg(test)]
pub(crate) mod stand_in;
pub mod state;
pub mod top;
pub mod topic;
pub mod upstream;
