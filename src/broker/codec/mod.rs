//! Bytes ⇄ packets for MQTT 3.1.1 and 5, through rumqttc's codec (`mqttbytes` v4 and v5).
//!
//! The rest of the broker sees one pair of enums, [`Packet`] (what a client sent) and [`Reply`]
//! (what we send), so that a connection is written once for both protocol versions. Nothing
//! here parses MQTT by hand, with three narrow exceptions a reader would otherwise question:
//! the protocol level byte of the first CONNECT is peeked to choose the v4 or v5 decoder; the
//! whole CONNECT is checked for what rumqttc lets through and MQTT forbids ([`strict`]); and
//! an MQTT 5 DISCONNECT with no reason code (`E0 00`, what Mosquitto's clients send) is
//! recognised here because rumqttc 0.25's v5 decoder refuses a zero-length DISCONNECT.
//!
//! The files: `packet` (the two enums and what they carry), `read` (bytes to packets), `write`
//! (packets to bytes), `strict` (the CONNECT checks).

pub use packet::{
    AckReason, CodecError, Connect, ConnectCode, Filter, Goodbye, MessageProperties, Outgoing,
    Packet, Publish, Reply, RetainHandling, SubCode, Version, Will,
};
pub use read::{MAX_CONNECT_BYTES, read, take_bare_disconnect};
pub use write::write;

mod packet;
mod read;
pub mod strict;
mod write;

#[cfg(test)]
mod tests;
