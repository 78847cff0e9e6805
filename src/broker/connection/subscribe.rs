//! SUBSCRIBE and UNSUBSCRIBE: filters checked, each granted or refused by the ACL, the
//! registry told, and the retained messages a new subscription asks for queued for delivery.
//!
//! The decision a reader would question: an invalid filter ends the connection instead of
//! being refused in SUBACK. MQTT makes such a packet malformed (MQTT-4.7.1-1, -2; MQTT-4.7.3-1,
//! -2); SUBACK's refusal codes are for filters that are valid but not allowed.

use tracing::info;

use super::context::Client;
use super::delivery::Deliveries;
use super::end::End;
use super::socket::Outbound;
use crate::broker::codec::{self, Goodbye, Reply, SubCode};
use crate::broker::session::Subscription;
use crate::topic::TopicFilter;

/// SUBSCRIBE `filters` under packet id `pkid`, with subscription identifier `id` (MQTT 5).
pub(super) fn on_subscribe(
    client: &Client,
    out: &mut Outbound,
    deliveries: &mut Deliveries,
    pkid: u16,
    filters: Vec<codec::Filter>,
    id: Option<u32>,
) -> Option<End> {
    // Not a refusal in SUBACK: a filter that breaks MQTT's rules makes the packet
    // malformed, and the connection closes (MQTT-4.7.1-1, -2; MQTT-4.7.3-1, -2).
    if let Some(error) = filters
        .iter()
        .find_map(|f| TopicFilter::parse(&f.filter).err())
    {
        return Some(End::Violation(
            Goodbye::MalformedPacket,
            format!("SUBSCRIBE with an invalid filter: {error}"),
        ));
    }
    if id == Some(0) {
        return Some(End::Violation(
            Goodbye::ProtocolError,
            "SUBSCRIBE with subscription identifier 0 (MQTT 5 §3.8.2.1.2)".into(),
        ));
    }
    // MQTT 5 §3.8.3.1: no local on a shared subscription is a Protocol Error.
    let shared =
        |f: &codec::Filter| TopicFilter::parse(&f.filter).is_ok_and(|p| p.share_group().is_some());
    if let Some(filter) = filters.iter().find(|f| f.no_local && shared(f)) {
        return Some(End::Violation(
            Goodbye::ProtocolError,
            format!("no local on shared subscription {:?}", filter.filter),
        ));
    }
    let context = &client.context;
    let mut codes = Vec::with_capacity(filters.len());
    let mut accepted = Vec::new();
    let mut retain_rules = Vec::new();
    for filter in filters {
        let allowed = || context.auth.subscription(&client.identity, &filter.filter);
        let code = match TopicFilter::parse(&filter.filter) {
            Err(_) => SubCode::FilterInvalid,
            Ok(parsed) => match allowed() {
                None => SubCode::NotAuthorized,
                Some(except) => {
                    accepted.push(Subscription {
                        filter: parsed,
                        qos: filter.qos,
                        no_local: filter.no_local,
                        retain_as_published: filter.retain_as_published,
                        id,
                        except,
                    });
                    retain_rules.push(filter.retain_handling);
                    SubCode::Granted(filter.qos)
                }
            },
        };
        if code != SubCode::Granted(filter.qos) {
            info!(client_id = %client.client_id, filter = %filter.filter, code = ?code, "subscription refused");
        }
        codes.push(code);
    }
    let subscribed = context.registry.subscribe(&client.client_id, accepted);
    if let Some(fanned_out) = subscribed.deliveries {
        deliveries.fan_out_to(fanned_out);
    }
    out.reply(&Reply::SubAck { pkid, codes });
    for ((existed, retained), rule) in subscribed.filters.into_iter().zip(retain_rules) {
        let send = match rule {
            codec::RetainHandling::Send => true,
            codec::RetainHandling::SendIfNew => !existed,
            codec::RetainHandling::Never => false,
        };
        if send {
            deliveries.queue(retained);
        }
    }
    deliveries.send_pending(out);
    None
}

/// UNSUBSCRIBE `filters` under packet id `pkid`.
pub(super) fn on_unsubscribe(
    client: &Client,
    out: &mut Outbound,
    pkid: u16,
    filters: Vec<String>,
) -> Option<End> {
    if let Some(error) = filters.iter().find_map(|f| TopicFilter::parse(f).err()) {
        return Some(End::Violation(
            Goodbye::MalformedPacket,
            format!("UNSUBSCRIBE with an invalid filter: {error}"),
        ));
    }
    let existed = client
        .context
        .registry
        .unsubscribe(&client.client_id, &filters);
    out.reply(&Reply::UnsubAck { pkid, existed });
    None
}

#[cfg(test)]
mod tests;
