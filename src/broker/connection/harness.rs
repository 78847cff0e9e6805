//! What the phases' tests share: a connection served over an in-memory stream, with the
//! pipeline played by the test (it holds the records channel and settles what it takes, so
//! backpressure is on cue), and a client end that speaks MQTT through rumqttc's codec.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{QoS as QoS4, v4};
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::context::{Context, Limits};
use super::serve;
use super::socket::Outbound;
use crate::broker::auth::{Anonymous, Auth, AuthSettings};
use crate::broker::codec::Version;
use crate::broker::listener::{Accepted, Stream, Transport};
use crate::broker::session::Registry;
use crate::record::Record;

/// A client on this machine (anonymous clients are welcome by default from here).
pub(super) const LOOPBACK: &str = "127.0.0.1:50000";

/// Limits for a test: `max_inflight` as given, the rest generous.
pub(super) fn limits(max_inflight: u16) -> Limits {
    Limits {
        max_packet_bytes: 1 << 20,
        max_connections: 10,
        max_inflight,
        connect_timeout: Duration::from_secs(5),
        max_keepalive_s: None,
    }
}

/// Anonymous clients from anywhere, no ACL.
pub(super) fn anyone() -> AuthSettings {
    AuthSettings {
        allow_anonymous: Some(Anonymous::Anywhere),
        ..AuthSettings::default()
    }
}

pub(super) fn context_with(limits: Limits, auth: &AuthSettings) -> Arc<Context> {
    Arc::new(Context {
        registry: Arc::new(Registry::new()),
        auth: Arc::new(Auth::load(auth).expect("auth")),
        limits,
        live: AtomicUsize::new(0),
    })
}

/// A context with `limits(max_inflight)` that admits anyone.
pub(super) fn context(max_inflight: u16) -> Arc<Context> {
    context_with(limits(max_inflight), &anyone())
}

/// The client's end of a connection: bytes in, packets out.
pub(super) struct Peer {
    stream: DuplexStream,
    buf: BytesMut,
}

impl Peer {
    pub(super) async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    pub(super) async fn send(&mut self, packets: &[v4::Packet]) {
        let mut buf = BytesMut::new();
        for packet in packets {
            packet.write(&mut buf, 1 << 20).expect("encode");
        }
        self.send_bytes(&buf).await;
    }

    pub(super) async fn send5(&mut self, packets: &[v5::Packet]) {
        let mut buf = BytesMut::new();
        for packet in packets {
            packet.write(&mut buf, None).expect("encode");
        }
        self.send_bytes(&buf).await;
    }

    /// Reads more of what the broker sent; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let read =
            tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                .await
                .expect("an answer within 10 s")
                .expect("read");
        read > 0
    }

    /// The next packet (MQTT 3.1.1), `None` once the broker closed the connection.
    pub(super) async fn next(&mut self) -> Option<v4::Packet> {
        loop {
            match v4::Packet::read(&mut self.buf, 1 << 20) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(error) => panic!("undecodable: {error}"),
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next packet (MQTT 5), `None` once the broker closed the connection.
    pub(super) async fn next5(&mut self) -> Option<v5::Packet> {
        loop {
            match v5::Packet::read(&mut self.buf, None) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(error) => panic!("undecodable: {error}"),
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Whether the broker closed the connection without sending anything more.
    pub(super) async fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

/// A served connection: the client's end, the pipeline's end, the broker's intake switch and
/// the connection's task.
pub(super) struct Served {
    pub(super) client: Peer,
    pub(super) pipeline: mpsc::Receiver<Record>,
    pub(super) intake: CancellationToken,
    pub(super) task: JoinHandle<()>,
}

/// Serves a connection from `peer` whose pipeline has room for `room` records.
pub(super) fn serve_from(context: &Arc<Context>, peer: &str, room: usize) -> Served {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (records, pipeline) = mpsc::channel(room);
    let intake = CancellationToken::new();
    let accepted = Accepted {
        stream: Box::new(ours),
        peer: peer.parse::<SocketAddr>().expect("address"),
        transport: Transport::Tcp,
        client_certificate_cn: None,
    };
    let task = tokio::spawn(serve(
        accepted,
        Arc::clone(context),
        records,
        intake.clone(),
    ));
    Served {
        client: Peer {
            stream: theirs,
            buf: BytesMut::new(),
        },
        pipeline,
        intake,
        task,
    }
}

/// A 3.1.1 connection past its CONNACK (accepted), with room for `room` records.
pub(super) async fn connected(context: &Arc<Context>, connect: v4::Connect, room: usize) -> Served {
    let mut served = serve_from(context, LOOPBACK, room);
    served.client.send(&[v4::Packet::Connect(connect)]).await;
    let answer = served.client.next().await;
    assert!(
        matches!(answer, Some(v4::Packet::ConnAck(ref ack)) if ack.code == v4::ConnectReturnCode::Success),
        "{answer:?}"
    );
    served
}

/// An MQTT 5 CONNECT of client `client_id` with a clean start.
pub(super) fn connect5(client_id: &str) -> v5::Connect {
    v5::Connect {
        keep_alive: 60,
        client_id: client_id.into(),
        clean_start: true,
        properties: None,
    }
}

/// An MQTT 5 connection past its CONNACK (accepted), with room for `room` records.
pub(super) async fn connected5(
    context: &Arc<Context>,
    connect: v5::Connect,
    room: usize,
) -> Served {
    let mut served = serve_from(context, LOOPBACK, room);
    served
        .client
        .send5(&[v5::Packet::Connect(connect, None, None)])
        .await;
    let answer = served.client.next5().await;
    assert!(
        matches!(answer, Some(v5::Packet::ConnAck(ref ack)) if ack.code == v5::ConnectReturnCode::Success),
        "{answer:?}"
    );
    served
}

/// A 3.1.1 PUBLISH to the test topic.
pub(super) fn publish(pkid: u16, qos: QoS4, payload: &str, dup: bool) -> v4::Packet {
    let mut publish = v4::Publish::new("sensors/lab/pi/telemetry", qos, payload);
    publish.pkid = pkid;
    publish.dup = dup;
    v4::Packet::Publish(publish)
}

/// A QoS 1 PUBLISH of `{}` under `pkid`.
pub(super) fn qos1(pkid: u16) -> v4::Packet {
    publish(pkid, QoS4::AtLeastOnce, "{}", false)
}

/// The write half of an in-memory stream, for a phase driven directly, and the client's end.
pub(super) fn outbound(version: Version) -> (Outbound, Peer) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (_, writer) = tokio::io::split(Box::new(ours) as Box<dyn Stream>);
    let peer = Peer {
        stream: theirs,
        buf: BytesMut::new(),
    };
    (Outbound::new(writer, version), peer)
}
