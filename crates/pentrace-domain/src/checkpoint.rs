//! Signed checkpoints of audit chains (docs/architecture.md, "Audit trail"):
//! an Ed25519 signature over a chain's head — clinic, position, hash, time.
//! A checkpoint exported to a compliance officer proves later that the chain
//! still has that prefix, even against someone who can rewrite the database.

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::audit::ChainHash;

/// Version of the signed byte layout.
pub const CHECKPOINT_VERSION: u8 = 1;

/// A signed chain head, as stored and as exported (JSON, hex fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u8,
    pub clinic_id: String,
    /// Position of the chain's head event.
    pub position: u64,
    /// Hash of the head event (hex).
    #[serde(with = "hex_bytes")]
    pub hash: ChainHash,
    /// When the checkpoint was taken (server UTC).
    pub at: DateTime<Utc>,
    /// Signer's public key (hex).
    #[serde(with = "hex_bytes")]
    pub public_key: [u8; 32],
    /// Ed25519 signature of [`Checkpoint::signed_bytes`] (hex).
    #[serde(with = "hex_bytes")]
    pub signature: [u8; 64],
}

/// Why a checkpoint does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("unsupported checkpoint version {0}")]
    Version(u8),
    #[error("the public key is not a valid Ed25519 key")]
    PublicKey,
    #[error("the signature does not match the checkpoint's content")]
    Signature,
    #[error("signed by a different key than the one trusted")]
    UntrustedKey,
}

impl Checkpoint {
    /// Signs `(clinic, position, hash, at)`.
    pub fn sign(
        key: &SigningKey,
        clinic_id: &str,
        position: u64,
        hash: ChainHash,
        at: DateTime<Utc>,
    ) -> Checkpoint {
        let mut cp = Checkpoint {
            version: CHECKPOINT_VERSION,
            clinic_id: clinic_id.to_owned(),
            position,
            hash,
            at,
            public_key: key.verifying_key().to_bytes(),
            signature: [0; 64],
        };
        cp.signature = key.sign(&cp.signed_bytes()).to_bytes();
        cp
    }

    /// The bytes the signature covers: a domain tag, then length-prefixed
    /// fields (as in the audit encoding), time at microseconds.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = b"pentrace-checkpoint".to_vec();
        out.push(self.version);
        for field in [
            self.clinic_id.as_bytes(),
            &self.position.to_be_bytes(),
            &self.hash,
            self.at
                .to_rfc3339_opts(SecondsFormat::Micros, true)
                .as_bytes(),
        ] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }

    /// Checks the signature, and that the signer is `trusted` when given.
    pub fn verify(&self, trusted: Option<&[u8; 32]>) -> Result<(), CheckpointError> {
        if self.version != CHECKPOINT_VERSION {
            return Err(CheckpointError::Version(self.version));
        }
        if trusted.is_some_and(|t| *t != self.public_key) {
            return Err(CheckpointError::UntrustedKey);
        }
        let key =
            VerifyingKey::from_bytes(&self.public_key).map_err(|_| CheckpointError::PublicKey)?;
        let signature = Signature::from_bytes(&self.signature);
        key.verify(&self.signed_bytes(), &signature)
            .map_err(|_| CheckpointError::Signature)
    }
}

/// A signing key from its 32-byte seed.
pub fn signing_key(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

/// Fixed-size byte arrays as hex strings in JSON.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom(format!("expected {N} bytes of hex")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::TimeZone;

    use super::*;

    fn checkpoint() -> (SigningKey, Checkpoint) {
        let key = signing_key(&[7; 32]);
        let at = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
        let cp = Checkpoint::sign(&key, "clinic-a", 42, [9; 32], at);
        (key, cp)
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_round_trips_through_json() {
        let (key, cp) = checkpoint();
        assert_eq!(cp.verify(Some(&key.verifying_key().to_bytes())), Ok(()));
        let json = serde_json::to_string(&cp).unwrap();
        let back: Checkpoint = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cp);
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let (_, cp) = checkpoint();
        let mut changed = cp.clone();
        changed.position += 1;
        assert_eq!(changed.verify(None), Err(CheckpointError::Signature));
        let mut changed = cp.clone();
        changed.hash[0] ^= 1;
        assert_eq!(changed.verify(None), Err(CheckpointError::Signature));
        let mut changed = cp;
        changed.clinic_id.push('x');
        assert_eq!(changed.verify(None), Err(CheckpointError::Signature));
    }

    #[test]
    fn another_key_is_not_trusted() {
        let (_, cp) = checkpoint();
        let other = signing_key(&[8; 32]).verifying_key().to_bytes();
        assert_eq!(cp.verify(Some(&other)), Err(CheckpointError::UntrustedKey));
    }
}
