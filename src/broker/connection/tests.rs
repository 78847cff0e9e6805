//! One connection served over a real loopback socket, with the pipeline played by the test:
//! it holds the records channel and settles what it takes, so backpressure is on cue.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::broker::auth::{Anonymous, Auth, AuthSettings};
use crate::broker::listener::Transport;
use crate::broker::session::Registry;
use crate::record::Settlement;
use std::sync::atomic::AtomicUsize;

/// A connection task on a loopback socket; the client end, and the pipeline's end.
async fn serve_one(max_inflight: u16) -> (TcpStream, mpsc::Receiver<Record>, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("address"))
        .await
        .expect("connect");
    let (server, peer) = listener.accept().await.expect("accept");
    let context = Arc::new(Context {
        registry: Arc::new(Registry::new()),
        auth: Arc::new(
            Auth::load(&AuthSettings {
                allow_anonymous: Some(Anonymous::Anywhere),
                ..AuthSettings::default()
            })
            .expect("auth"),
        ),
        limits: Limits {
            max_packet_bytes: 1 << 20,
            max_connections: 10,
            max_inflight,
            connect_timeout: Duration::from_secs(5),
            max_keepalive_s: None,
        },
        live: AtomicUsize::new(0),
    });
    // Room for one record: the pipeline is full after the first.
    let (records, pipeline) = mpsc::channel(1);
    let intake = CancellationToken::new();
    let accepted = Accepted {
        stream: Box::new(server),
        peer,
        transport: Transport::Tcp,
        client_certificate_cn: None,
    };
    tokio::spawn(serve(accepted, context, records, intake.clone()));
    (client, pipeline, intake)
}

async fn send(stream: &mut TcpStream, packets: &[Packet]) {
    let mut buf = BytesMut::new();
    for packet in packets {
        packet.write(&mut buf, 1 << 20).expect("encode");
    }
    stream.write_all(&buf).await.expect("send");
}

async fn receive(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        match Packet::read(buf, 1 << 20) {
            Ok(packet) => return Some(packet),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(error) => panic!("undecodable: {error}"),
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(buf))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        if read == 0 {
            return None;
        }
    }
}

/// A connection of client `pi` past its CONNACK; the client end with its read buffer, and the
/// pipeline's end.
async fn connected(
    max_inflight: u16,
    connect: Connect,
) -> (
    TcpStream,
    BytesMut,
    mpsc::Receiver<Record>,
    CancellationToken,
) {
    let (mut client, pipeline, intake) = serve_one(max_inflight).await;
    send(&mut client, &[Packet::Connect(connect)]).await;
    let mut buf = BytesMut::new();
    assert!(matches!(
        receive(&mut client, &mut buf).await,
        Some(Packet::ConnAck(_))
    ));
    (client, buf, pipeline, intake)
}

fn publish(pkid: u16) -> Packet {
    publish_of(pkid, "{}", false)
}

fn publish_of(pkid: u16, payload: &str, dup: bool) -> Packet {
    let mut publish = Publish::new(
        "sensors/lab/pi/telemetry",
        rumqttc::mqttbytes::QoS::AtLeastOnce,
        payload,
    );
    publish.pkid = pkid;
    publish.dup = dup;
    Packet::Publish(publish)
}

#[tokio::test]
async fn a_client_held_back_longer_than_its_keep_alive_is_not_taken_for_silent() {
    let mut connect = Connect::new("pi");
    connect.keep_alive = 1; // we close after 1.5 s of silence
    let (mut client, mut buf, mut pipeline, _intake) = connected(1, connect).await;

    // The first reading goes on; the second waits for it (max_inflight 1), and the PINGREQ
    // sent with it waits, read but not handled, behind it.
    send(&mut client, &[publish(1)]).await;
    let first = pipeline.recv().await.expect("the first record");
    send(&mut client, &[publish(2), Packet::PingReq]).await;
    // Held back for twice the client's keep-alive: the stall under test, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(3)).await;

    first.ack.settle(Settlement::Stored);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match receive(&mut client, &mut buf).await {
            Some(packet) => seen.push(packet),
            None => panic!("closed after {seen:?}"),
        }
    }
    assert!(
        matches!(seen[0], Packet::PubAck(ref ack) if ack.pkid == 1),
        "{seen:?}"
    );
    assert!(matches!(seen[1], Packet::PingResp), "{seen:?}");
    // Still connected: the second reading goes on and is acknowledged.
    let second = pipeline.recv().await.expect("the second record");
    second.ack.settle(Settlement::Stored);
    assert!(
        matches!(receive(&mut client, &mut buf).await, Some(Packet::PubAck(ref ack)) if ack.pkid == 2)
    );
}

#[tokio::test]
async fn a_reading_sent_after_every_earlier_one_was_acknowledged_is_acknowledged_too() {
    // Between the two the connection has nothing outstanding, so it keeps no channel for
    // settlements: the second reading needs a new one.
    let (mut client, mut buf, mut pipeline, _intake) = connected(10, Connect::new("pi")).await;
    for pkid in [1, 2] {
        send(&mut client, &[publish(pkid)]).await;
        let record = pipeline.recv().await.expect("the record");
        record.ack.settle(Settlement::Stored);
        let answer = receive(&mut client, &mut buf).await;
        assert!(
            matches!(answer, Some(Packet::PubAck(ref ack)) if ack.pkid == pkid),
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn a_resend_with_dup_of_a_reading_not_yet_stored_is_acknowledged_once_with_it() {
    let (mut client, mut buf, mut pipeline, _intake) = connected(10, Connect::new("pi")).await;
    send(&mut client, &[publish_of(1, "first", false)]).await;
    let first = pipeline.recv().await.expect("the first record");
    send(
        &mut client,
        &[publish_of(1, "first", true), publish_of(2, "second", false)],
    )
    .await;
    let next = pipeline.recv().await.expect("the next record");
    assert_eq!(
        &next.message.payload[..],
        b"second",
        "the resend went on as a reading"
    );
    first.ack.settle(Settlement::Stored);
    next.ack.settle(Settlement::Stored);
    send(&mut client, &[Packet::PingReq]).await;
    let mut seen = Vec::new();
    while !matches!(seen.last(), Some(Packet::PingResp)) {
        seen.push(receive(&mut client, &mut buf).await.expect("an answer"));
    }
    let acked: Vec<u16> = seen
        .iter()
        .filter_map(|packet| match packet {
            Packet::PubAck(ack) => Some(ack.pkid),
            _ => None,
        })
        .collect();
    assert_eq!(acked, [1, 2], "{seen:?}");
}
