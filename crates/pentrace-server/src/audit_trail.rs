//! Checkpoints and verification of the audit chains (docs/architecture.md,
//! "Audit trail").
//!
//! Verification walks each chain page by page, so memory stays bounded by
//! one page whatever the chain's length; it recomputes every hash, checks
//! that the stored head agrees with where the chain ends, and that every
//! signed checkpoint — stored ones and files a compliance officer kept — is
//! still a prefix of its chain.

use std::collections::BTreeSet;
use std::fmt;

use chrono::Utc;
use ed25519_dalek::SigningKey;
use pentrace_domain::audit::{BrokenLink, ChainVerifier};
use pentrace_domain::checkpoint::Checkpoint;
use pentrace_store::{Store, StoreResult};

/// Events read per page while walking a chain.
const PAGE: u32 = 10_000;

/// What verification found for one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub clinic_id: String,
    /// Events verified (the position of the last good event).
    pub verified: u64,
    /// The first broken link: position and reason.
    pub broken: Option<(u64, String)>,
    /// Checkpoints found to hold.
    pub checkpoints_ok: usize,
}

impl ChainReport {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

impl fmt::Display for ChainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.broken {
            None => write!(
                f,
                "chain {}: OK, {} events, {} checkpoint(s) hold",
                self.clinic_id, self.verified, self.checkpoints_ok
            ),
            Some((position, reason)) => {
                write!(
                    f,
                    "chain {}: BROKEN at position {position}: {reason}",
                    self.clinic_id
                )
            }
        }
    }
}

/// Verifies every chain (and every chain a checkpoint names). `trusted` is
/// the public key checkpoints must be signed with, when known; `exported`
/// are checkpoint files kept outside the database.
pub async fn verify(
    store: &dyn Store,
    trusted: Option<&[u8; 32]>,
    exported: &[Checkpoint],
) -> StoreResult<Vec<ChainReport>> {
    let heads = store.audit_heads().await?;
    let stored = store.checkpoints().await?;
    let mut clinics: BTreeSet<String> = heads.iter().map(|h| h.clinic_id.clone()).collect();
    clinics.extend(stored.iter().chain(exported).map(|c| c.clinic_id.clone()));
    let mut reports = Vec::with_capacity(clinics.len());
    for clinic in clinics {
        let head = heads
            .iter()
            .find(|h| h.clinic_id == clinic)
            .map(|h| (h.position, h.hash));
        let checkpoints: Vec<&Checkpoint> = stored
            .iter()
            .chain(exported)
            .filter(|c| c.clinic_id == clinic)
            .collect();
        reports.push(check_chain(store, &clinic, head, &checkpoints, trusted).await?);
    }
    Ok(reports)
}

/// Verifies one chain (a clinic's, or `*`) as [`verify`] does, without
/// walking the others; `None` when the chain has neither a head nor a
/// checkpoint.
pub async fn verify_chain(
    store: &dyn Store,
    clinic: &str,
    trusted: Option<&[u8; 32]>,
) -> StoreResult<Option<ChainReport>> {
    let heads = store.audit_heads().await?;
    let head = heads
        .iter()
        .find(|h| h.clinic_id == clinic)
        .map(|h| (h.position, h.hash));
    let stored = store.checkpoints().await?;
    let checkpoints: Vec<&Checkpoint> = stored.iter().filter(|c| c.clinic_id == clinic).collect();
    if head.is_none() && checkpoints.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        check_chain(store, clinic, head, &checkpoints, trusted).await?,
    ))
}

/// The walk, the head and every checkpoint of one chain, stopping at the
/// first broken link.
async fn check_chain(
    store: &dyn Store,
    clinic: &str,
    head: Option<(u64, [u8; 32])>,
    checkpoints: &[&Checkpoint],
    trusted: Option<&[u8; 32]>,
) -> StoreResult<ChainReport> {
    let mut report = walk(store, clinic).await?;
    if report.ok() {
        check_head(&mut report, head);
    }
    for cp in checkpoints {
        if !report.ok() {
            break;
        }
        check_checkpoint(store, &mut report, cp, trusted).await?;
    }
    Ok(report)
}

/// Recomputes a chain from its first event; stops at the first broken link.
async fn walk(store: &dyn Store, clinic: &str) -> StoreResult<ChainReport> {
    let mut verifier = ChainVerifier::default();
    let mut report = ChainReport {
        clinic_id: clinic.to_owned(),
        verified: 0,
        broken: None,
        checkpoints_ok: 0,
    };
    loop {
        let page = store.audit_page(clinic, verifier.position(), PAGE).await?;
        // A gap right after the last good event ends the page early: the
        // next stored event is checked against the expected position.
        let Some(first) = page.first() else { break };
        if first.event.position != verifier.position() + 1 {
            let broken = BrokenLink::Position {
                expected_previous: verifier.position(),
                found: first.event.position,
            };
            report.broken = Some((first.event.position, broken.to_string()));
            break;
        }
        for stored in &page {
            if let Err(e) = verifier.check(&stored.event, &stored.prev_hash, &stored.hash) {
                report.broken = Some((stored.event.position, e.to_string()));
                report.verified = verifier.position();
                return Ok(report);
            }
        }
        if page.len() < PAGE as usize {
            break;
        }
    }
    report.verified = verifier.position();
    Ok(report)
}

/// The stored head must be where the chain ends: a head further on means
/// events were cut off the end.
fn check_head(report: &mut ChainReport, head: Option<(u64, [u8; 32])>) {
    let Some((position, _)) = head else { return };
    if position != report.verified {
        report.broken = Some((
            report.verified + 1,
            format!(
                "the chain ends at position {} but its head says {position}: events are missing",
                report.verified
            ),
        ));
    }
}

async fn check_checkpoint(
    store: &dyn Store,
    report: &mut ChainReport,
    cp: &Checkpoint,
    trusted: Option<&[u8; 32]>,
) -> StoreResult<()> {
    if let Err(e) = cp.verify(trusted) {
        report.broken = Some((
            cp.position,
            format!(
                "checkpoint at position {} taken {}: {e}",
                cp.position, cp.at
            ),
        ));
        return Ok(());
    }
    if cp.position == 0 {
        report.checkpoints_ok += 1;
        return Ok(());
    }
    match store.audit_hash_at(&cp.clinic_id, cp.position).await? {
        Some(hash) if hash == cp.hash => report.checkpoints_ok += 1,
        Some(_) => {
            report.broken = Some((
                cp.position,
                format!(
                    "the event at position {} differs from the one signed at {}: the chain was rewritten",
                    cp.position, cp.at
                ),
            ));
        }
        None => {
            report.broken = Some((
                report.verified + 1,
                format!(
                    "the chain ends at position {} before the checkpoint's position {} signed at {}: events were cut off",
                    report.verified, cp.position, cp.at
                ),
            ));
        }
    }
    Ok(())
}

/// Signs and stores the head of every chain; returns the new checkpoints.
pub async fn checkpoint_all(store: &dyn Store, key: &SigningKey) -> StoreResult<Vec<Checkpoint>> {
    let at = Utc::now();
    let at = chrono::DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at);
    let mut out = Vec::new();
    for head in store.audit_heads().await? {
        let cp = Checkpoint::sign(key, &head.clinic_id, head.position, head.hash, at);
        store.save_checkpoint(&cp).await?;
        out.push(cp);
    }
    Ok(out)
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("audit key {path}: {problem}")]
pub struct KeyError {
    pub path: String,
    pub problem: String,
}

/// The signing key in a file written by `pentrace audit keygen` (the
/// 32-byte seed as 64 hex digits).
pub fn read_key(path: &std::path::Path) -> Result<SigningKey, KeyError> {
    let err = |problem: String| KeyError {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| err("not a pentrace audit key (64 hex digits)".into()))?;
    Ok(pentrace_domain::checkpoint::signing_key(&seed))
}

/// Takes a checkpoint of every chain every `interval` until `stop`.
pub async fn checkpoint_schedule(
    store: std::sync::Arc<dyn Store>,
    key: SigningKey,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match checkpoint_all(store.as_ref(), &key).await {
            Ok(cps) => tracing::info!(chains = cps.len(), "audit checkpoints taken"),
            Err(e) => tracing::warn!(error = %e, "audit checkpoint failed; will retry"),
        }
    }
}
