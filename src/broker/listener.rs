//! Listeners: where connections come from. STUB (plain TCP only) until the listener work lands;
//! the public interface below is the contract the broker core codes against.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Tcp,
    Tls,
    Ws,
    Wss,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerSettings {
    pub transport: Transport,
    /// `host:port`; port 0 picks a free port (logged, for tests).
    pub bind: String,
    /// For `tls` and `wss`: server certificate chain and key (PEM).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            transport: Transport::Tcp,
            bind: "0.0.0.0:1883".into(),
            cert_file: None,
            key_file: None,
        }
    }
}

impl ListenerSettings {
    pub fn resolve_paths(&mut self, resolve: &dyn Fn(&mut PathBuf)) {
        for file in [&mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            resolve(file);
        }
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Any byte stream a listener produced, after its TLS / WebSocket handshake.
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
}

/// Bound sockets, ready to accept.
pub struct Listeners {
    bound: Vec<(Transport, tokio::net::TcpListener)>,
}

impl Listeners {
    /// Binds every listener (fails fast on a taken port or a bad certificate).
    pub async fn bind(settings: &[ListenerSettings]) -> Result<Listeners, ListenerError> {
        let mut bound = Vec::new();
        for listener in settings {
            let socket = tokio::net::TcpListener::bind(&listener.bind)
                .await
                .map_err(|source| ListenerError::Bind {
                    bind: listener.bind.clone(),
                    source,
                })?;
            bound.push((listener.transport, socket));
        }
        Ok(Listeners { bound })
    }

    /// The actual addresses (port 0 resolved), in configuration order.
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.bound
            .iter()
            .filter_map(|(t, l)| l.local_addr().ok().map(|a| (*t, a)))
            .collect()
    }

    /// Accepts until `stop`; each handshake runs in its own task bounded by `handshake_timeout`,
    /// so a silent client never holds up the accept loop. Established connections go to
    /// `accepted`; this task drops its sender when it returns.
    pub async fn run(
        self,
        handshake_timeout: Duration,
        accepted: mpsc::Sender<Accepted>,
        stop: CancellationToken,
    ) {
        let _ = handshake_timeout;
        let mut tasks = tokio::task::JoinSet::new();
        for (transport, socket) in self.bound {
            let accepted = accepted.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    let (stream, peer) = tokio::select! {
                        _ = stop.cancelled() => return,
                        result = socket.accept() => match result {
                            Ok(pair) => pair,
                            Err(error) => {
                                tracing::warn!(%error, "accept failed");
                                continue;
                            }
                        },
                    };
                    let _ = stream.set_nodelay(true);
                    let item = Accepted {
                        stream: Box::new(stream),
                        peer,
                        transport,
                        client_certificate_cn: None,
                    };
                    if accepted.send(item).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(accepted);
        while tasks.join_next().await.is_some() {}
    }
}
