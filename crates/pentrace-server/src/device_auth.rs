//! PLACEHOLDER until the device authenticator lands on main (issue 13):
//! the announced shape, so the MQTT front end can be built against it.
//! Replaced by main's `device_auth.rs` at the merge.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

/// Authenticates devices by their secret.
#[derive(Debug, Clone, Default)]
pub struct DeviceAuthenticator {
    inner: Arc<Mutex<HashMap<String, DeviceIdentity>>>,
}

/// Who a credential speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceIdentity {
    Pen {
        credential_id: Uuid,
        device_id: String,
        clinic_id: String,
    },
    Gateway {
        credential_id: Uuid,
        name: String,
        clinic_id: String,
    },
}

impl DeviceIdentity {
    /// The device id or gateway name: the MQTT username and client id.
    pub fn principal(&self) -> &str {
        match self {
            DeviceIdentity::Pen { device_id, .. } => device_id,
            DeviceIdentity::Gateway { name, .. } => name,
        }
    }
}

/// Why a device was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthFailure {
    #[error("no credential presented")]
    Missing,
    #[error("unknown credential")]
    Unknown,
    #[error("the credential speaks for {principal:?}, not {claimed:?}")]
    WrongPrincipal { principal: String, claimed: String },
    #[error("{principal:?} may not {action}")]
    Denied { principal: String, action: String },
}

impl AuthFailure {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Unknown => "unknown",
            AuthFailure::WrongPrincipal { .. } => "wrong_principal",
            AuthFailure::Denied { .. } => "denied",
        }
    }
}

/// A live connection of a credential.
#[derive(Debug)]
pub struct ConnectionGuard;

impl DeviceAuthenticator {
    /// Test helper of the placeholder.
    pub fn insert(&self, secret: &str, identity: DeviceIdentity) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(secret.to_owned(), identity);
        }
    }

    pub async fn by_secret(&self, secret: &str) -> Result<DeviceIdentity, AuthFailure> {
        self.inner
            .lock()
            .ok()
            .and_then(|m| m.get(secret).cloned())
            .ok_or(AuthFailure::Unknown)
    }

    pub async fn may_send_for(
        &self,
        identity: &DeviceIdentity,
        device_id: &str,
    ) -> Result<(), AuthFailure> {
        match identity {
            DeviceIdentity::Pen { device_id: own, .. } if own == device_id => Ok(()),
            _ => Err(AuthFailure::Denied {
                principal: identity.principal().to_owned(),
                action: format!("send for {device_id:?}"),
            }),
        }
    }

    pub async fn still_valid(&self, identity: &DeviceIdentity) -> Result<(), AuthFailure> {
        let known = self
            .inner
            .lock()
            .map(|m| m.values().any(|i| i == identity))
            .unwrap_or(false);
        if known {
            Ok(())
        } else {
            Err(AuthFailure::Unknown)
        }
    }

    pub async fn refused(
        &self,
        failure: &AuthFailure,
        transport: &'static str,
        peer: Option<SocketAddr>,
    ) {
        tracing::info!(%failure, transport, ?peer, "device refused");
    }

    pub fn connected(
        &self,
        _identity: &DeviceIdentity,
        _transport: &'static str,
    ) -> ConnectionGuard {
        ConnectionGuard
    }
}
