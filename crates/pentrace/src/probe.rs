//! `pentrace probe`: asks a running server's HTTP listener for `/readyz`
//! (or another path) the way the configuration says it serves it — HTTPS,
//! trusting the configured CA, or plain HTTP when `tls.plaintext` — and
//! exits 0 only on a 200. For container health checks: the image has no
//! curl, and bash cannot speak TLS.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::serve::{ConfigArgs, load, runtime};

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// Path to ask for.
    #[arg(long, default_value = "/readyz")]
    path: String,
    /// Name the server's certificate must carry (`pentrace ca init`
    /// includes localhost and 127.0.0.1).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    timeout_s: u64,
}

pub fn run(args: ProbeArgs) -> ExitCode {
    match probe(&args) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{}: HTTP {status}", args.path);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn probe(args: &ProbeArgs) -> anyhow::Result<u16> {
    let config = load(&args.common, Default::default())?;
    // A wildcard listen address is reached on loopback.
    let mut addr = config.http_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let ca = if config.tls.plaintext {
        None
    } else {
        let path = config.tls.paths(&config.data_dir).ca_cert;
        Some(std::fs::read(&path).with_context(|| format!("reading the CA {}", path.display()))?)
    };
    let timeout = Duration::from_secs(args.timeout_s.max(1));
    runtime()?.block_on(async {
        tokio::time::timeout(
            timeout,
            get(addr, ca.as_deref(), &args.server_name, &args.path),
        )
        .await
        .with_context(|| format!("no answer from {addr} within {timeout:?}"))?
    })
}

async fn get(
    addr: SocketAddr,
    ca_pem: Option<&[u8]>,
    server_name: &str,
    path: &str,
) -> anyhow::Result<u16> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let Some(ca_pem) = ca_pem else {
        return exchange(tcp, addr, path).await;
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("the CA file is not PEM")?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_owned())
        .with_context(|| format!("{server_name:?} is not a server name"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .context("TLS handshake (is the certificate from the configured CA, for this name?)")?;
    exchange(tls, addr, path).await
}

/// One HTTP/1.0 request; the status code of the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<u16> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // The status line, however the answer is split into reads (TLS
    // records, TCP segments); at most 1 KiB of it.
    let mut head = Vec::new();
    let mut chunk = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let Some(code) = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()) else {
        bail!("not an HTTP answer: {line:?}");
    };
    Ok(code)
}
