//! Deliveries driven directly, writing into an in-memory stream the test reads as the client.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rumqttc::mqttbytes::v4;

use super::*;
use crate::broker::codec::{MessageProperties, Version};
use crate::broker::connection::harness::{Peer, outbound};

fn delivery(qos: QoS, payload: &'static str) -> Delivery {
    Delivery::arrived(
        "sensors/lab/pi/telemetry",
        Bytes::from_static(payload.as_bytes()),
        qos,
        false,
        &MessageProperties::default(),
        SystemTime::now(),
    )
}

/// Flushes what `out` holds and reads `count` packets from the client's end.
async fn sent(out: &mut Outbound, client: &mut Peer, count: usize) -> Vec<v4::Packet> {
    out.flush().await.expect("flush");
    let mut packets = Vec::new();
    while packets.len() < count {
        packets.push(client.next().await.expect("a packet"));
    }
    packets
}

/// Packet id and DUP flag of each PUBLISH in `packets`.
fn published(packets: &[v4::Packet]) -> Vec<(u16, bool)> {
    packets
        .iter()
        .filter_map(|packet| match packet {
            v4::Packet::Publish(publish) => Some((publish.pkid, publish.dup)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn packet_ids_wrap_past_65535_to_1_and_skip_ids_still_in_flight() {
    let (mut out, mut client) = outbound(Version::V311);
    let mut deliveries = Deliveries::new(10, Vec::new(), None);
    deliveries.next_pkid = u16::MAX - 1;
    deliveries
        .inflight
        .insert(1, (delivery(QoS::AtLeastOnce, "old"), Stage::Ack));
    deliveries.queue((0..3).map(|_| delivery(QoS::AtLeastOnce, "{}")));
    deliveries.send_pending(&mut out);
    let packets = sent(&mut out, &mut client, 3).await;
    assert_eq!(
        published(&packets),
        [(u16::MAX, false), (2, false), (3, false)]
    );
}

#[tokio::test]
async fn resume_resends_what_was_in_flight_with_dup_under_the_same_ids() {
    let (mut out, mut client) = outbound(Version::V311);
    let mut deliveries = Deliveries::new(10, Vec::new(), None);
    let unfinished = vec![
        Unfinished {
            pkid: 7,
            delivery: delivery(QoS::AtLeastOnce, "unacked"),
            released: false,
        },
        Unfinished {
            pkid: 8,
            delivery: delivery(QoS::ExactlyOnce, "released"),
            released: true,
        },
    ];
    deliveries.resume(&mut out, unfinished);
    let packets = sent(&mut out, &mut client, 2).await;
    assert_eq!(published(&packets), [(7, true)], "{packets:?}");
    assert!(
        matches!(packets[1], v4::Packet::PubRel(ref rel) if rel.pkid == 8),
        "{packets:?}"
    );
    // Both are in flight again: a new delivery takes neither id.
    assert_eq!(deliveries.inflight.len(), 2);
    let (unfinished, unsent) = deliveries.hand_back();
    assert!(unsent.is_empty());
    let kept: Vec<(u16, bool)> = unfinished.iter().map(|u| (u.pkid, u.released)).collect();
    assert_eq!(kept, [(7, false), (8, true)]);
}

#[tokio::test]
async fn a_full_window_holds_the_queue_back_qos0_too_until_a_puback_makes_room() {
    let (mut out, mut client) = outbound(Version::V311);
    let mut deliveries = Deliveries::new(1, Vec::new(), None);
    deliveries.queue([
        delivery(QoS::AtLeastOnce, "first"),
        delivery(QoS::AtLeastOnce, "second"),
        delivery(QoS::AtMostOnce, "behind"),
    ]);
    deliveries.send_pending(&mut out);
    let packets = sent(&mut out, &mut client, 1).await;
    assert_eq!(published(&packets), [(1, false)]);
    // The QoS 0 message keeps its place behind the one the window holds back.
    assert_eq!(deliveries.pending.len(), 2);

    deliveries.on_puback(&mut out, 1);
    let packets = sent(&mut out, &mut client, 2).await;
    assert_eq!(published(&packets), [(2, false), (0, false)]);
    assert_eq!(deliveries.inflight.len(), 1);
}

#[tokio::test]
async fn a_qos2_delivery_is_released_on_pubrec_and_done_on_pubcomp() {
    let (mut out, mut client) = outbound(Version::V311);
    let mut deliveries = Deliveries::new(10, vec![delivery(QoS::ExactlyOnce, "{}")], None);
    deliveries.send_pending(&mut out);
    sent(&mut out, &mut client, 1).await;
    deliveries.on_pubrec(&mut out, 1);
    let packets = sent(&mut out, &mut client, 1).await;
    assert!(
        matches!(packets[0], v4::Packet::PubRel(ref rel) if rel.pkid == 1),
        "{packets:?}"
    );
    // Handed back now, it would be resent as PUBREL, not as PUBLISH.
    assert!(matches!(
        deliveries.inflight.get(&1),
        Some((_, Stage::Comp))
    ));
    deliveries.on_pubcomp(&mut out, 1);
    assert!(deliveries.inflight.is_empty());
}

#[tokio::test]
async fn a_delivery_whose_expiry_ran_out_in_the_queue_is_dropped() {
    let (mut out, mut client) = outbound(Version::V311);
    let mut stale = delivery(QoS::AtLeastOnce, "stale");
    stale.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
    let mut deliveries =
        Deliveries::new(10, vec![stale, delivery(QoS::AtLeastOnce, "fresh")], None);
    deliveries.send_pending(&mut out);
    let packets = sent(&mut out, &mut client, 1).await;
    match &packets[0] {
        v4::Packet::Publish(publish) => assert_eq!(&publish.payload[..], b"fresh"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert_eq!(deliveries.inflight.len(), 1);
}

#[tokio::test]
async fn deliveries_not_yet_sent_go_back_to_the_session_with_what_the_channel_still_holds() {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let mut deliveries = Deliveries::new(10, vec![delivery(QoS::AtLeastOnce, "queued")], None);
    deliveries.fan_out_to(receiver);
    sender
        .send(delivery(QoS::AtLeastOnce, "in the channel"))
        .await
        .expect("send");
    let (unfinished, unsent) = deliveries.hand_back();
    assert!(unfinished.is_empty());
    let payloads: Vec<&[u8]> = unsent.iter().map(|d| &d.payload[..]).collect();
    assert_eq!(payloads, [&b"queued"[..], &b"in the channel"[..]]);
}
