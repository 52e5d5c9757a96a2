//! Issuing device credentials: the one path for `pentrace device …` and the
//! Registry API. The secret or private key exists only in the answer; the
//! store keeps the fingerprint.

use pentrace_domain::audit::Actor;
use pentrace_store::{CredentialKind, DeviceCredential, NewDeviceCredential, Store, StoreError};

use crate::device_auth::{check_principal, fingerprint, new_secret};
use crate::mqtt::MqttSettings;
use crate::mqtt::dynsec::{BrokerAccounts, DynsecError};
use crate::pki::{CertificateAuthority, IssuedCertificate, PkiError};

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub kind: CredentialKind,
    /// Device id (pen kinds) or gateway name.
    pub principal: String,
    /// Gateways: their clinic.
    pub clinic_id: Option<String>,
    /// Rotation: revoke the principal's other credentials of this kind.
    pub replace: bool,
}

/// A credential just issued, with the one copy of its secret part.
#[derive(Debug)]
pub struct Issued {
    pub credential: DeviceCredential,
    pub secret: Option<String>,
    pub certificate: Option<IssuedCertificate>,
    pub ca_certificate_pem: Option<String>,
    pub revoked: Vec<DeviceCredential>,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "no device CA is configured: create one with `pentrace ca init` (or set tls.ca_cert and tls.ca_key)"
    )]
    NoCa,
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the MQTT broker did not take the pen's account ({0}); the credential was revoked again — \
         retry when the broker is reachable"
    )]
    Broker(String),
    #[error(
        "revoked in pentrace, but the MQTT broker still has the pen's account ({0}); run the \
         revocation again when the broker is reachable (it is idempotent)"
    )]
    BrokerRemove(String),
}

/// The managed broker's accounts, if pentrace manages one.
async fn broker(mqtt: &MqttSettings) -> Result<Option<BrokerAccounts>, String> {
    mqtt.broker_accounts().await.map_err(|e| e.to_string())
}

/// Gives the pen's MQTT account its new secret at the broker pentrace
/// manages (Mosquitto's dynamic security, `mqtt.dynsec_admin`), so it can
/// connect at once; nothing to do without one.
async fn provision(mqtt: &MqttSettings, device_id: &str, secret: &str) -> Result<(), String> {
    match broker(mqtt).await? {
        Some(accounts) => accounts
            .set_pen(device_id, secret)
            .await
            .map_err(|e: DynsecError| e.to_string()),
        None => Ok(()),
    }
}

/// Revokes a credential; a pen secret's MQTT account at a managed broker
/// is removed too (its open connection is cut).
pub async fn revoke(
    store: &dyn Store,
    mqtt: &MqttSettings,
    id: uuid::Uuid,
    reason: &str,
    actor: &Actor,
) -> Result<DeviceCredential, IssueError> {
    let revoked = store.revoke_device_credential(id, reason, actor).await?;
    if revoked.kind == CredentialKind::PenSecret {
        // An unreachable broker is an error here, not a skip: the pen
        // could otherwise go on publishing with the revoked secret.
        let removed = match broker(mqtt).await.map_err(IssueError::BrokerRemove)? {
            Some(accounts) => accounts.remove_pen(&revoked.principal).await,
            None => Ok(()),
        };
        removed.map_err(|e| IssueError::BrokerRemove(e.to_string()))?;
    }
    Ok(revoked)
}

pub async fn issue(
    store: &dyn Store,
    ca: Option<&CertificateAuthority>,
    mqtt: &MqttSettings,
    request: &IssueRequest,
    actor: &Actor,
) -> Result<Issued, IssueError> {
    check_principal(&request.principal).map_err(IssueError::Invalid)?;
    let (secret, certificate, ca_pem, fp, not_after) = match request.kind {
        CredentialKind::PenSecret | CredentialKind::GatewaySecret => {
            let secret = new_secret();
            let fp = fingerprint(secret.as_bytes());
            (Some(secret), None, None, fp, None)
        }
        CredentialKind::PenCertificate => {
            let ca = ca.ok_or(IssueError::NoCa)?;
            let cert = ca.device_certificate(&request.principal)?;
            let (fp, not_after) = (cert.fingerprint, cert.not_after);
            let ca_pem = ca.certificate_pem().to_owned();
            (None, Some(cert), Some(ca_pem), fp, Some(not_after))
        }
    };
    // A managed broker holds one password per pen: a new pen secret
    // replaces the old ones there, so it must replace them here too, or
    // the store would call valid a secret the broker no longer takes.
    let managed = mqtt.dynsec_admin.is_some() && request.kind == CredentialKind::PenSecret;
    let new = NewDeviceCredential {
        kind: request.kind,
        principal: request.principal.clone(),
        clinic_id: request.clinic_id.clone(),
        fingerprint: fp,
        not_after,
        replace: request.replace || managed,
    };
    let (credential, revoked) = store.issue_device_credential(&new, actor).await?;
    if let (CredentialKind::PenSecret, Some(secret)) = (request.kind, &secret)
        && let Err(e) = provision(mqtt, &credential.principal, secret).await
    {
        // A credential the broker does not know would fail over MQTT only:
        // take it back rather than leave it half issued.
        store
            .revoke_device_credential(credential.id, "the MQTT broker did not take it", actor)
            .await?;
        return Err(IssueError::Broker(e));
    }
    Ok(Issued {
        credential,
        secret,
        certificate,
        ca_certificate_pem: ca_pem,
        revoked,
    })
}
