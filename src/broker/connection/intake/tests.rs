//! Intake, over an in-memory connection whose pipeline the test plays: it takes the records
//! and settles them when and how it likes.

use std::time::Duration;

use rumqttc::mqttbytes::{QoS as QoS4, v4};
use rumqttc::v5::mqttbytes::{QoS as QoS5, v5};
use tokio::sync::mpsc::error::TryRecvError;

use super::super::harness::{connect5, connected, connected5, context, publish, qos1};
use crate::record::Settlement;

/// The packet ids of the PUBACKs in `packets`.
fn acked(packets: &[v4::Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|packet| match packet {
            v4::Packet::PubAck(ack) => Some(ack.pkid),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_client_held_back_longer_than_its_keep_alive_is_not_taken_for_silent() {
    let mut connect = v4::Connect::new("pi");
    connect.keep_alive = 1; // we close after 1.5 s of silence
    let mut served = connected(&context(1), connect, 1).await;

    // The first reading goes on; the second waits for it (max_inflight 1), and the PINGREQ
    // sent with it waits, read but not handled, behind it.
    served.client.send(&[qos1(1)]).await;
    let first = served.pipeline.recv().await.expect("the first record");
    served.client.send(&[qos1(2), v4::Packet::PingReq]).await;
    // Held back for twice the client's keep-alive (paused time): the stall under test.
    tokio::time::sleep(Duration::from_secs(3)).await;

    first.ack.settle(Settlement::Stored);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match served.client.next().await {
            Some(packet) => seen.push(packet),
            None => panic!("closed after {seen:?}"),
        }
    }
    assert!(
        matches!(seen[0], v4::Packet::PubAck(ref ack) if ack.pkid == 1),
        "{seen:?}"
    );
    assert!(matches!(seen[1], v4::Packet::PingResp), "{seen:?}");
    // Still connected: the second reading goes on and is acknowledged.
    let second = served.pipeline.recv().await.expect("the second record");
    second.ack.settle(Settlement::Stored);
    assert!(
        matches!(served.client.next().await, Some(v4::Packet::PubAck(ref ack)) if ack.pkid == 2)
    );
}

#[tokio::test]
async fn a_reading_sent_after_every_earlier_one_was_acknowledged_is_acknowledged_too() {
    // Between the two the connection has nothing outstanding, so it keeps no channel for
    // settlements: the second reading needs a new one.
    let mut served = connected(&context(10), v4::Connect::new("pi"), 1).await;
    for pkid in [1, 2] {
        served.client.send(&[qos1(pkid)]).await;
        let record = served.pipeline.recv().await.expect("the record");
        record.ack.settle(Settlement::Stored);
        let answer = served.client.next().await;
        assert!(
            matches!(answer, Some(v4::Packet::PubAck(ref ack)) if ack.pkid == pkid),
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn a_resend_with_dup_of_a_reading_not_yet_stored_is_acknowledged_once_with_it() {
    let mut served = connected(&context(10), v4::Connect::new("pi"), 1).await;
    let first_copy = publish(1, QoS4::AtLeastOnce, "first", false);
    served.client.send(&[first_copy]).await;
    let first = served.pipeline.recv().await.expect("the first record");
    let resend = publish(1, QoS4::AtLeastOnce, "first", true);
    let second = publish(2, QoS4::AtLeastOnce, "second", false);
    served.client.send(&[resend, second]).await;
    let next = served.pipeline.recv().await.expect("the next record");
    assert_eq!(
        &next.message.payload[..],
        b"second",
        "the resend went on as a reading"
    );
    first.ack.settle(Settlement::Stored);
    next.ack.settle(Settlement::Stored);
    served.client.send(&[v4::Packet::PingReq]).await;
    let mut seen = Vec::new();
    while !matches!(seen.last(), Some(v4::Packet::PingResp)) {
        seen.push(served.client.next().await.expect("an answer"));
    }
    assert_eq!(acked(&seen), [1, 2], "{seen:?}");
}

#[tokio::test]
async fn a_qos1_publish_settled_out_of_order_is_acked_in_arrival_order() {
    let mut served = connected(&context(10), v4::Connect::new("pi"), 10).await;
    served.client.send(&[qos1(1), qos1(2), qos1(3)]).await;
    let mut records = Vec::new();
    for _ in 0..3 {
        records.push(served.pipeline.recv().await.expect("a record"));
    }
    let [first, second, third] = <[_; 3]>::try_from(records).expect("three records");
    third.ack.settle(Settlement::Stored);
    second.ack.settle(Settlement::Stored);
    // Settled before the PINGREQ is even sent, so handled before it: nothing may go out yet.
    served.client.send(&[v4::Packet::PingReq]).await;
    let answer = served.client.next().await;
    assert!(matches!(answer, Some(v4::Packet::PingResp)), "{answer:?}");

    first.ack.settle(Settlement::Stored);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(served.client.next().await.expect("an ack"));
    }
    assert_eq!(acked(&seen), [1, 2, 3], "{seen:?}");
}

#[tokio::test]
async fn a_duplicate_qos2_publish_is_not_forwarded_twice() {
    let mut served = connected(&context(10), v4::Connect::new("pi"), 10).await;
    let copy = |dup| publish(1, QoS4::ExactlyOnce, "once", dup);
    served.client.send(&[copy(false)]).await;
    let first = served.pipeline.recv().await.expect("the record");
    // Resent before it is durable, then a new publish: only the new one goes on.
    served
        .client
        .send(&[copy(true), publish(2, QoS4::ExactlyOnce, "twice", false)])
        .await;
    let next = served.pipeline.recv().await.expect("the next record");
    assert_eq!(&next.message.payload[..], b"twice");
    first.ack.settle(Settlement::Stored);
    next.ack.settle(Settlement::Stored);
    for pkid in [1, 2] {
        let answer = served.client.next().await;
        assert!(
            matches!(answer, Some(v4::Packet::PubRec(ref rec)) if rec.pkid == pkid),
            "{answer:?}"
        );
    }

    // Resent once more after its PUBREC: answered again, still not a new reading.
    served.client.send(&[copy(true), v4::Packet::PingReq]).await;
    let answer = served.client.next().await;
    assert!(
        matches!(answer, Some(v4::Packet::PubRec(ref rec)) if rec.pkid == 1),
        "{answer:?}"
    );
    let answer = served.client.next().await;
    assert!(matches!(answer, Some(v4::Packet::PingResp)), "{answer:?}");
    assert!(matches!(
        served.pipeline.try_recv(),
        Err(TryRecvError::Empty)
    ));

    served
        .client
        .send(&[v4::Packet::PubRel(v4::PubRel::new(1))])
        .await;
    let answer = served.client.next().await;
    assert!(
        matches!(answer, Some(v4::Packet::PubComp(ref comp)) if comp.pkid == 1),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_publish_to_a_dollar_topic_is_acknowledged_at_once_and_not_forwarded() {
    let mut served = connected(&context(10), v4::Connect::new("pi"), 10).await;
    let mut refused = v4::Publish::new("$SYS/broker/uptime", QoS4::AtLeastOnce, "forged");
    refused.pkid = 1;
    served
        .client
        .send(&[
            v4::Packet::Publish(refused),
            publish(2, QoS4::AtLeastOnce, "real", false),
        ])
        .await;
    let answer = served.client.next().await;
    assert!(
        matches!(answer, Some(v4::Packet::PubAck(ref ack)) if ack.pkid == 1),
        "{answer:?}"
    );
    let record = served.pipeline.recv().await.expect("a record");
    assert_eq!(&record.message.payload[..], b"real");
}

#[tokio::test]
async fn an_mqtt5_client_over_our_receive_maximum_is_disconnected_with_0x93() {
    let mut served = connected5(&context(1), connect5("pi"), 10).await;
    let publish = |pkid| {
        let mut publish =
            v5::Publish::new("sensors/lab/pi/telemetry", QoS5::AtLeastOnce, "{}", None);
        publish.pkid = pkid;
        v5::Packet::Publish(publish)
    };
    served.client.send5(&[publish(1), publish(2)]).await;
    let answer = served.client.next5().await;
    assert!(
        matches!(answer, Some(v5::Packet::Disconnect(ref d))
            if d.reason_code == v5::DisconnectReasonCode::ReceiveMaximumExceeded),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_dead_lettered_publish_is_acked_as_payload_format_invalid_to_an_mqtt5_client() {
    let mut served = connected5(&context(10), connect5("pi"), 10).await;
    let mut publish = v5::Publish::new("sensors/lab/pi/telemetry", QoS5::AtLeastOnce, "nan", None);
    publish.pkid = 1;
    served.client.send5(&[v5::Packet::Publish(publish)]).await;
    let record = served.pipeline.recv().await.expect("the record");
    record.ack.settle(Settlement::DeadLettered);
    let answer = served.client.next5().await;
    assert!(
        matches!(answer, Some(v5::Packet::PubAck(ref ack))
            if ack.pkid == 1 && ack.reason == v5::PubAckReason::PayloadFormatInvalid),
        "{answer:?}"
    );
}
