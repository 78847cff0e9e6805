//! The connection loop, over an in-memory connection: keep-alive, protocol breaches the loop
//! itself catches, and shutdown.

use std::time::Duration;

use rumqttc::mqttbytes::{QoS as QoS4, v4};
use rumqttc::v5::mqttbytes::v5;
use tokio::time::Instant;

use super::harness::{connect5, connected, connected5, context, qos1};
use crate::record::Settlement;

#[tokio::test(start_paused = true)]
async fn an_mqtt5_client_silent_for_one_and_a_half_keep_alives_is_disconnected_with_0x8d() {
    let mut connect = connect5("pi");
    connect.keep_alive = 2;
    let mut served = connected5(&context(10), connect, 1).await;
    let silent_since = Instant::now();
    let goodbye = served.client.next5().await;
    assert!(
        matches!(goodbye, Some(v5::Packet::Disconnect(ref d))
            if d.reason_code == v5::DisconnectReasonCode::KeepAliveTimeout),
        "{goodbye:?}"
    );
    assert_eq!(silent_since.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_pingreq_within_the_keep_alive_keeps_the_connection() {
    let mut connect = v4::Connect::new("pi");
    connect.keep_alive = 2;
    let mut served = connected(&context(10), connect, 1).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        served.client.send(&[v4::Packet::PingReq]).await;
        let answer = served.client.next().await;
        assert!(matches!(answer, Some(v4::Packet::PingResp)), "{answer:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_not_read_for_longer_than_its_keep_alive_gets_a_fresh_one_when_reading_resumes() {
    let mut connect = v4::Connect::new("pi");
    connect.keep_alive = 1; // we close after 1.5 s of silence
    let mut served = connected(&context(1), connect, 1).await;
    // The second reading is held (max_inflight 1): reading stops, and nothing else is sent,
    // so no packet parsed later restarts the client's time.
    served.client.send(&[qos1(1), qos1(2)]).await;
    let first = served.pipeline.recv().await.expect("the first record");
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.ack.settle(Settlement::Stored);
    let answer = served.client.next().await;
    assert!(
        matches!(answer, Some(v4::Packet::PubAck(ref ack)) if ack.pkid == 1),
        "{answer:?}"
    );
    served.client.send(&[v4::Packet::PingReq]).await;
    let answer = served.client.next().await;
    assert!(matches!(answer, Some(v4::Packet::PingResp)), "{answer:?}");
}

#[tokio::test]
async fn a_second_connect_is_a_protocol_error() {
    let mut served = connected5(&context(10), connect5("pi"), 1).await;
    served
        .client
        .send5(&[v5::Packet::Connect(connect5("pi"), None, None)])
        .await;
    let goodbye = served.client.next5().await;
    assert!(
        matches!(goodbye, Some(v5::Packet::Disconnect(ref d))
            if d.reason_code == v5::DisconnectReasonCode::ProtocolError),
        "{goodbye:?}"
    );
}

#[tokio::test]
async fn a_broker_shutdown_tells_an_mqtt5_client_so() {
    let mut served = connected5(&context(10), connect5("pi"), 1).await;
    served.intake.cancel();
    let goodbye = served.client.next5().await;
    assert!(
        matches!(goodbye, Some(v5::Packet::Disconnect(ref d))
            if d.reason_code == v5::DisconnectReasonCode::ServerShuttingDown),
        "{goodbye:?}"
    );
    served.task.await.expect("the connection ends");
}

#[tokio::test]
async fn a_broker_shutdown_does_not_publish_the_will() {
    let mut connect = v4::Connect::new("pi");
    connect.last_will = Some(v4::LastWill::new(
        "sensors/lab/pi/status",
        "offline",
        QoS4::AtMostOnce,
        false,
    ));
    let mut served = connected(&context(10), connect, 1).await;
    served.intake.cancel();
    assert!(served.client.is_closed().await);
    assert!(served.pipeline.recv().await.is_none(), "a will went out");
}
