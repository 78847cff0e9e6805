//! The Elasticsearch side that is not the bulk path: building the client from settings, the
//! pool of nodes it sends to, and setup (engine detection, templates, lifecycle, data streams,
//! Kibana dashboards).
//!
//! - `client`    — the one place a client is built (timeout, TLS, credentials, the nodes).
//! - `nodes`     — the node pool: round-robin over live nodes, dead ones retried, sniffing.
//! - `engine`    — which engine and version answers, and what it supports; pure.
//! - `templates` — component and index templates as pure functions of config and engine.
//! - `setup`     — the thin I/O that installs them, with errors that say what to do.
//! - `kibana`    — the `kibana:` settings and the saved-objects import of `dashboards/`.
//!
//! Kept apart from `sink` so that `mqtt2es setup` and `check` can use it without the writer,
//! and so that everything talking to Elasticsearch is built by `client` (`build_client`,
//! `build_cluster`) with the same timeout, TLS and credential handling. Bulk bodies are
//! gzipped by the sink itself, not by the client.

pub mod client;
pub mod engine;
pub mod kibana;
pub mod nodes;
pub mod setup;
pub mod templates;

pub use client::{ClientError, ElasticsearchSettings, Gzip, build_client, build_cluster};
pub use engine::{Engine, Features};
pub use kibana::{KibanaError, KibanaSettings, import_dashboards};
pub use nodes::Nodes;
pub use setup::{Installed, SetupError, detect, install};
pub use templates::{Layout, RetentionDays};
