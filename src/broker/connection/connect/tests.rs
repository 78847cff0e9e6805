//! From accept to CONNACK, over an in-memory connection: what each kind of CONNECT is answered.

use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::auth::AuthSettings;
use crate::broker::connection::harness::{
    LOOPBACK, anyone, connect5, connected, connected5, context, context_with, limits, qos1,
    serve_from,
};

/// The CONNACK code a 3.1.1 `connect` from `peer` gets; the connection must close after it.
async fn answer(
    context: &std::sync::Arc<super::Context>,
    peer: &str,
    connect: v4::Connect,
) -> v4::ConnectReturnCode {
    let mut served = serve_from(context, peer, 1);
    served.client.send(&[v4::Packet::Connect(connect)]).await;
    let code = match served.client.next().await {
        Some(v4::Packet::ConnAck(ack)) => ack.code,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    assert!(served.client.is_closed().await, "closed after a refusal");
    code
}

#[tokio::test]
async fn a_first_packet_other_than_connect_closes_the_connection_without_an_answer() {
    let mut served = serve_from(&context(10), LOOPBACK, 1);
    served.client.send(&[v4::Packet::PingReq]).await;
    assert!(served.client.is_closed().await);
}

#[tokio::test]
async fn a_connect_with_an_unknown_protocol_level_is_refused_as_unsupported() {
    let mut served = serve_from(&context(10), LOOPBACK, 1);
    // CONNECT, "MQTT" level 6, clean session, keep-alive 60, client id "pi".
    let connect = [
        0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 2, b'p', b'i',
    ];
    served.client.send_bytes(&connect).await;
    let answer = served.client.next().await;
    assert!(
        matches!(answer, Some(v4::Packet::ConnAck(ref ack))
            if ack.code == v4::ConnectReturnCode::RefusedProtocolVersion),
        "{answer:?}"
    );
    assert!(served.client.is_closed().await);
}

#[tokio::test]
async fn an_anonymous_client_from_the_network_is_not_authorized_by_default() {
    let context = context_with(limits(10), &AuthSettings::default());
    let code = answer(&context, "192.0.2.7:50000", v4::Connect::new("pi")).await;
    assert_eq!(code, v4::ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn a_user_name_and_password_without_a_password_file_are_bad_credentials() {
    let mut connect = v4::Connect::new("pi");
    connect.login = Some(v4::Login::new("pi", "secret"));
    let code = answer(&context(10), LOOPBACK, connect).await;
    assert_eq!(code, v4::ConnectReturnCode::BadUserNamePassword);
}

#[tokio::test]
async fn a_connection_over_max_connections_is_told_the_server_is_unavailable() {
    let mut limits = limits(10);
    limits.max_connections = 0;
    let code = answer(
        &context_with(limits, &anyone()),
        LOOPBACK,
        v4::Connect::new("pi"),
    )
    .await;
    assert_eq!(code, v4::ConnectReturnCode::ServiceUnavailable);
}

#[tokio::test]
async fn an_empty_client_id_without_clean_session_is_refused() {
    let mut connect = v4::Connect::new("");
    connect.clean_session = false;
    let code = answer(&context(10), LOOPBACK, connect).await;
    assert_eq!(code, v4::ConnectReturnCode::BadClientId);
}

#[tokio::test]
async fn an_mqtt5_client_asking_for_a_longer_keep_alive_is_told_ours() {
    let mut limits = limits(10);
    limits.max_keepalive_s = Some(30);
    let mut served = serve_from(&context_with(limits, &anyone()), LOOPBACK, 1);
    let connect = connect5("pi"); // keep-alive 60
    served
        .client
        .send5(&[v5::Packet::Connect(connect, None, None)])
        .await;
    let answer = served.client.next5().await;
    let Some(v5::Packet::ConnAck(ack)) = answer else {
        panic!("expected CONNACK, got {answer:?}");
    };
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let told = ack.properties.and_then(|p| p.server_keep_alive);
    assert_eq!(told, Some(30));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_sends_no_connect_is_closed_at_the_connect_timeout() {
    let context = context(10);
    let started = Instant::now();
    let mut served = serve_from(&context, LOOPBACK, 1);
    assert!(served.client.is_closed().await);
    assert_eq!(started.elapsed(), context.limits.connect_timeout);
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
    let context = context(10);
    let mut first = connected5(&context, connect5("pi"), 1).await;
    // Connected once the first has handed the session back (connected5 asserts CONNACK).
    let _second = connected5(&context, connect5("pi"), 1).await;
    let goodbye = first.client.next5().await;
    assert!(
        matches!(goodbye, Some(v5::Packet::Disconnect(ref d))
            if d.reason_code == v5::DisconnectReasonCode::SessionTakenOver),
        "{goodbye:?}"
    );
    assert!(first.client.is_closed().await);
}

#[tokio::test(start_paused = true)]
async fn a_takeover_is_answered_at_once_while_the_previous_connection_holds_readings_for_a_full_pipeline()
 {
    let context = context(10);
    // Room for one record, which nobody takes yet: the next two readings are held.
    let mut first = connected(&context, v4::Connect::new("pi"), 1).await;
    first
        .client
        .send(&[qos1(1), qos1(2), qos1(3), v4::Packet::PingReq])
        .await;
    // Answered once all three were read.
    assert!(matches!(
        first.client.next().await,
        Some(v4::Packet::PingResp)
    ));

    // The first hands the session back before it waits for room for what it held: were it the
    // other way round, CONNACK would wait for the pipeline (here forever; the takeover gives
    // up after 5 s, as long as a client waits for CONNACK by default).
    let started = Instant::now();
    let _second = connected(&context, v4::Connect::new("pi"), 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "CONNACK after {:?}",
        started.elapsed()
    );
    // What it held still goes on, in order, once the pipeline has room.
    for pkid in 1..=3u16 {
        let record = first.pipeline.recv().await.expect("a held record");
        assert_eq!(&record.message.payload[..], b"{}", "reading {pkid}");
    }
}
