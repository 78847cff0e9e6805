//! The embedded mini-broker: devices connect straight to mqtt2es, and a PUBACK (QoS 1) or
//! PUBREC (QoS 2) goes out only once the record's ack settles, so a device's own retry covers
//! every failure between its socket and Elasticsearch.
//!
//! Why our own and not a broker crate: no general-purpose broker lets the acknowledgement wait
//! on the sink. Packets are read and written by rumqttc's codec (`mqttbytes` v4 and v5); there
//! is no hand-written packet parsing here.
//!
//! - `settings` — the `broker:` config section (limits, state directory) and its sub-sections.
//! - `listener` — TCP, TLS and WebSocket listeners; handshakes happen off the accept loop.
//! - `auth`     — password file, JWT-as-password and per-user ACLs.

pub mod auth;
pub mod listener;
pub mod settings;

pub use settings::BrokerSettings;
