//! What flows into the sink.

use crate::{
    document::Processed,
    record::{Ack, Message},
};

/// What the sink consumes: a message, what the pipelines made of it, and its ack.
#[derive(Debug)]
pub struct Routed {
    pub message: Message,
    pub processed: Processed,
    pub ack: Ack,
}
