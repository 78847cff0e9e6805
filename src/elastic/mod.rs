//! The Elasticsearch side that is not the bulk path: building the client from settings, and
//! setup (templates today; lifecycle policies and dashboards later).
//!
//! Kept apart from `sink` so that `mqtt2es setup` and `check` can use it without the writer,
//! and so that everything talking to Elasticsearch goes through one `build_client` with the
//! same timeout, compression, TLS and credential handling.

pub mod client;
pub mod setup;

pub use client::{ClientError, ElasticsearchSettings, build_client};
pub use setup::{IndexTemplate, SetupError, install_templates, templates};
