//! TLS of the gRPC and HTTP listeners (issue 13): rustls through tonic on
//! gRPC, tokio-rustls on HTTP. Client certificates are optional at the TLS
//! level (people use bearer tokens); when a pen presents one, it must chain
//! to pentrace's CA, and `Telemetry.Ingest` then authenticates the pen by it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pki::{self, CertificateAuthority, PkiError};

/// A TLS handshake slower than this is dropped (a client that connects
/// and sends nothing must not hold a slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
}

/// The PEM material the listeners serve with.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA of the pens' client certificates.
    pub client_ca_pem: Option<String>,
    /// The HTTP listener's rustls configuration, built (and so checked)
    /// at start-up.
    pub http: Arc<rustls::ServerConfig>,
}

/// What `pentrace serve` listens with, and the CA it signs pen
/// certificates with (when its key is at hand).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub tls: Option<ServerTls>,
    pub ca: Option<Arc<CertificateAuthority>>,
}

/// Reads (and with the default paths, creates on first start) what the
/// configuration names.
pub fn resolve(config: &Config) -> Result<Resolved, TlsError> {
    let settings = &config.tls;
    let paths = settings.paths(&config.data_dir);
    if settings.is_default() && !settings.plaintext && !paths.exists() {
        pki::init(&paths, &["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        tracing::info!(dir = %paths.ca_cert.parent().map(|p| p.display().to_string()).unwrap_or_default(),
            "created a CA and a server certificate for 127.0.0.1 and localhost");
    }
    let ca = if paths.ca_cert.exists() && paths.ca_key.exists() {
        Some(Arc::new(CertificateAuthority::load(&paths)?))
    } else {
        None
    };
    if settings.plaintext {
        return Ok(Resolved { tls: None, ca });
    }
    let client_ca_pem = if paths.ca_cert.exists() {
        Some(pki::read(&paths.ca_cert)?)
    } else {
        None
    };
    let (cert_pem, key_pem) = (
        pki::read(&paths.server_cert)?,
        pki::read(&paths.server_key)?,
    );
    // Fail at start-up, not at the first handshake.
    let http = rustls_config(&cert_pem, &key_pem)?;
    let tls = ServerTls {
        cert_pem,
        key_pem,
        client_ca_pem,
        http,
    };
    Ok(Resolved { tls: Some(tls), ca })
}

/// tonic's TLS configuration.
pub fn grpc_config(tls: &ServerTls) -> tonic::transport::ServerTlsConfig {
    let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
    let mut config = tonic::transport::ServerTlsConfig::new()
        .identity(identity)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &tls.client_ca_pem {
        config = config
            .client_ca_root(tonic::transport::Certificate::from_pem(ca))
            .client_auth_optional(true);
    }
    config
}

fn invalid(what: &str, why: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        what: what.to_owned(),
        why: why.to_string(),
    }
}

/// The rustls configuration of the HTTP listener (no client certificates).
fn rustls_config(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("server certificate", e))?;
    if certs.is_empty() {
        return Err(invalid(
            "server certificate",
            "no certificate in the PEM file",
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid("server key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("server certificate and key", e))?;
    Ok(Arc::new(config))
}

/// A TLS listener for axum: handshakes run in their own tasks, so a slow
/// or silent client never holds up the others. Its accept task ends, and
/// frees the port, at `stop`.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        stop: CancellationToken,
    ) -> TlsListener {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop.cancelled() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "http accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, ready) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = ready.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "http tls handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "http tls handshake timed out"),
                    }
                });
            }
        });
        TlsListener { local, ready }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
