//! `pentrace device` and `pentrace ca`: registering pens with their own
//! credentials (shown once, stored only as fingerprints), rotating and
//! revoking them, gateways, and the CA that signs pen and server
//! certificates.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use pentrace_domain::audit::Actor;
use pentrace_server::credentials::{self, IssueRequest, Issued};
use pentrace_server::pki::{self, CertificateAuthority};
use pentrace_store::{CredentialKind, Device, DeviceCredential};

use crate::serve::{ConfigArgs, config_of, open_store, runtime};

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a pen (or update it) and issue its credential.
    Add(DeviceAdd),
    /// Issue a new credential and revoke the pen's previous ones of that kind.
    Rotate(DeviceRotate),
    /// Revoke a credential at once (open connections are closed).
    Revoke(DeviceRevoke),
    /// Issue a gateway credential: it speaks for every pen of one clinic.
    Gateway(GatewayAdd),
    /// List credentials (never their secrets).
    Credentials(CredentialList),
}

#[derive(Debug, Args)]
pub struct Certificate {
    /// Issue an X.509 client certificate (mTLS) instead of a secret.
    #[arg(long)]
    certificate: bool,
    /// Where the certificate, its key and the CA certificate are written
    /// (`<id>.pem`, `<id>.key`, `ca.pem`).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct DeviceAdd {
    #[command(flatten)]
    common: ConfigArgs,
    /// Device id (1-64 of A-Z a-z 0-9 . _ -).
    #[arg(long)]
    id: String,
    #[arg(long)]
    clinic: String,
    #[arg(long, default_value = "unknown")]
    model: String,
    /// Depth limit in µm (0 = the policy default).
    #[arg(long, default_value_t = 0)]
    max_depth_um: u32,
    #[command(flatten)]
    cert: Certificate,
}

#[derive(Debug, Args)]
pub struct DeviceRotate {
    #[command(flatten)]
    common: ConfigArgs,
    #[arg(long)]
    id: String,
    #[command(flatten)]
    cert: Certificate,
}

#[derive(Debug, Args)]
pub struct DeviceRevoke {
    #[command(flatten)]
    common: ConfigArgs,
    /// The credential id printed when it was issued.
    #[arg(long)]
    credential: uuid::Uuid,
    #[arg(long, default_value = "revoked by the operator")]
    reason: String,
}

#[derive(Debug, Args)]
pub struct GatewayAdd {
    #[command(flatten)]
    common: ConfigArgs,
    /// The gateway's name: its MQTT username and client id.
    #[arg(long)]
    name: String,
    #[arg(long)]
    clinic: String,
    /// Revoke the gateway's previous credentials.
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, Args)]
pub struct CredentialList {
    #[command(flatten)]
    common: ConfigArgs,
    #[arg(long)]
    clinic: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA and a server certificate (default: in `<data dir>/pki`,
    /// where `pentrace serve` looks; never overwrites).
    Init(CaInit),
}

#[derive(Debug, Args)]
pub struct CaInit {
    #[command(flatten)]
    common: ConfigArgs,
    /// Directory for ca.pem, ca.key, server.pem, server.key.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Names the server certificate is valid for (DNS names or IPs; repeat).
    #[arg(long = "server-name", default_values_t = ["127.0.0.1".to_owned(), "localhost".to_owned()])]
    server_names: Vec<String>,
}

/// The operator at the server's console.
fn operator() -> Actor {
    Actor::System
}

fn kind(cert: &Certificate) -> CredentialKind {
    if cert.certificate {
        CredentialKind::PenCertificate
    } else {
        CredentialKind::PenSecret
    }
}

pub fn ca(cmd: CaCommand) -> anyhow::Result<()> {
    let CaCommand::Init(args) = cmd;
    let config = config_of(&args.common)?;
    let paths = match &args.dir {
        Some(dir) => pki::PkiPaths::in_dir(dir),
        None => config.tls.paths(&config.data_dir),
    };
    pki::init(&paths, &args.server_names)?;
    println!(
        "CA {} (key {}), server certificate {} for {}",
        paths.ca_cert.display(),
        paths.ca_key.display(),
        paths.server_cert.display(),
        args.server_names.join(", ")
    );
    Ok(())
}

pub fn device(cmd: DeviceCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match cmd {
            DeviceCommand::Add(args) => {
                let store = open_store(&args.common).await?;
                let device = Device {
                    id: args.id.trim().to_owned(),
                    clinic_id: args.clinic.trim().to_owned(),
                    model: args.model,
                    max_depth_um: args.max_depth_um,
                };
                pentrace_server::device_auth::check_principal(&device.id)
                    .map_err(anyhow::Error::msg)?;
                store.upsert_device(&device, &operator()).await?;
                let request = IssueRequest {
                    kind: kind(&args.cert),
                    principal: device.id.clone(),
                    clinic_id: None,
                    replace: false,
                };
                issue(&args.common, &request, &args.cert.out).await
            }
            DeviceCommand::Rotate(args) => {
                let request = IssueRequest {
                    kind: kind(&args.cert),
                    principal: args.id.trim().to_owned(),
                    clinic_id: None,
                    replace: true,
                };
                issue(&args.common, &request, &args.cert.out).await
            }
            DeviceCommand::Gateway(args) => {
                let request = IssueRequest {
                    kind: CredentialKind::GatewaySecret,
                    principal: args.name.trim().to_owned(),
                    clinic_id: Some(args.clinic.trim().to_owned()),
                    replace: args.replace,
                };
                issue(&args.common, &request, Path::new(".")).await
            }
            DeviceCommand::Revoke(args) => {
                let config = config_of(&args.common)?;
                let store = open_store(&args.common).await?;
                let c = credentials::revoke(
                    store.as_ref(),
                    &config.mqtt,
                    args.credential,
                    args.reason.trim(),
                    &operator(),
                )
                .await?;
                println!("credential {} of {} revoked", c.id, c.principal);
                Ok(())
            }
            DeviceCommand::Credentials(args) => {
                let store = open_store(&args.common).await?;
                let scope = args.clinic.map(|c| vec![c]);
                for c in store.list_device_credentials(scope.as_deref()).await? {
                    println!("{}", line(&c));
                }
                Ok(())
            }
        }
    })
}

fn line(c: &DeviceCredential) -> String {
    let state = match (c.revoked_at, c.not_after) {
        (Some(at), _) => format!("revoked {}", at.format("%Y-%m-%d %H:%M")),
        (None, Some(until)) => format!("valid until {}", until.format("%Y-%m-%d")),
        (None, None) => "valid".to_owned(),
    };
    format!(
        "{}  {:<15}  {:<24}  clinic {:<16}  {state}",
        c.id,
        c.kind.as_str(),
        c.principal,
        c.clinic_id
    )
}

async fn issue(common: &ConfigArgs, request: &IssueRequest, out: &Path) -> anyhow::Result<()> {
    let config = config_of(common)?;
    let store = open_store(common).await?;
    let paths = config.tls.paths(&config.data_dir);
    let ca =
        if request.kind == CredentialKind::PenCertificate {
            Some(CertificateAuthority::load(&paths).with_context(|| {
                "cannot load the CA: create it with `pentrace ca init`".to_owned()
            })?)
        } else {
            None
        };
    let issued = credentials::issue(
        store.as_ref(),
        ca.as_ref(),
        &config.mqtt,
        request,
        &operator(),
    )
    .await?;
    report(&issued, out)
}

/// Prints the credential; the secret goes alone on stdout (for scripts),
/// the rest on stderr.
fn report(issued: &Issued, out: &Path) -> anyhow::Result<()> {
    let c = &issued.credential;
    for r in &issued.revoked {
        eprintln!("revoked credential {} ({})", r.id, r.kind.as_str());
    }
    eprintln!(
        "{} credential {} for {} (clinic {})",
        c.kind.as_str(),
        c.id,
        c.principal,
        c.clinic_id
    );
    if let Some(secret) = &issued.secret {
        eprintln!("the secret is shown once (MQTT password, or gRPC `authorization: Bearer …`):");
        println!("{secret}");
    }
    if let Some(cert) = &issued.certificate {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let cert_path = out.join(format!("{}.pem", c.principal));
        let key_path = out.join(format!("{}.key", c.principal));
        write_private(&key_path, &cert.private_key_pem)?;
        std::fs::write(&cert_path, &cert.certificate_pem)
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
        if let Some(ca) = &issued.ca_certificate_pem {
            std::fs::write(out.join("ca.pem"), ca).context("cannot write ca.pem")?;
        }
        println!("{} {}", cert_path.display(), key_path.display());
    }
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
