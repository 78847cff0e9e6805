//! How a connection ends: every phase may end it, and the end decides the goodbye and the will.
//!
//! The decision a reader would question: a phase returns `Option<End>` rather than a `Result`.
//! Ending is not failing: a DISCONNECT is an end as much as a broken rule, and the loop treats
//! them alike (stop reading, say goodbye, hand the session back).

use crate::broker::codec::Goodbye;

/// How a connection ended, which decides the goodbye and whether the will is published.
#[derive(Debug)]
pub(super) enum End {
    /// The client sent DISCONNECT (`will`: MQTT 5 reason 0x04 asks for the will anyway).
    Normal {
        will: bool,
    },
    /// The network connection went away without DISCONNECT.
    Lost(String),
    KeepAlive,
    TakenOver,
    /// The broker is stopping: acks that settled were sent; no will (the device is fine).
    Shutdown,
    /// The client broke the protocol: one log line, a reason code for MQTT 5, then close.
    Violation(Goodbye, String),
}

impl End {
    pub(super) fn publishes_will(&self) -> bool {
        match self {
            End::Normal { will } => *will,
            End::Shutdown => false,
            _ => true,
        }
    }

    /// The DISCONNECT we send, if any: none to a client that left or whose connection is gone.
    pub(super) fn goodbye(&self) -> Option<Goodbye> {
        match self {
            End::Shutdown => Some(Goodbye::ShuttingDown),
            End::TakenOver => Some(Goodbye::TakenOver),
            End::KeepAlive => Some(Goodbye::KeepAliveTimeout),
            End::Violation(goodbye, _) => Some(*goodbye),
            End::Normal { .. } | End::Lost(_) => None,
        }
    }
}
