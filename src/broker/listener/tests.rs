//! Listener tests with real clients: tokio-rustls and tokio-tungstenite in-process, and
//! `openssl s_client` and Node's WebSocket as clients that share no code with us.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use figment::providers::Format;

use super::*;

/// An MQTT 3.1.1 CONNECT (client id "pi-1", keep-alive 60): what a device sends first.
const CONNECT: &[u8] = &[
    0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04, b'p', b'i',
    b'-', b'1',
];
/// CONNACK, session absent, accepted.
const CONNACK: &[u8] = &[0x20, 0x02, 0x00, 0x00];

/// Long enough that a silent client is still mid-handshake for the whole test.
const PATIENT: Duration = Duration::from_secs(3600);
/// Bounds every wait in these tests, so a regression fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(20);

/// A CA, a server certificate it signed for 127.0.0.1 and localhost, client certificates it
/// signed, and one from a CA the listener does not trust; PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        let ca = Self::authority("mqtt2es test ca");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca.pem");
        let pki = Pki { dir, ca };
        let server = pki.leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            &pki.ca,
        );
        pki.write("server", server);
        let other = Self::authority("mqtt2es other ca");
        let foreign = pki.leaf(
            Vec::new(),
            "pi-foreign",
            ExtendedKeyUsagePurpose::ClientAuth,
            &other,
        );
        pki.write("foreign-client", foreign);
        pki
    }

    fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca")
    }

    fn leaf(
        &self,
        names: Vec<String>,
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
        issuer: &CertifiedIssuer<'static, KeyPair>,
    ) -> (String, String) {
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, name: &str, (cert, key): (String, String)) {
        std::fs::write(self.path(&format!("{name}.pem")), cert).expect("write cert");
        std::fs::write(self.path(&format!("{name}.key")), key).expect("write key");
    }

    /// A client certificate with subject CN `cn`, signed by the trusted CA; returns its name.
    fn client(&self, cn: &str) -> String {
        let name = format!("client-{cn}");
        let pair = self.leaf(
            Vec::new(),
            cn,
            ExtendedKeyUsagePurpose::ClientAuth,
            &self.ca,
        );
        self.write(&name, pair);
        name
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn listener(&self, transport: Transport) -> ListenerSettings {
        ListenerSettings {
            transport,
            bind: "127.0.0.1:0".into(),
            cert_file: Some(self.path("server.pem")),
            key_file: Some(self.path("server.key")),
            ..ListenerSettings::default()
        }
    }

    fn requiring_client_certificates(&self, transport: Transport) -> ListenerSettings {
        ListenerSettings {
            client_ca_file: Some(self.path("ca.pem")),
            require_client_certificate: true,
            ..self.listener(transport)
        }
    }

    /// A client trusting our CA, presenting the named client certificate if any.
    fn connector(&self, client: Option<&str>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path("ca.pem")).expect("read ca.pem") {
            roots.add(cert.expect("parse ca.pem")).expect("trust ca");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(self.path(&format!("{name}.pem")))
                    .expect("read client cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("parse client cert");
                let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key")))
                    .expect("read client key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client auth")
            }
        };
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// Listeners running in a task, their connections arriving on `accepted`.
struct Running {
    addrs: Vec<(Transport, SocketAddr)>,
    accepted: mpsc::Receiver<Accepted>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn start(settings: &[ListenerSettings], handshake_timeout: Duration) -> Running {
        let listeners = Listeners::bind(settings).await.expect("bind listeners");
        let addrs = listeners.local_addrs();
        let (sender, accepted) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let task = tokio::spawn(listeners.run(handshake_timeout, sender, stop.clone()));
        Running {
            addrs,
            accepted,
            stop,
            task,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }

    async fn next(&mut self) -> Accepted {
        tokio::time::timeout(DEADLINE, self.accepted.recv())
            .await
            .expect("a connection is accepted in time")
            .expect("listeners still running")
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("run returns after stop")
            .expect("run does not panic");
    }
}

async fn read_exactly(stream: &mut (impl AsyncRead + Unpin), len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut buf))
        .await
        .expect("bytes arrive in time")
        .expect("read");
    buf
}

async fn tls_client(
    pki: &Pki,
    addr: SocketAddr,
    client: Option<&str>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    pki.connector(client).connect(name, tcp).await
}

fn ws_request(addr: SocketAddr, scheme: &str, path: &str, protocol: Option<&str>) -> Request {
    let mut request = format!("{scheme}://localhost:{}{path}", addr.port())
        .into_client_request()
        .expect("websocket request");
    if let Some(protocol) = protocol {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(protocol).expect("header value"),
        );
    }
    request
}

/// Sends CONNECT over the client's side in three binary frames (cut inside the fixed header and
/// inside the payload).
async fn send_connect_in_pieces<S>(client: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for piece in [&CONNECT[..1], &CONNECT[1..9], &CONNECT[9..]] {
        client
            .send(Message::Binary(Bytes::copy_from_slice(piece)))
            .await
            .expect("send a frame");
    }
}

/// Reads binary messages until `len` bytes came (the broker may write in several frames).
async fn receive_binary<S>(
    client: &mut tokio_tungstenite::WebSocketStream<S>,
    len: usize,
) -> Vec<u8>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut received = Vec::new();
    while received.len() < len {
        let message = tokio::time::timeout(DEADLINE, client.next())
            .await
            .expect("a message in time")
            .expect("the stream is open")
            .expect("a valid message");
        match message {
            Message::Binary(bytes) => received.extend_from_slice(&bytes),
            other => panic!("expected binary, got {other:?}"),
        }
    }
    received
}

// ---------------------------------------------------------------- tcp

#[tokio::test]
async fn a_tcp_listener_on_port_0_reports_its_real_port_and_passes_bytes_both_ways() {
    let settings = ListenerSettings {
        bind: "127.0.0.1:0".into(),
        ..ListenerSettings::default()
    };
    let mut running = Running::start(&[settings], PATIENT).await;
    assert_eq!(running.addrs.len(), 1);
    assert_eq!(running.addrs[0].0, Transport::Tcp);
    assert_ne!(running.addr().port(), 0, "port 0 is resolved");

    let mut client = TcpStream::connect(running.addr()).await.expect("connect");
    client.write_all(CONNECT).await.expect("send connect");
    let mut accepted = running.next().await;
    assert_eq!(accepted.transport, Transport::Tcp);
    assert_eq!(accepted.peer, client.local_addr().expect("client addr"));
    assert_eq!(accepted.client_certificate_cn, None);
    assert_eq!(
        read_exactly(&mut accepted.stream, CONNECT.len()).await,
        CONNECT
    );
    accepted
        .stream
        .write_all(CONNACK)
        .await
        .expect("send connack");
    assert_eq!(read_exactly(&mut client, CONNACK.len()).await, CONNACK);
    running.stop().await;
}

#[tokio::test]
async fn several_listeners_report_their_addresses_in_configuration_order() {
    let pki = Pki::new();
    let tcp = ListenerSettings {
        bind: "127.0.0.1:0".into(),
        ..ListenerSettings::default()
    };
    let ws = ListenerSettings {
        transport: Transport::Ws,
        ..tcp.clone()
    };
    let listeners = Listeners::bind(&[tcp, pki.listener(Transport::Tls), ws])
        .await
        .expect("bind");
    let addrs = listeners.local_addrs();
    let transports: Vec<_> = addrs.iter().map(|(t, _)| *t).collect();
    assert_eq!(transports, [Transport::Tcp, Transport::Tls, Transport::Ws]);
    assert!(addrs.iter().all(|(_, a)| a.port() != 0));
    assert_eq!(
        addrs[0].1,
        listeners.bound[0].socket.local_addr().expect("addr")
    );
}

#[tokio::test]
async fn binding_a_taken_port_fails_and_quotes_the_address() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let bind = taken.local_addr().expect("addr").to_string();
    let settings = ListenerSettings {
        bind: bind.clone(),
        ..ListenerSettings::default()
    };
    let Err(error) = Listeners::bind(&[settings]).await else {
        panic!("a taken port must not bind");
    };
    assert!(matches!(error, ListenerError::Bind { .. }));
    assert!(error.to_string().contains(&format!("{bind:?}")), "{error}");
}

#[tokio::test]
async fn stop_ends_run_and_the_channel_closes() {
    let pki = Pki::new();
    let mut running = Running::start(&[pki.listener(Transport::Tls)], PATIENT).await;
    // A silent client mid-handshake must not keep run alive after stop.
    let _silent = TcpStream::connect(running.addr()).await.expect("connect");
    running.stop.cancel();
    tokio::time::timeout(DEADLINE, &mut running.task)
        .await
        .expect("run returns after stop")
        .expect("no panic");
    assert!(running.accepted.recv().await.is_none(), "channel closed");
}

// ---------------------------------------------------------------- tls

#[tokio::test]
async fn a_tls_client_verifying_our_ca_gets_its_bytes_through() {
    let pki = Pki::new();
    let mut running = Running::start(&[pki.listener(Transport::Tls)], PATIENT).await;
    let mut client = tls_client(&pki, running.addr(), None)
        .await
        .expect("tls handshake");
    client.write_all(CONNECT).await.expect("send connect");
    let mut accepted = running.next().await;
    assert_eq!(accepted.transport, Transport::Tls);
    assert_eq!(accepted.client_certificate_cn, None);
    assert_eq!(
        read_exactly(&mut accepted.stream, CONNECT.len()).await,
        CONNECT
    );
    accepted
        .stream
        .write_all(CONNACK)
        .await
        .expect("send connack");
    accepted.stream.flush().await.expect("flush");
    assert_eq!(read_exactly(&mut client, CONNACK.len()).await, CONNACK);
    running.stop().await;
}

#[tokio::test]
async fn a_required_client_certificate_gives_the_broker_its_common_name() {
    let pki = Pki::new();
    let device = pki.client("pi-kitchen");
    let settings = pki.requiring_client_certificates(Transport::Tls);
    let mut running = Running::start(&[settings], PATIENT).await;
    let mut client = tls_client(&pki, running.addr(), Some(&device))
        .await
        .expect("tls handshake");
    client.write_all(CONNECT).await.expect("send connect");
    let mut accepted = running.next().await;
    assert_eq!(
        accepted.client_certificate_cn.as_deref(),
        Some("pi-kitchen")
    );
    assert_eq!(
        read_exactly(&mut accepted.stream, CONNECT.len()).await,
        CONNECT
    );
    running.stop().await;
}

/// With TLS 1.3 the client finishes its side before the server has checked the client's
/// certificate, so the refusal shows as the first read failing or ending.
async fn assert_refused(mut client: tokio_rustls::client::TlsStream<TcpStream>) {
    let _ = client.write_all(CONNECT).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, client.read(&mut buf))
        .await
        .expect("the refusal comes in time");
    assert!(
        matches!(read, Err(_) | Ok(0)),
        "expected a refused handshake, read {read:?}"
    );
}

#[tokio::test]
async fn a_missing_required_client_certificate_is_refused_while_another_client_connects() {
    let pki = Pki::new();
    let device = pki.client("pi-porch");
    let mut running = Running::start(
        &[pki.requiring_client_certificates(Transport::Tls)],
        PATIENT,
    )
    .await;

    // Under TLS 1.2 the handshake itself would fail; under 1.3 the first read does.
    if let Ok(client) = tls_client(&pki, running.addr(), None).await {
        assert_refused(client).await;
    }
    let mut client = tls_client(&pki, running.addr(), Some(&device))
        .await
        .expect("the certified client's handshake");
    client.write_all(CONNECT).await.expect("send connect");
    // The first connection handed over is the certified one: the refused one never is.
    let accepted = running.next().await;
    assert_eq!(accepted.client_certificate_cn.as_deref(), Some("pi-porch"));
    assert_eq!(
        accepted.peer,
        client.get_ref().0.local_addr().expect("addr")
    );
    running.stop().await;
}

#[tokio::test]
async fn optional_client_certificates_admit_a_client_without_one_but_refuse_a_foreign_one() {
    let pki = Pki::new();
    let settings = ListenerSettings {
        require_client_certificate: false,
        ..pki.requiring_client_certificates(Transport::Tls)
    };
    let mut running = Running::start(&[settings], PATIENT).await;

    if let Ok(client) = tls_client(&pki, running.addr(), Some("foreign-client")).await {
        assert_refused(client).await;
    }
    let mut client = tls_client(&pki, running.addr(), None)
        .await
        .expect("handshake without a certificate");
    client.write_all(CONNECT).await.expect("send connect");
    let mut accepted = running.next().await;
    assert_eq!(
        accepted.peer,
        client.get_ref().0.local_addr().expect("addr")
    );
    assert_eq!(accepted.client_certificate_cn, None);
    assert_eq!(
        read_exactly(&mut accepted.stream, CONNECT.len()).await,
        CONNECT
    );
    running.stop().await;
}

// ---------------------------------------------------------------- websocket

#[tokio::test]
async fn a_websocket_connect_split_over_frames_arrives_intact_and_the_reply_comes_back() {
    let settings = ListenerSettings {
        transport: Transport::Ws,
        bind: "127.0.0.1:0".into(),
        ..ListenerSettings::default()
    };
    let mut running = Running::start(&[settings], PATIENT).await;
    let tcp = TcpStream::connect(running.addr()).await.expect("connect");
    let request = ws_request(running.addr(), "ws", "/mqtt", Some("mqtt"));
    let (mut client, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("websocket upgrade");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"mqtt"[..]),
        "the mqtt subprotocol is negotiated"
    );
    send_connect_in_pieces(&mut client).await;

    let mut accepted = running.next().await;
    assert_eq!(accepted.transport, Transport::Ws);
    assert_eq!(
        read_exactly(&mut accepted.stream, CONNECT.len()).await,
        CONNECT
    );
    // Two writes: the client sees the bytes, however they are framed.
    accepted
        .stream
        .write_all(&CONNACK[..1])
        .await
        .expect("write");
    accepted
        .stream
        .write_all(&CONNACK[1..])
        .await
        .expect("write");
    accepted.stream.flush().await.expect("flush");
    assert_eq!(receive_binary(&mut client, CONNACK.len()).await, CONNACK);

    // A close from the client is end of stream for the broker.
    client.close(None).await.expect("close");
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, accepted.stream.read_to_end(&mut rest))
        .await
        .expect("eof in time")
        .expect("clean eof");
    assert!(rest.is_empty());
    running.stop().await;
}

#[tokio::test]
async fn websocket_clients_offering_old_or_no_subprotocols_are_served() {
    let settings = ListenerSettings {
        transport: Transport::Ws,
        bind: "127.0.0.1:0".into(),
        ..ListenerSettings::default()
    };
    let running = Running::start(&[settings], PATIENT).await;
    for (offered, chosen) in [
        (Some("mqttv3.1"), Some(&b"mqttv3.1"[..])),
        (Some("wamp, mqtt"), Some(&b"mqtt"[..])),
        (None, None),
    ] {
        let tcp = TcpStream::connect(running.addr()).await.expect("connect");
        let request = ws_request(running.addr(), "ws", "/mqtt", offered);
        let (_, response) = tokio_tungstenite::client_async(request, tcp)
            .await
            .expect("websocket upgrade");
        let got = response.headers().get("sec-websocket-protocol");
        assert_eq!(got.map(|v| v.as_bytes()), chosen, "offered {offered:?}");
    }
    running.stop().await;
}

#[tokio::test]
async fn a_websocket_upgrade_on_another_path_or_for_another_protocol_is_refused() {
    let settings = ListenerSettings {
        transport: Transport::Ws,
        bind: "127.0.0.1:0".into(),
        path: Some("/devices".into()),
        ..ListenerSettings::default()
    };
    let mut running = Running::start(&[settings], PATIENT).await;
    for (path, protocol) in [("/mqtt", Some("mqtt")), ("/devices", Some("wamp"))] {
        let tcp = TcpStream::connect(running.addr()).await.expect("connect");
        let request = ws_request(running.addr(), "ws", path, protocol);
        let refused = tokio_tungstenite::client_async(request, tcp).await;
        assert!(refused.is_err(), "{path} {protocol:?} must be refused");
    }
    let tcp = TcpStream::connect(running.addr()).await.expect("connect");
    let request = ws_request(running.addr(), "ws", "/devices", Some("mqtt"));
    let (mut client, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("the configured path is served");
    send_connect_in_pieces(&mut client).await;
    let mut accepted = running.next().await;
    assert_eq!(
        read_exactly(&mut accepted.stream, CONNECT.len()).await,
        CONNECT
    );
    running.stop().await;
}

#[tokio::test]
async fn a_text_websocket_message_is_a_read_error() {
    let settings = ListenerSettings {
        transport: Transport::Ws,
        bind: "127.0.0.1:0".into(),
        ..ListenerSettings::default()
    };
    let mut running = Running::start(&[settings], PATIENT).await;
    let tcp = TcpStream::connect(running.addr()).await.expect("connect");
    let request = ws_request(running.addr(), "ws", "/mqtt", Some("mqtt"));
    let (mut client, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("upgrade");
    client.send(Message::text("CONNECT")).await.expect("send");
    let mut accepted = running.next().await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, accepted.stream.read(&mut buf))
        .await
        .expect("read in time");
    let error = read.expect_err("text is not MQTT");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    running.stop().await;
}

#[tokio::test]
async fn a_wss_client_gets_its_bytes_through_with_its_certificate_name() {
    let pki = Pki::new();
    let device = pki.client("pi-garage");
    let mut running = Running::start(
        &[pki.requiring_client_certificates(Transport::Wss)],
        PATIENT,
    )
    .await;
    let tls = tls_client(&pki, running.addr(), Some(&device))
        .await
        .expect("tls handshake");
    let request = ws_request(running.addr(), "wss", "/mqtt", Some("mqtt"));
    let (mut client, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("websocket upgrade over tls");
    send_connect_in_pieces(&mut client).await;
    let mut accepted = running.next().await;
    assert_eq!(accepted.transport, Transport::Wss);
    assert_eq!(accepted.client_certificate_cn.as_deref(), Some("pi-garage"));
    assert_eq!(
        read_exactly(&mut accepted.stream, CONNECT.len()).await,
        CONNECT
    );
    accepted.stream.write_all(CONNACK).await.expect("write");
    accepted.stream.flush().await.expect("flush");
    assert_eq!(receive_binary(&mut client, CONNACK.len()).await, CONNACK);
    running.stop().await;
}

// ---------------------------------------------------------------- silent clients

/// Opens a socket that never says anything, then proves a second client is handed over while
/// the first is still mid-handshake (the timeout is an hour, so nothing else can explain it).
async fn a_silent_client_does_not_hold_up_another(settings: ListenerSettings, pki: &Pki) {
    let transport = settings.transport;
    let mut running = Running::start(&[settings], PATIENT).await;
    let silent = TcpStream::connect(running.addr())
        .await
        .expect("silent connect");
    let tcp = TcpStream::connect(running.addr()).await.expect("connect");
    let second = tcp.local_addr().expect("addr");
    // Each client is kept open until the end, so nothing is handed over because it closed.
    let addr = running.addr();
    let handshake = async move {
        let client: Box<dyn std::any::Any + Send> = match transport {
            Transport::Tcp => Box::new(tcp),
            Transport::Tls => {
                let name = ServerName::try_from("localhost").expect("name");
                Box::new(pki.connector(None).connect(name, tcp).await.expect("tls"))
            }
            Transport::Ws => {
                let request = ws_request(addr, "ws", "/mqtt", Some("mqtt"));
                let (client, _) = tokio_tungstenite::client_async(request, tcp)
                    .await
                    .expect("upgrade");
                Box::new(client)
            }
            Transport::Wss => {
                let name = ServerName::try_from("localhost").expect("name");
                let tls = pki.connector(None).connect(name, tcp).await.expect("tls");
                let request = ws_request(addr, "wss", "/mqtt", Some("mqtt"));
                let (client, _) = tokio_tungstenite::client_async(request, tls)
                    .await
                    .expect("upgrade");
                Box::new(client)
            }
        };
        client
    };
    let _client = tokio::time::timeout(DEADLINE, handshake)
        .await
        .expect("the second client's handshake is not held up by the silent one");
    let mut accepted = running.next().await;
    if transport == Transport::Tcp {
        // Plain TCP has no handshake: the silent socket is handed over at once (the broker's
        // connect timeout deals with it), and the second follows without waiting on it.
        assert_eq!(accepted.peer, silent.local_addr().expect("addr"));
        accepted = running.next().await;
    }
    assert_eq!(accepted.peer, second, "the second client is handed over");
    assert_eq!(accepted.transport, transport);
    drop(silent);
    running.stop().await;
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_another_on_tcp() {
    let pki = Pki::new();
    let settings = ListenerSettings {
        bind: "127.0.0.1:0".into(),
        ..ListenerSettings::default()
    };
    a_silent_client_does_not_hold_up_another(settings, &pki).await;
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_another_on_tls() {
    let pki = Pki::new();
    a_silent_client_does_not_hold_up_another(pki.listener(Transport::Tls), &pki).await;
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_another_on_ws() {
    let pki = Pki::new();
    let settings = ListenerSettings {
        transport: Transport::Ws,
        bind: "127.0.0.1:0".into(),
        ..ListenerSettings::default()
    };
    a_silent_client_does_not_hold_up_another(settings, &pki).await;
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_another_on_wss() {
    let pki = Pki::new();
    a_silent_client_does_not_hold_up_another(pki.listener(Transport::Wss), &pki).await;
}

#[tokio::test]
async fn a_silent_client_is_disconnected_at_the_handshake_timeout() {
    let pki = Pki::new();
    let mut running =
        Running::start(&[pki.listener(Transport::Tls)], Duration::from_millis(200)).await;
    let mut silent = TcpStream::connect(running.addr()).await.expect("connect");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(DEADLINE, silent.read(&mut buf))
        .await
        .expect("the listener gives up on the silent client");
    assert!(matches!(read, Ok(0) | Err(_)), "closed, got {read:?}");
    assert!(running.accepted.try_recv().is_err(), "nothing handed over");
    running.stop().await;
}

// ---------------------------------------------------------------- check

fn check_error(settings: &ListenerSettings) -> (&'static str, String) {
    match settings.check() {
        Err(SettingsError::Key { key, message }) => (key, message),
        other => panic!("expected a key error, got {other:?}"),
    }
}

#[test]
fn valid_tcp_tls_ws_and_wss_listeners_pass_check() {
    let pki = Pki::new();
    ListenerSettings::default().check().expect("default");
    for transport in [Transport::Tls, Transport::Wss] {
        pki.listener(transport).check().expect("tls");
        pki.requiring_client_certificates(transport)
            .check()
            .expect("client certificates");
    }
    let ws = ListenerSettings {
        transport: Transport::Ws,
        bind: "[::]:9001".into(),
        path: Some("/".into()),
        ..ListenerSettings::default()
    };
    ws.check().expect("ws");
}

#[test]
fn a_bind_that_is_not_host_and_port_is_refused() {
    for bind in [
        "1883",
        "localhost",
        ":1883",
        "0.0.0.0:99999",
        "::1:1883",
        "host:port",
    ] {
        let settings = ListenerSettings {
            bind: bind.into(),
            ..ListenerSettings::default()
        };
        let (key, message) = check_error(&settings);
        assert_eq!(key, "broker.listeners.bind");
        assert!(message.contains(&format!("{bind:?}")), "{message}");
    }
}

#[test]
fn a_tls_listener_without_certificate_or_key_is_refused() {
    let pki = Pki::new();
    let no_cert = ListenerSettings {
        cert_file: None,
        ..pki.listener(Transport::Tls)
    };
    assert_eq!(check_error(&no_cert).0, "broker.listeners.cert_file");
    let no_key = ListenerSettings {
        key_file: None,
        ..pki.listener(Transport::Wss)
    };
    let (key, message) = check_error(&no_key);
    assert_eq!(key, "broker.listeners.key_file");
    assert!(
        message.starts_with("listener wss on \"127.0.0.1:0\""),
        "{message}"
    );
}

#[test]
fn unreadable_or_unparsable_tls_files_are_refused_quoting_the_path() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let missing = pki.path("missing.pem");
    let cases = [
        (
            ListenerSettings {
                cert_file: Some(missing.clone()),
                ..pki.listener(Transport::Tls)
            },
            "broker.listeners.cert_file",
            &missing,
        ),
        (
            ListenerSettings {
                cert_file: Some(garbage.clone()),
                ..pki.listener(Transport::Tls)
            },
            "broker.listeners.cert_file",
            &garbage,
        ),
        (
            ListenerSettings {
                key_file: Some(garbage.clone()),
                ..pki.listener(Transport::Tls)
            },
            "broker.listeners.key_file",
            &garbage,
        ),
        (
            ListenerSettings {
                client_ca_file: Some(garbage.clone()),
                ..pki.listener(Transport::Tls)
            },
            "broker.listeners.client_ca_file",
            &garbage,
        ),
    ];
    for (settings, expected_key, path) in cases {
        let (key, message) = check_error(&settings);
        assert_eq!(key, expected_key, "{message}");
        assert!(message.contains(&format!("{path:?}")), "{message}");
    }
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let pki = Pki::new();
    let settings = ListenerSettings {
        key_file: Some(pki.path("foreign-client.key")),
        ..pki.listener(Transport::Tls)
    };
    let (key, message) = check_error(&settings);
    assert_eq!(key, "broker.listeners.key_file");
    assert!(message.contains("foreign-client.key"), "{message}");
}

#[test]
fn tls_settings_on_a_plain_listener_are_refused() {
    let pki = Pki::new();
    for transport in [Transport::Tcp, Transport::Ws] {
        let settings = pki.listener(transport);
        let (key, message) = check_error(&settings);
        assert_eq!(key, "broker.listeners.cert_file");
        assert!(message.contains("never encrypts"), "{message}");
        let settings = ListenerSettings {
            transport,
            require_client_certificate: true,
            ..ListenerSettings::default()
        };
        assert_eq!(
            check_error(&settings).0,
            "broker.listeners.require_client_certificate"
        );
    }
}

#[test]
fn requiring_client_certificates_without_a_ca_is_refused() {
    let pki = Pki::new();
    let settings = ListenerSettings {
        require_client_certificate: true,
        ..pki.listener(Transport::Tls)
    };
    assert_eq!(
        check_error(&settings).0,
        "broker.listeners.require_client_certificate"
    );
}

#[test]
fn a_path_is_only_for_websocket_listeners_and_starts_with_a_slash() {
    let tcp = ListenerSettings {
        path: Some("/mqtt".into()),
        ..ListenerSettings::default()
    };
    assert_eq!(check_error(&tcp).0, "broker.listeners.path");
    let ws = ListenerSettings {
        transport: Transport::Ws,
        path: Some("mqtt".into()),
        ..ListenerSettings::default()
    };
    let (key, message) = check_error(&ws);
    assert_eq!(key, "broker.listeners.path");
    assert!(message.contains("\"mqtt\""), "{message}");
}

#[test]
fn listener_settings_deny_unknown_keys_and_read_every_field() {
    let yaml = "transport: wss\nbind: 127.0.0.1:8884\ncert_file: a.pem\nkey_file: a.key\n\
                client_ca_file: ca.pem\nrequire_client_certificate: true\npath: /ws\n";
    let settings: ListenerSettings = figment::Figment::new()
        .merge(figment::providers::Yaml::string(yaml))
        .extract()
        .expect("parse");
    assert_eq!(settings.transport, Transport::Wss);
    assert!(settings.require_client_certificate);
    assert_eq!(settings.path.as_deref(), Some("/ws"));
    let mut resolved = settings.clone();
    resolved.resolve_paths(&|path: &mut PathBuf| *path = Path::new("/etc/mqtt2es").join(&*path));
    assert_eq!(
        resolved.client_ca_file.as_deref(),
        Some(Path::new("/etc/mqtt2es/ca.pem"))
    );
    let unknown: Result<ListenerSettings, _> = figment::Figment::new()
        .merge(figment::providers::Yaml::string(
            "transport: tls\ncafile: x\n",
        ))
        .extract();
    assert!(unknown.is_err(), "unknown keys are errors");
}

#[tokio::test]
async fn binding_a_tls_listener_with_a_bad_certificate_fails_before_listening() {
    let pki = Pki::new();
    let settings = ListenerSettings {
        cert_file: Some(pki.path("missing.pem")),
        ..pki.listener(Transport::Tls)
    };
    let Err(error) = Listeners::bind(&[settings]).await else {
        panic!("a missing certificate must not bind");
    };
    assert!(
        matches!(
            error,
            ListenerError::Tls {
                key: "broker.listeners.cert_file",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("missing.pem"), "{error}");
}

// ---------------------------------------------------------------- logs and pure parts

#[test]
fn the_first_failed_handshake_is_logged_and_the_rest_are_counted_until_the_report() {
    let peer: SocketAddr = "192.0.2.7:50000".parse().expect("addr");
    let other: SocketAddr = "192.0.2.8:50001".parse().expect("addr");
    let mut failures = Failures::default();
    assert_eq!(failures.take(), None, "nothing to report");
    assert!(failures.record(peer, "tls: no certificate"));
    assert!(!failures.record(other, "timed out"));
    assert!(!failures.record(other, "timed out"));
    assert_eq!(
        failures.take(),
        Some(FailureReport {
            count: 3,
            first_peer: peer,
            first_reason: "tls: no certificate".into(),
        })
    );
    assert_eq!(failures.take(), None, "a report starts a new period");
    assert!(
        failures.record(other, "timed out"),
        "first of the new period"
    );
}

#[test]
fn accept_errors_about_the_listener_back_off_and_per_connection_ones_do_not() {
    let mut backoff = AcceptBackoff::default();
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
    assert_eq!(backoff.failed(&reset), None);
    let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
    let pauses: Vec<_> = (0..12)
        .map(|_| backoff.failed(&emfile).expect("pause"))
        .collect();
    assert_eq!(pauses[0], Duration::from_millis(10));
    assert_eq!(pauses[1], Duration::from_millis(20));
    assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*pauses.last().expect("pause"), ACCEPT_BACKOFF_MAX);
    backoff.succeeded();
    assert_eq!(backoff.failed(&emfile), Some(Duration::from_millis(10)));
}

/// Captures formatted log output for one test (the subscriber is per thread).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn each_listener_logs_one_listening_line_with_its_transport_and_real_address() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let settings = [
        ListenerSettings {
            bind: "127.0.0.1:0".into(),
            ..ListenerSettings::default()
        },
        ListenerSettings {
            transport: Transport::Ws,
            bind: "127.0.0.1:0".into(),
            ..ListenerSettings::default()
        },
    ];
    let listeners = Listeners::bind(&settings).await.expect("bind");
    let logs = String::from_utf8(captured.0.lock().expect("logs").clone()).expect("utf-8");
    let lines: Vec<_> = logs.lines().filter(|l| l.contains("listening")).collect();
    assert_eq!(lines.len(), 2, "{logs}");
    for ((transport, address), line) in listeners.local_addrs().iter().zip(lines) {
        assert!(line.contains(&format!("transport={transport}")), "{line}");
        assert!(line.contains(&format!("address={address}")), "{line}");
    }
}

// ---------------------------------------------------------------- clients that are not ours

fn command_exists(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok()
}

#[tokio::test]
async fn openssl_s_client_verifying_our_ca_with_a_client_certificate_reaches_the_broker() {
    openssl_s_client_reaches_the_broker("-tls1_3").await;
}

/// Many devices (mbedTLS builds, older firmware) still speak only TLS 1.2.
#[tokio::test]
async fn openssl_s_client_limited_to_tls_1_2_reaches_the_broker() {
    openssl_s_client_reaches_the_broker("-tls1_2").await;
}

async fn openssl_s_client_reaches_the_broker(version: &str) {
    assert!(
        command_exists("openssl"),
        "the openssl CLI (Debian: openssl) is needed"
    );
    let pki = Pki::new();
    let device = pki.client("pi-attic");
    let mut running = Running::start(
        &[pki.requiring_client_certificates(Transport::Tls)],
        PATIENT,
    )
    .await;
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            version,
            "-quiet",
            "-verify_return_error",
            "-servername",
            "localhost",
        ])
        .arg("-connect")
        .arg(running.addr().to_string())
        .arg("-CAfile")
        .arg(pki.path("ca.pem"))
        .arg("-verify_hostname")
        .arg("localhost")
        .arg("-cert")
        .arg(pki.path(&format!("{device}.pem")))
        .arg("-key")
        .arg(pki.path(&format!("{device}.key")))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"hello from openssl\n")
        .await
        .expect("write");
    let mut accepted = running.next().await;
    assert_eq!(accepted.client_certificate_cn.as_deref(), Some("pi-attic"));
    let line = b"hello from openssl\n";
    assert_eq!(read_exactly(&mut accepted.stream, line.len()).await, line);
    accepted
        .stream
        .write_all(b"hello from mqtt2es\n")
        .await
        .expect("write");
    accepted.stream.flush().await.expect("flush");
    let mut stdout = child.stdout.take().expect("stdout");
    let reply = read_exactly(&mut stdout, b"hello from mqtt2es\n".len()).await;
    assert_eq!(reply, b"hello from mqtt2es\n");
    drop(stdin);
    let _ = child.kill().await;
    running.stop().await;
}

#[tokio::test]
async fn openssl_s_client_trusting_another_ca_does_not_get_through() {
    assert!(
        command_exists("openssl"),
        "the openssl CLI (Debian: openssl) is needed"
    );
    let pki = Pki::new();
    std::fs::write(pki.path("other-ca.pem"), Pki::authority("unrelated").pem()).expect("write");
    let mut running = Running::start(&[pki.listener(Transport::Tls)], PATIENT).await;
    let output = tokio::process::Command::new("openssl")
        .args(["s_client", "-verify_return_error", "-brief"])
        .arg("-connect")
        .arg(running.addr().to_string())
        .arg("-CAfile")
        .arg(pki.path("other-ca.pem"))
        .stdin(std::process::Stdio::null())
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .expect("openssl ends in time")
        .expect("run openssl");
    assert!(
        !output.status.success(),
        "verification against another CA must fail"
    );
    assert!(running.accepted.try_recv().is_err());
    running.stop().await;
}

/// Node's built-in WebSocket (experimental in Node 20, standard from 22) as a browser-like
/// client: offers `mqtt`, sends CONNECT as one binary message, prints what comes back.
const NODE_WS_CLIENT: &str = r#"
const ws = new WebSocket(process.argv[1], ['mqtt']);
ws.binaryType = 'arraybuffer';
ws.onopen = () => ws.send(new Uint8Array(JSON.parse(process.argv[2])));
ws.onmessage = (event) => {
  console.log(JSON.stringify({protocol: ws.protocol, data: Array.from(new Uint8Array(event.data))}));
  ws.close();
};
ws.onerror = (event) => { console.error('websocket error', event.message); process.exit(2); };
"#;

#[tokio::test]
async fn nodes_websocket_client_negotiates_mqtt_and_exchanges_bytes() {
    assert!(command_exists("node"), "node (Debian: nodejs) is needed");
    let settings = ListenerSettings {
        transport: Transport::Ws,
        bind: "127.0.0.1:0".into(),
        ..ListenerSettings::default()
    };
    let mut running = Running::start(&[settings], PATIENT).await;
    let url = format!("ws://127.0.0.1:{}/mqtt", running.addr().port());
    let bytes = format!("{CONNECT:?}");
    let mut command = tokio::process::Command::new("node");
    // Node 20 needs the flag; later versions accept and ignore it... unless they reject it, so
    // only pass it where WebSocket is not already a global.
    let global = std::process::Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .expect("run node");
    if !global.success() {
        command.arg("--experimental-websocket");
    }
    let child = command
        .args(["-e", NODE_WS_CLIENT, &url, &bytes])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut accepted = running.next().await;
    assert_eq!(
        read_exactly(&mut accepted.stream, CONNECT.len()).await,
        CONNECT
    );
    accepted.stream.write_all(CONNACK).await.expect("write");
    accepted.stream.flush().await.expect("flush");
    // Node closes after the reply and waits for our close frame, which goes out as the broker
    // reads on and meets the end of the stream.
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, accepted.stream.read_to_end(&mut rest))
        .await
        .expect("node closes in time")
        .expect("a clean close");
    assert!(rest.is_empty());
    // As the broker does at end of stream; the server closes TCP after the close handshake.
    drop(accepted);
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("node ends in time")
        .expect("node output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node (20.10 or later, for its WebSocket) failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: serde_json::Value = serde_json::from_str(stdout.trim()).expect("node's json");
    assert_eq!(reply["protocol"], "mqtt");
    assert_eq!(reply["data"], serde_json::json!(CONNACK));
    running.stop().await;
}

#[test]
fn a_config_file_with_tls_files_beside_it_loads_and_a_missing_one_is_named() {
    let pki = Pki::new();
    let yaml = "broker:\n  listeners:\n    - {bind: '127.0.0.1:1883'}\n    - transport: wss\n      \
                bind: '127.0.0.1:8884'\n      cert_file: server.pem\n      key_file: server.key\n      \
                client_ca_file: ca.pem\n";
    let (config, _) =
        crate::config::Config::from_yaml(yaml, pki.dir.path()).expect("relative tls files load");
    let wss = &config.broker.listeners[1];
    assert_eq!(
        wss.cert_file.as_deref(),
        Some(pki.path("server.pem").as_path())
    );
    assert_eq!(
        wss.client_ca_file.as_deref(),
        Some(pki.path("ca.pem").as_path())
    );

    let missing = yaml.replace("server.pem", "gone.pem");
    let error = crate::config::Config::from_yaml(&missing, pki.dir.path())
        .expect_err("a missing certificate is a config error")
        .to_string();
    assert!(
        error.starts_with("broker.listeners.cert_file: listener wss on \"127.0.0.1:8884\""),
        "{error}"
    );
    assert!(
        error.contains(&format!("{:?}", pki.path("gone.pem"))),
        "{error}"
    );
}

async fn next_packet(
    mqtt: &mut tokio_util::codec::Framed<Box<dyn Stream>, rumqttc::mqttbytes::v4::Codec>,
) -> rumqttc::mqttbytes::v4::Packet {
    tokio::time::timeout(DEADLINE, mqtt.next())
        .await
        .expect("a packet in time")
        .expect("the connection is open")
        .expect("a valid packet")
}

/// mosquitto_pub as the device, our listener plus rumqttc's codec as a one-connection broker:
/// the TLS listener serves a real MQTT client that checks our certificate and shows its own.
#[tokio::test]
async fn mosquitto_pub_over_tls_with_a_client_certificate_publishes_at_qos_1() {
    use rumqttc::mqttbytes::v4::{Codec, ConnAck, ConnectReturnCode, Packet, PubAck};
    use tokio_util::codec::Framed;

    assert!(
        command_exists("mosquitto_pub"),
        "mosquitto_pub (Debian: mosquitto-clients) is needed"
    );
    let pki = Pki::new();
    let device = pki.client("pi-shed");
    let mut running = Running::start(
        &[pki.requiring_client_certificates(Transport::Tls)],
        PATIENT,
    )
    .await;
    let child = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-i", "pi-shed", "-q", "1"])
        .args(["-t", "greetings", "-m", "Hello world MQTT"])
        .arg("-p")
        .arg(running.addr().port().to_string())
        .arg("--cafile")
        .arg(pki.path("ca.pem"))
        .arg("--cert")
        .arg(pki.path(&format!("{device}.pem")))
        .arg("--key")
        .arg(pki.path(&format!("{device}.key")))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start mosquitto_pub");

    let accepted = running.next().await;
    assert_eq!(accepted.client_certificate_cn.as_deref(), Some("pi-shed"));
    let codec = Codec {
        max_incoming_size: 1024,
        max_outgoing_size: 1024,
    };
    let mut mqtt = Framed::new(accepted.stream, codec);
    let Packet::Connect(connect) = next_packet(&mut mqtt).await else {
        panic!("CONNECT first");
    };
    assert_eq!(connect.client_id, "pi-shed");
    let connack = ConnAck::new(ConnectReturnCode::Success, false);
    mqtt.send(Packet::ConnAck(connack)).await.expect("connack");
    let Packet::Publish(publish) = next_packet(&mut mqtt).await else {
        panic!("PUBLISH next");
    };
    assert_eq!(publish.topic, "greetings");
    assert_eq!(&publish.payload[..], b"Hello world MQTT");
    mqtt.send(Packet::PubAck(PubAck::new(publish.pkid)))
        .await
        .expect("puback");
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("mosquitto_pub ends in time")
        .expect("mosquitto_pub output");
    assert!(
        output.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    running.stop().await;
}

#[tokio::test]
async fn run_ends_when_the_broker_drops_its_receiver() {
    let pki = Pki::new();
    let ws = ListenerSettings {
        transport: Transport::Ws,
        bind: "127.0.0.1:0".into(),
        ..ListenerSettings::default()
    };
    let listeners = Listeners::bind(&[pki.listener(Transport::Tls), ws])
        .await
        .expect("bind");
    let (sender, receiver) = mpsc::channel(1);
    let run = tokio::spawn(listeners.run(PATIENT, sender, CancellationToken::new()));
    drop(receiver);
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("run ends without a stop")
        .expect("no panic");
}
