//! The will, over in-memory connections: when it goes out, and when it does not. Each served
//! connection has a pipeline of its own, which closes once the connection and any will task
//! holding its sender are gone: `None` from it means no will was published.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::{QoS as QoS4, v4};
use rumqttc::v5::mqttbytes::{QoS as QoS5, v5};
use tokio::time::Instant;

use crate::broker::connection::harness::{Served, connect5, connected, connected5, context};

const STATUS: &str = "sensors/lab/pi/status";

fn with_will(topic: &str) -> v4::Connect {
    let mut connect = v4::Connect::new("pi");
    connect.last_will = Some(v4::LastWill::new(topic, "offline", QoS4::AtMostOnce, false));
    connect
}

/// The client goes away without DISCONNECT.
fn lose(served: Served) -> tokio::sync::mpsc::Receiver<crate::record::Record> {
    let Served {
        client, pipeline, ..
    } = served;
    drop(client);
    pipeline
}

#[tokio::test]
async fn a_will_is_published_when_the_connection_is_lost() {
    let served = connected(&context(10), with_will(STATUS), 1).await;
    let mut pipeline = lose(served);
    let will = pipeline.recv().await.expect("the will");
    assert_eq!(will.message.topic, STATUS);
    assert_eq!(&will.message.payload[..], b"offline");
}

#[tokio::test]
async fn no_will_is_published_after_disconnect() {
    let mut served = connected(&context(10), with_will(STATUS), 1).await;
    served.client.send(&[v4::Packet::Disconnect]).await;
    assert!(served.pipeline.recv().await.is_none(), "a will went out");
}

#[tokio::test]
async fn a_will_to_a_dollar_topic_is_not_published() {
    let served = connected(&context(10), with_will("$SYS/pi"), 1).await;
    let mut pipeline = lose(served);
    assert!(pipeline.recv().await.is_none(), "a will went out");
}

/// An MQTT 5 CONNECT of a persistent session (120 s) with a will delayed by 60 s.
fn delayed_will() -> v5::Packet {
    let mut connect = connect5("pi");
    connect.clean_start = false;
    connect.properties = Some(v5::ConnectProperties {
        session_expiry_interval: Some(120),
        ..v5::ConnectProperties::new()
    });
    let will = v5::LastWill {
        topic: Bytes::from(STATUS),
        message: Bytes::from("offline"),
        qos: QoS5::AtMostOnce,
        retain: false,
        properties: Some(v5::LastWillProperties {
            delay_interval: Some(60),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    };
    v5::Packet::Connect(connect, Some(will), None)
}

/// An MQTT 5 connection with `delayed_will()`, past its CONNACK.
async fn connected_with_delayed_will(context: &std::sync::Arc<super::Context>) -> Served {
    let mut served = crate::broker::connection::harness::serve_from(
        context,
        crate::broker::connection::harness::LOOPBACK,
        1,
    );
    served.client.send5(&[delayed_will()]).await;
    let answer = served.client.next5().await;
    assert!(
        matches!(answer, Some(v5::Packet::ConnAck(ref ack)) if ack.code == v5::ConnectReturnCode::Success),
        "{answer:?}"
    );
    served
}

#[tokio::test(start_paused = true)]
async fn a_delayed_will_is_published_once_its_delay_has_passed() {
    let served = connected_with_delayed_will(&context(10)).await;
    let lost = Instant::now();
    let mut pipeline = lose(served);
    let will = pipeline.recv().await.expect("the will");
    assert_eq!(will.message.topic, STATUS);
    assert_eq!(lost.elapsed(), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_delayed_will_is_not_published_if_the_client_reconnects_within_the_delay() {
    let context = context(10);
    let served = connected_with_delayed_will(&context).await;
    let mut pipeline = lose(served);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut again = connect5("pi");
    again.clean_start = false;
    let _back = connected5(&context, again, 1).await;
    assert!(pipeline.recv().await.is_none(), "the will went out");
}
