//! SUBSCRIBE and UNSUBSCRIBE over in-memory connections sharing one registry.

use rumqttc::mqttbytes::{QoS as QoS4, v4};

use crate::broker::connection::harness::{connected, context, publish};
use crate::record::Settlement;

#[tokio::test]
async fn a_granted_subscription_receives_what_another_client_publishes() {
    let context = context(10);
    let mut subscriber = connected(&context, v4::Connect::new("dashboard"), 1).await;
    let mut subscribe = v4::Subscribe::new("sensors/+/+/telemetry", QoS4::AtLeastOnce);
    subscribe.pkid = 1;
    subscriber
        .client
        .send(&[v4::Packet::Subscribe(subscribe)])
        .await;
    let answer = subscriber.client.next().await;
    assert!(
        matches!(answer, Some(v4::Packet::SubAck(ref ack))
            if ack.return_codes == [v4::SubscribeReasonCode::Success(QoS4::AtLeastOnce)]),
        "{answer:?}"
    );

    let mut publisher = connected(&context, v4::Connect::new("pi"), 1).await;
    publisher
        .client
        .send(&[publish(1, QoS4::AtLeastOnce, "21.5", false)])
        .await;
    let delivered = subscriber.client.next().await;
    let Some(v4::Packet::Publish(delivered)) = delivered else {
        panic!("expected PUBLISH, got {delivered:?}");
    };
    assert_eq!(&delivered.payload[..], b"21.5");
    assert_eq!(delivered.qos, QoS4::AtLeastOnce);
    // Delivered on arrival: the publisher's record is not durable yet.
    let record = publisher.pipeline.recv().await.expect("the record");
    record.ack.settle(Settlement::Stored);
}

#[tokio::test]
async fn a_retained_message_is_sent_to_a_new_subscription() {
    let context = context(10);
    let mut publisher = connected(&context, v4::Connect::new("pi"), 1).await;
    let mut retained = v4::Publish::new("sensors/lab/pi/status", QoS4::AtMostOnce, "online");
    retained.retain = true;
    publisher
        .client
        .send(&[v4::Packet::Publish(retained), v4::Packet::PingReq])
        .await;
    // Answered once the publish before it was handled (and retained).
    assert!(matches!(
        publisher.client.next().await,
        Some(v4::Packet::PingResp)
    ));

    let mut subscriber = connected(&context, v4::Connect::new("dashboard"), 1).await;
    let mut subscribe = v4::Subscribe::new("sensors/#", QoS4::AtMostOnce);
    subscribe.pkid = 1;
    subscriber
        .client
        .send(&[v4::Packet::Subscribe(subscribe)])
        .await;
    assert!(matches!(
        subscriber.client.next().await,
        Some(v4::Packet::SubAck(_))
    ));
    let delivered = subscriber.client.next().await;
    let Some(v4::Packet::Publish(delivered)) = delivered else {
        panic!("expected PUBLISH, got {delivered:?}");
    };
    assert!(delivered.retain);
    assert_eq!(&delivered.payload[..], b"online");
}

#[tokio::test]
async fn a_subscribe_with_an_invalid_filter_closes_the_connection_without_suback() {
    let mut served = connected(&context(10), v4::Connect::new("dashboard"), 1).await;
    let mut subscribe = v4::Subscribe::new("sensors/#/telemetry", QoS4::AtMostOnce);
    subscribe.pkid = 1;
    served
        .client
        .send(&[v4::Packet::Subscribe(subscribe)])
        .await;
    assert!(served.client.is_closed().await);
}

#[tokio::test]
async fn an_unsubscribe_is_answered_and_ends_the_deliveries() {
    let context = context(10);
    let mut subscriber = connected(&context, v4::Connect::new("dashboard"), 1).await;
    let mut subscribe = v4::Subscribe::new("sensors/#", QoS4::AtMostOnce);
    subscribe.pkid = 1;
    subscriber
        .client
        .send(&[v4::Packet::Subscribe(subscribe)])
        .await;
    assert!(matches!(
        subscriber.client.next().await,
        Some(v4::Packet::SubAck(_))
    ));
    let mut unsubscribe = v4::Unsubscribe::new("sensors/#");
    unsubscribe.pkid = 2;
    subscriber
        .client
        .send(&[v4::Packet::Unsubscribe(unsubscribe)])
        .await;
    let answer = subscriber.client.next().await;
    assert!(
        matches!(answer, Some(v4::Packet::UnsubAck(ref ack)) if ack.pkid == 2),
        "{answer:?}"
    );

    let mut publisher = connected(&context, v4::Connect::new("pi"), 1).await;
    publisher
        .client
        .send(&[
            publish(0, QoS4::AtMostOnce, "21.5", false),
            v4::Packet::PingReq,
        ])
        .await;
    assert!(matches!(
        publisher.client.next().await,
        Some(v4::Packet::PingResp)
    ));
    // Fanned out (to no one) before the PINGREQ was answered: nothing may have come.
    subscriber.client.send(&[v4::Packet::PingReq]).await;
    let answer = subscriber.client.next().await;
    assert!(matches!(answer, Some(v4::Packet::PingResp)), "{answer:?}");
}
