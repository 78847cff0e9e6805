//! Listeners: where connections come from. Each configured listener is a bound TCP socket plus
//! the handshake that turns an accepted socket into an MQTT byte stream: none (`tcp`), TLS
//! (`tls`), a WebSocket upgrade (`ws`) or both (`wss`). The broker core receives [`Accepted`]
//! connections on a channel and reads CONNECT next, whatever the transport.
//!
//! The decision a reader would question: every TLS and WebSocket handshake runs in a task of its
//! own, bounded by the handshake timeout, and the accept loop only accepts and spawns. A client
//! that opens a socket and says nothing (no ClientHello, no HTTP upgrade) then costs one idle
//! task until its timeout, and never delays the next client. Plain TCP has no handshake, so its
//! connections go straight to the channel from the accept loop: a full channel (a saturated
//! core) then slows accepting, which is the backpressure we want.
//!
//! - `settings` — a listener's settings and defaults (checked here, beside the TLS loading).
//! - `tls` — certificate, key and client-CA files into a rustls server config; the client CN.
//! - `ws`  — the WebSocket upgrade (path, subprotocol `mqtt`) and a WebSocket as a byte stream.

mod settings;
mod tls;
mod ws;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use settings::{DEFAULT_WEBSOCKET_PATH, ListenerSettings, Transport};

use crate::settings::SettingsError;

impl ListenerSettings {
    /// Checks what serde cannot, and loads the TLS files once to prove they parse (so `check`
    /// fails on a bad certificate, not the first client). Messages name the listener by
    /// transport and address, since the key cannot carry its index.
    pub fn check(&self) -> Result<(), SettingsError> {
        let error = |key: &'static str, message: String| SettingsError::Key {
            key,
            message: format!("listener {} on {:?}: {message}", self.transport, self.bind),
        };
        check_bind(&self.bind).map_err(|message| error("broker.listeners.bind", message))?;
        if !self.transport.uses_tls() {
            let tls_only = [
                ("broker.listeners.cert_file", self.cert_file.is_some()),
                ("broker.listeners.key_file", self.key_file.is_some()),
                (
                    "broker.listeners.client_ca_file",
                    self.client_ca_file.is_some(),
                ),
                (
                    "broker.listeners.require_client_certificate",
                    self.require_client_certificate,
                ),
            ];
            if let Some((key, _)) = tls_only.into_iter().find(|(_, set)| *set) {
                return Err(error(
                    key,
                    format!(
                        "only a tls or wss listener uses it; a {} listener never encrypts",
                        self.transport
                    ),
                ));
            }
        }
        match &self.path {
            Some(_) if !self.transport.uses_websocket() => {
                return Err(error(
                    "broker.listeners.path",
                    format!(
                        "only a ws or wss listener has a path; a {} listener has no HTTP",
                        self.transport
                    ),
                ));
            }
            Some(path) if !path.starts_with('/') => {
                return Err(error(
                    "broker.listeners.path",
                    format!("{path:?} must start with '/'"),
                ));
            }
            _ => {}
        }
        if self.transport.uses_tls() {
            tls::server_config(self).map_err(|failure| error(failure.key, failure.to_string()))?;
        }
        Ok(())
    }
}

fn check_bind(bind: &str) -> Result<(), String> {
    let expected = || format!("{bind:?} is not host:port (e.g. 0.0.0.0:1883 or [::]:1883)");
    let (host, port) = bind.rsplit_once(':').ok_or_else(expected)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(expected());
    }
    // An IPv6 address needs brackets, or its last group would read as the port.
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(expected());
    }
    Ok(())
}

/// Any byte stream a listener produced, after its TLS / WebSocket handshake. Writes may sit in
/// a buffer (a TLS record, a WebSocket frame) until `flush`: flush after each packet or batch.
/// Over WebSocket each write goes out as one binary message, so write whole packets where
/// possible; reads see the bytes whatever the framing.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A connection ready for MQTT: the broker reads CONNECT from `stream` next.
pub struct Accepted {
    pub stream: Box<dyn Stream>,
    pub peer: SocketAddr,
    pub transport: Transport,
    /// The verified client certificate's subject common name, when one was required/sent.
    pub client_certificate_cn: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot listen on {bind:?}: {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
    /// A TLS file missing, unreadable, unparsable, or refused by rustls; `key` names the
    /// setting (`broker.listeners.cert_file`, ...).
    #[error("{key}: {message}")]
    Tls { key: &'static str, message: String },
}

impl From<tls::Failure> for ListenerError {
    fn from(failure: tls::Failure) -> Self {
        ListenerError::Tls {
            key: failure.key,
            message: failure.to_string(),
        }
    }
}

/// Bound sockets, ready to accept.
pub struct Listeners {
    bound: Vec<Bound>,
}

struct Bound {
    transport: Transport,
    socket: TcpListener,
    address: SocketAddr,
    handshake: Handshake,
}

/// What an accepted socket goes through before it is an MQTT byte stream.
#[derive(Clone)]
enum Handshake {
    None,
    Tls(TlsAcceptor),
    Ws { path: Arc<str> },
    Wss { tls: TlsAcceptor, path: Arc<str> },
}

impl Listeners {
    /// Binds every listener (fails fast on a taken port or a bad certificate). Certificates are
    /// read here, once; each listener logs one `listening` line with its real address.
    pub async fn bind(settings: &[ListenerSettings]) -> Result<Listeners, ListenerError> {
        let mut bound = Vec::new();
        for listener in settings {
            let handshake = match listener.transport {
                Transport::Tcp => Handshake::None,
                Transport::Ws => Handshake::Ws {
                    path: listener.websocket_path(),
                },
                Transport::Tls => Handshake::Tls(TlsAcceptor::from(tls::server_config(listener)?)),
                Transport::Wss => Handshake::Wss {
                    tls: TlsAcceptor::from(tls::server_config(listener)?),
                    path: listener.websocket_path(),
                },
            };
            let bind_error = |source| ListenerError::Bind {
                bind: listener.bind.clone(),
                source,
            };
            let socket = TcpListener::bind(&listener.bind)
                .await
                .map_err(bind_error)?;
            let address = socket.local_addr().map_err(bind_error)?;
            tracing::info!(transport = %listener.transport, %address, "listening");
            bound.push(Bound {
                transport: listener.transport,
                socket,
                address,
                handshake,
            });
        }
        Ok(Listeners { bound })
    }

    /// The actual addresses (port 0 resolved), in configuration order.
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.bound
            .iter()
            .map(|bound| (bound.transport, bound.address))
            .collect()
    }

    /// Accepts until `stop`; each handshake runs in its own task bounded by `handshake_timeout`,
    /// so a silent client never holds up the accept loop. Established connections go to
    /// `accepted`; this task drops its sender when it returns, and it returns only once every
    /// handshake task it started has ended, so the receiver then sees the channel closed.
    pub async fn run(
        self,
        handshake_timeout: Duration,
        accepted: mpsc::Sender<Accepted>,
        stop: CancellationToken,
    ) {
        let mut loops = JoinSet::new();
        for bound in self.bound {
            let span = tracing::info_span!("listener", transport = %bound.transport, address = %bound.address);
            let task = bound.run(handshake_timeout, accepted.clone(), stop.clone());
            loops.spawn(task.instrument(span));
        }
        drop(accepted);
        while loops.join_next().await.is_some() {}
    }
}

/// How often an aggregate of failed handshakes is logged (when there were any).
const FAILURE_REPORT_INTERVAL: Duration = Duration::from_secs(60);

impl Bound {
    async fn run(
        self,
        handshake_timeout: Duration,
        accepted: mpsc::Sender<Accepted>,
        stop: CancellationToken,
    ) {
        let failures = Arc::new(Mutex::new(Failures::default()));
        let mut handshakes = JoinSet::new();
        let mut backoff = AcceptBackoff::default();
        let mut report = tokio::time::interval_at(
            tokio::time::Instant::now() + FAILURE_REPORT_INTERVAL,
            FAILURE_REPORT_INTERVAL,
        );
        loop {
            let (socket, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                // The broker is gone: nobody would take another connection.
                _ = accepted.closed() => break,
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
                _ = report.tick() => {
                    report_failures(&failures);
                    continue;
                }
                result = self.socket.accept() => match result {
                    Ok(pair) => pair,
                    Err(error) => {
                        if let Some(pause) = backoff.failed(&error) {
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = tokio::time::sleep(pause) => {}
                            }
                        }
                        continue;
                    }
                },
            };
            backoff.succeeded();
            // MQTT packets are small and latency matters more than segment count.
            let _ = socket.set_nodelay(true);
            let connection = Connection {
                transport: self.transport,
                peer,
            };
            match &self.handshake {
                Handshake::None => {
                    let item = connection.accepted(Box::new(socket), None);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        sent = accepted.send(item) => if sent.is_err() { break },
                    }
                }
                handshake => {
                    let task = connection.handshake(
                        socket,
                        handshake.clone(),
                        handshake_timeout,
                        accepted.clone(),
                        stop.clone(),
                        failures.clone(),
                    );
                    handshakes.spawn(task.in_current_span());
                }
            }
        }
        // Handshakes still under way are abandoned: stop means no new connections.
        handshakes.shutdown().await;
        report_failures(&failures);
    }
}

struct Connection {
    transport: Transport,
    peer: SocketAddr,
}

impl Connection {
    fn accepted(self, stream: Box<dyn Stream>, client_certificate_cn: Option<String>) -> Accepted {
        Accepted {
            stream,
            peer: self.peer,
            transport: self.transport,
            client_certificate_cn,
        }
    }

    async fn handshake(
        self,
        socket: TcpStream,
        handshake: Handshake,
        timeout: Duration,
        accepted: mpsc::Sender<Accepted>,
        stop: CancellationToken,
        failures: Arc<Mutex<Failures>>,
    ) {
        let outcome = tokio::time::timeout(timeout, establish(socket, handshake)).await;
        let (stream, client_certificate_cn) = match outcome {
            Ok(Ok(established)) => established,
            Ok(Err(reason)) => return record_failure(&failures, self.peer, reason),
            Err(_) => {
                let reason = format!("no complete handshake within {} ms", timeout.as_millis());
                return record_failure(&failures, self.peer, reason);
            }
        };
        let item = self.accepted(stream, client_certificate_cn);
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = accepted.send(item) => {}
        }
    }
}

/// Runs the handshake; `Err` is the reason, for the log.
async fn establish(
    socket: TcpStream,
    handshake: Handshake,
) -> Result<(Box<dyn Stream>, Option<String>), String> {
    match handshake {
        Handshake::None => Ok((Box::new(socket), None)),
        Handshake::Tls(acceptor) => {
            let stream = tls_accept(&acceptor, socket).await?;
            let cn = tls::client_certificate_cn(stream.get_ref().1);
            Ok((Box::new(stream), cn))
        }
        Handshake::Ws { path } => Ok((Box::new(ws::accept(socket, &path).await?), None)),
        Handshake::Wss { tls, path } => {
            let stream = tls_accept(&tls, socket).await?;
            let cn = tls::client_certificate_cn(stream.get_ref().1);
            Ok((Box::new(ws::accept(stream, &path).await?), cn))
        }
    }
}

async fn tls_accept(
    acceptor: &TlsAcceptor,
    socket: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    acceptor
        .accept(socket)
        .await
        .map_err(|error| format!("tls: {error}"))
}

fn record_failure(failures: &Mutex<Failures>, peer: SocketAddr, reason: String) {
    let first = failures
        .lock()
        .map(|mut failures| failures.record(peer, &reason))
        .unwrap_or(false);
    if first {
        tracing::info!(%peer, %reason, "handshake failed (further failures are counted until the next report)");
    } else {
        tracing::debug!(%peer, %reason, "handshake failed");
    }
}

fn report_failures(failures: &Mutex<Failures>) {
    let Ok(mut failures) = failures.lock() else {
        return;
    };
    if let Some(report) = failures.take() {
        tracing::info!(
            count = report.count,
            first_peer = %report.first_peer,
            first_reason = %report.first_reason,
            "handshakes failed since the last report"
        );
    }
}

/// Failed handshakes since the last report: the first is logged at info with its reason, the
/// rest only counted (at debug), so a scanner or a misconfigured fleet cannot flood the log.
#[derive(Debug, Default)]
struct Failures {
    count: u64,
    first: Option<(SocketAddr, String)>,
}

#[derive(Debug, PartialEq)]
struct FailureReport {
    count: u64,
    first_peer: SocketAddr,
    first_reason: String,
}

impl Failures {
    /// Counts a failure; true when it is the first since the last report.
    fn record(&mut self, peer: SocketAddr, reason: &str) -> bool {
        self.count += 1;
        if self.first.is_some() {
            return false;
        }
        self.first = Some((peer, reason.to_string()));
        true
    }

    /// The report to log, if anything failed since the last one; starts a new period.
    fn take(&mut self) -> Option<FailureReport> {
        let (first_peer, first_reason) = self.first.take()?;
        let count = std::mem::take(&mut self.count);
        Some(FailureReport {
            count,
            first_peer,
            first_reason,
        })
    }
}

/// Pauses after accept errors that are about the listener, not one connection (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM): retrying at once would spin a core while nothing can succeed.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u64,
}

const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    /// The pause before the next accept, or `None` when the error concerned one connection only.
    fn failed(&mut self, error: &std::io::Error) -> Option<Duration> {
        use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
        if matches!(
            error.kind(),
            ConnectionAborted | ConnectionReset | Interrupted
        ) {
            tracing::debug!(%error, "a connection failed before it was accepted");
            return None;
        }
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(%error, "accept failed; pausing until it succeeds again");
        }
        Some(Self::pause(self.failures))
    }

    fn pause(failures: u64) -> Duration {
        let doublings = failures.saturating_sub(1).min(10) as u32;
        (ACCEPT_BACKOFF_FIRST * 2u32.pow(doublings)).min(ACCEPT_BACKOFF_MAX)
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting again");
            self.failures = 0;
        }
    }
}
