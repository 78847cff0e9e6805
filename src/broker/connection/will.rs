//! The last will: published when a connection ends without a DISCONNECT that waives it, to
//! subscribers, the retained store and the pipelines.
//!
//! The decision a reader would question: a will with a delay waits in a task of its own, not in
//! the connection's. The connection is gone by then, and its session may be taken over or end
//! meanwhile; the task holds only what publishing needs, and gives up when intake stops
//! (holding a record sender through shutdown would keep the pipeline open).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::context::Context;
use crate::broker::auth::Identity;
use crate::broker::codec::Will;
use crate::broker::session::Delivery;
use crate::metrics;
use crate::reading::{self, ReadingId};
use crate::record::{Ack, Message, Record};

/// Publishes a last will: to subscribers and the retained store, and into the pipelines as
/// a record, so that dashboards can show the device going offline. An MQTT 5 will delay is
/// honoured by waiting, in a task of its own, unless the client has reconnected by then
/// (even if that connection has ended again).
pub(super) fn publish_will(
    context: Arc<Context>,
    connection: u64,
    identity: Identity,
    will: Will,
    expiry_s: u32,
    records: mpsc::Sender<Record>,
    intake: CancellationToken,
) {
    let client_id = identity.client_id.clone();
    if will.topic.is_empty()
        || will.topic.starts_with('$')
        || will.topic.contains(['+', '#', '\0'])
        || !context.auth.may_publish(&identity, &will.topic)
    {
        warn!(%client_id, topic = %will.topic, "will not published: topic not allowed");
        return;
    }
    let delay = Duration::from_secs(u64::from(will.delay_s.min(expiry_s)));
    // Published early if the session ends within the delay (a new connection with Clean
    // Start takes it over, or it expires): MQTT 5 §3.1.2.5.
    let session_ended = match delay.is_zero() {
        true => None,
        false => context.registry.will_waits(&client_id, connection),
    };
    tokio::spawn(async move {
        if !delay.is_zero() {
            let ended = async {
                match &session_ended {
                    Some(ended) => ended.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {
                    if context.registry.reconnected_since(&client_id, connection) {
                        debug!(%client_id, "client reconnected within its will delay; will not published");
                        return;
                    }
                }
                () = ended => {
                    debug!(%client_id, "session ended within the will delay; publishing the will now");
                }
                // Holding a record sender through shutdown would keep the pipeline open.
                _ = intake.cancelled() => return,
            }
        }
        info!(%client_id, topic = %will.topic, "publishing last will");
        context.registry.publish(
            &client_id,
            &Delivery::arrived(
                &will.topic,
                will.payload.clone(),
                will.qos,
                will.retain,
                &will.properties,
                SystemTime::now(),
            ),
        );
        metrics::message_in(metrics::Source::Broker);
        let record = Record {
            message: Message {
                topic: will.topic,
                payload: Arc::from(&will.payload[..]),
                qos: will.qos,
                retain: will.retain,
                reading: ReadingId::next(),
                received_at: reading::receive_time(),
                user_properties: will.properties.user_properties,
            },
            ack: Ack::none(),
        };
        if records.send(record).await.is_err() {
            debug!(%client_id, "pipeline closed; will only published to subscribers");
        }
    });
}

#[cfg(test)]
mod tests;
