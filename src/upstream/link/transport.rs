//! The byte stream under a link: TCP, or TLS over it with the CA (and client certificate) of the
//! `upstream.tls` section.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::super::session::SessionError;
use super::super::settings::{TlsSettings, UpstreamSettings};

/// A connected stream, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// How to reach the broker: its address and, with `tls`, how to trust it.
pub struct Transport {
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
}

impl Transport {
    /// Reads and checks the TLS files now, so that a bad one stops the start with its name
    /// rather than failing every connection attempt.
    pub fn new(settings: &UpstreamSettings) -> Result<Transport, SessionError> {
        let tls = settings.tls.as_ref().map(connector).transpose()?;
        Ok(Transport {
            host: settings.host.clone(),
            port: settings.port,
            tls,
        })
    }

    pub async fn connect(&self) -> Result<Box<dyn Stream>, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))?;
        // Acks are small and written in batches already; each batch should leave at once.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| format!("{:?} is not a valid TLS server name: {e}", self.host))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {}:{} failed: {e}", self.host, self.port))?;
        Ok(Box::new(stream))
    }
}

/// How long TCP, TLS and the CONNECT exchange may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn connector(tls: &TlsSettings) -> Result<TlsConnector, SessionError> {
    // rustls only picks a crypto provider by itself when exactly one is compiled in; without
    // this, a dependency that enables a second one turns the first TLS connect into a panic.
    // An `Err` means a provider is installed already, which is all this needs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates("tls.ca_file", &tls.ca_file)? {
        roots
            .add(cert)
            .map_err(|e| SessionError::Tls(format!("tls.ca_file {:?}: {e}", tls.ca_file)))?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("tls.client_cert_file", cert)?;
            let pem = read("tls.client_key_file", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                SessionError::Tls(format!(
                    "tls.client_key_file {key:?} holds no usable PEM private key: {e}"
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| SessionError::Tls(format!("tls client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(SessionError::HalfClientAuth),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, SessionError> {
    std::fs::read(path).map_err(|source| SessionError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certificates(
    what: &'static str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, SessionError> {
    let pem = read(what, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SessionError::Tls(format!("{what} {path:?} is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(SessionError::Tls(format!(
            "{what} {path:?} holds no PEM certificate (BEGIN CERTIFICATE)"
        )));
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_with_ca(path: std::path::PathBuf) -> UpstreamSettings {
        UpstreamSettings {
            tls: Some(TlsSettings {
                ca_file: path,
                client_cert_file: None,
                client_key_file: None,
            }),
            ..UpstreamSettings::default()
        }
    }

    #[test]
    fn a_ca_file_without_a_certificate_stops_the_start_naming_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let error = Transport::new(&settings_with_ca(path))
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("tls.ca_file"), "{error}");
        assert!(error.contains("ca.pem"), "{error}");
        assert!(error.contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn a_missing_ca_file_stops_the_start_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = Transport::new(&settings_with_ca(dir.path().join("absent.pem")))
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("tls.ca_file"), "{error}");
        assert!(error.contains("absent.pem"), "{error}");
    }
}
