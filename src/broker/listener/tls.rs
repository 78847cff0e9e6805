//! TLS for the `tls` and `wss` listeners: PEM files into a rustls server config, and the subject
//! CN of a verified client certificate.
//!
//! The provider is named (`ring`) rather than taken from the process default: rustls cannot pick
//! one when two are compiled in, and the broker must not depend on what else the binary links.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, ServerConnection, WebPkiClientVerifier};

use super::settings::ListenerSettings;

const CERT_FILE: &str = "broker.listeners.cert_file";
const KEY_FILE: &str = "broker.listeners.key_file";
const CLIENT_CA_FILE: &str = "broker.listeners.client_ca_file";
const REQUIRE_CLIENT_CERTIFICATE: &str = "broker.listeners.require_client_certificate";

/// A failed TLS setting, as both `check` and `bind` report it.
pub(super) struct Failure {
    pub key: &'static str,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn failure(key: &'static str, message: String) -> Failure {
    Failure { key, message }
}

/// Reads the listener's certificate chain, key and client CAs into a server config.
pub(super) fn server_config(settings: &ListenerSettings) -> Result<Arc<ServerConfig>, Failure> {
    let missing = |key| failure(key, "a tls or wss listener needs it".into());
    let cert_file = settings
        .cert_file
        .as_deref()
        .ok_or_else(|| missing(CERT_FILE))?;
    let key_file = settings
        .key_file
        .as_deref()
        .ok_or_else(|| missing(KEY_FILE))?;
    let chain = certificates(CERT_FILE, cert_file)?;
    let key = private_key(key_file)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| failure(CERT_FILE, format!("no usable tls version: {error}")))?;
    let builder = match &settings.client_ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(CLIENT_CA_FILE, ca_file)? {
                roots.add(certificate).map_err(|error| {
                    failure(
                        CLIENT_CA_FILE,
                        format!("{ca_file:?} holds an unusable CA certificate: {error}"),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.require_client_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|error| {
                failure(
                    CLIENT_CA_FILE,
                    format!("{ca_file:?} cannot verify clients: {error}"),
                )
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None if settings.require_client_certificate => {
            return Err(failure(
                REQUIRE_CLIENT_CERTIFICATE,
                "needs client_ca_file, the CAs to verify client certificates against".into(),
            ));
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|error| {
        failure(
            KEY_FILE,
            format!("{key_file:?} does not go with the certificate in {cert_file:?}: {error}"),
        )
    })?;
    Ok(Arc::new(config))
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|error| failure(key, format!("cannot read {path:?}: {error}")))
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let pem = read(key, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| failure(key, format!("{path:?} is not valid PEM: {error}")))?;
    if chain.is_empty() {
        return Err(failure(
            key,
            format!("{path:?} holds no PEM certificate (BEGIN CERTIFICATE)"),
        ));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Failure> {
    let pem = read(KEY_FILE, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| {
        failure(
            KEY_FILE,
            format!("{path:?} holds no usable PEM private key: {error}"),
        )
    })
}

/// The subject CN of the client's certificate; rustls has verified the chain before the
/// handshake completes, so a certificate here is one our client CAs signed.
pub(super) fn client_certificate_cn(connection: &ServerConnection) -> Option<String> {
    let leaf = connection.peer_certificates()?.first()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let cn = certificate.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
