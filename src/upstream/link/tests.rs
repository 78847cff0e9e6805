//! A link against a broker played here with rumqttc's codec: what reaches the broker, in what
//! order, on which connection.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{self as m4, v4};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const PATIENCE: Duration = Duration::from_secs(10);

struct Broker {
    stream: TcpStream,
    buf: BytesMut,
}

impl Broker {
    async fn accept(listener: &TcpListener) -> Broker {
        let (stream, _) = timeout(PATIENCE, listener.accept())
            .await
            .expect("the link connects")
            .expect("accept");
        Broker {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// The next packet the link sent; `None` once it closed the connection.
    async fn next(&mut self) -> Option<v4::Packet> {
        loop {
            match v4::Packet::read(&mut self.buf, 1 << 20) {
                Ok(packet) => return Some(packet),
                Err(m4::Error::InsufficientBytes(_)) => {}
                Err(error) => panic!("the link sent a malformed packet: {error:?}"),
            }
            let n = timeout(PATIENCE, self.stream.read_buf(&mut self.buf))
                .await
                .expect("the link sends something")
                .expect("read");
            if n == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, packet: v4::Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, 1 << 20).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    async fn connack(&mut self, session_present: bool) {
        assert!(matches!(self.next().await, Some(v4::Packet::Connect(_))));
        self.send(v4::Packet::ConnAck(v4::ConnAck::new(
            v4::ConnectReturnCode::Success,
            session_present,
        )))
        .await;
    }

    async fn publish(&mut self, pkid: u16) {
        let mut publish = v4::Publish::new(
            "sensors/a/b/telemetry",
            m4::QoS::AtLeastOnce,
            b"{}".to_vec(),
        );
        publish.pkid = pkid;
        self.send(v4::Packet::Publish(publish)).await;
    }
}

async fn start(inbound_capacity: usize) -> (TcpListener, Client, mpsc::Receiver<Inbound>) {
    start_with(inbound_capacity, 30).await
}

async fn start_with(
    inbound_capacity: usize,
    keep_alive_s: u64,
) -> (TcpListener, Client, mpsc::Receiver<Inbound>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let settings = Arc::new(UpstreamSettings {
        host: "127.0.0.1".into(),
        port: listener.local_addr().expect("addr").port(),
        reconnect_initial_ms: 1,
        reconnect_max_ms: 5,
        keep_alive_s,
        ..UpstreamSettings::default()
    });
    let filters: Arc<[String]> = Arc::from(vec!["sensors/#".to_owned()]);
    let (client, link) = open(&settings, 0, None, filters).expect("open");
    let (to_driver, inbound) = mpsc::channel(inbound_capacity);
    tokio::spawn(link.run(to_driver));
    (listener, client, inbound)
}

async fn next_inbound(inbound: &mut mpsc::Receiver<Inbound>) -> Inbound {
    timeout(PATIENCE, inbound.recv())
        .await
        .expect("the link reports")
        .expect("the link is running")
}

async fn connected(inbound: &mut mpsc::Receiver<Inbound>) -> u64 {
    loop {
        match next_inbound(inbound).await {
            Inbound::Connected { epoch, .. } => return epoch,
            Inbound::Disconnected { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

fn key(pkid: u16) -> AckKey {
    AckKey {
        qos: QoS::AtLeastOnce,
        pkid,
    }
}

#[tokio::test]
async fn acks_for_a_connection_that_failed_are_never_sent_on_the_next_one() {
    let (listener, client, mut inbound) = start(16).await;
    let mut first = Broker::accept(&listener).await;
    first.connack(false).await;
    let first_epoch = connected(&mut inbound).await;
    match first.next().await {
        Some(v4::Packet::Subscribe(subscribe)) => {
            assert_eq!(subscribe.filters[0].path, "sensors/#");
            first
                .send(v4::Packet::SubAck(v4::SubAck::new(
                    subscribe.pkid,
                    vec![v4::SubscribeReasonCode::Success(m4::QoS::AtLeastOnce)],
                )))
                .await;
        }
        other => panic!("expected SUBSCRIBE, got {other:?}"),
    }
    first.publish(7).await;
    assert!(matches!(
        next_inbound(&mut inbound).await,
        Inbound::Subscribed {
            granted: 1,
            refused: 0
        }
    ));
    assert!(matches!(
        next_inbound(&mut inbound).await,
        Inbound::Publish {
            key: Some(AckKey { pkid: 7, .. }),
            ..
        }
    ));
    drop(first);

    let mut second = Broker::accept(&listener).await;
    second.connack(true).await;
    let second_epoch = connected(&mut inbound).await;
    assert_ne!(first_epoch, second_epoch);
    client.ack(first_epoch, vec![key(7)]).expect("queued");
    client
        .ack(second_epoch, vec![key(9), key(10)])
        .expect("queued");
    client.disconnect().expect("queued");
    // With the session kept there is no SUBSCRIBE; the stale ack for 7 is not sent at all.
    let mut seen = Vec::new();
    while let Some(packet) = second.next().await {
        seen.push(match packet {
            v4::Packet::PubAck(ack) => format!("puback {}", ack.pkid),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(seen, ["puback 9", "puback 10", "Disconnect"]);
}

#[tokio::test]
async fn acks_go_out_while_the_driver_takes_no_more_publishes() {
    let (listener, client, mut inbound) = start(1).await;
    let mut broker = Broker::accept(&listener).await;
    broker.connack(true).await;
    let epoch = connected(&mut inbound).await;
    assert!(matches!(
        broker.next().await,
        Some(v4::Packet::Subscribe(_))
    ));
    for pkid in 1..=20 {
        broker.publish(pkid).await;
    }
    // The driver's channel holds one publish and nobody takes it: the link has stopped
    // reading the socket, yet the ack the driver sends now must still reach the broker.
    client.ack(epoch, vec![key(1)]).expect("queued");
    match broker.next().await {
        Some(v4::Packet::PubAck(ack)) => assert_eq!(ack.pkid, 1),
        other => panic!("expected PUBACK 1, got {other:?}"),
    }
    drop(inbound);
}

#[tokio::test]
async fn a_broker_that_stops_answering_pings_is_left_and_connected_to_again() {
    let (listener, _client, mut inbound) = start_with(16, 5).await;
    let mut silent = Broker::accept(&listener).await;
    silent.connack(true).await;
    connected(&mut inbound).await;
    assert!(matches!(
        silent.next().await,
        Some(v4::Packet::Subscribe(_))
    ));
    // Keep alive is at least 5 s: the first PINGREQ comes then, and without its PINGRESP the
    // link gives up on the connection one keep alive later.
    assert!(matches!(silent.next().await, Some(v4::Packet::PingReq)));
    match timeout(PATIENCE, inbound.recv()).await {
        Ok(Some(Inbound::Disconnected { error, .. })) => {
            assert!(error.contains("PINGRESP"), "{error}")
        }
        other => panic!("expected the connection to be given up, got {other:?}"),
    }
    let mut second = Broker::accept(&listener).await;
    second.connack(true).await;
    connected(&mut inbound).await;
}
