//! Raises `DATA_GAP` for seq holes left unfilled for the gap window.

use std::sync::Arc;

use chrono::Utc;
use pentrace_domain::rules::judge_gap;
use pentrace_store::{NewFlag, Store};
use tokio_util::sync::CancellationToken;

use crate::metrics::Label;
use crate::{Feed, IngestConfig};

pub(crate) async fn run(
    store: Arc<dyn Store>,
    config: IngestConfig,
    feed: Feed,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.gap_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = check(store.as_ref(), &config, &feed).await {
            tracing::warn!(error = %e, "data-gap check failed; will retry");
        }
    }
}

async fn check(
    store: &dyn Store,
    config: &IngestConfig,
    feed: &Feed,
) -> Result<(), pentrace_store::StoreError> {
    let now = Utc::now();
    let policy = &config.policy;
    let due = store.due_holes(now - policy.gap_window).await?;
    let flags: Vec<_> = due
        .into_iter()
        .filter_map(|(hole, clinic_id)| {
            let verdict = judge_gap(&hole, now, policy)?;
            let flag = NewFlag {
                kind: verdict.kind,
                severity: verdict.severity,
                dedupe_key: verdict.dedupe_key,
                clinic_id,
                device_id: hole.device_id.clone(),
                session_id: None,
                cartridge_id: None,
                seq: 0,
                detail: verdict.detail,
                evidence: verdict.evidence,
            };
            Some((hole, flag))
        })
        .collect();
    if flags.is_empty() {
        return Ok(());
    }
    for flag in store.flag_holes(&flags).await? {
        feed.metrics
            .flags
            .get_or_create(&Label {
                name: flag.kind.as_str(),
            })
            .inc();
        let _ = feed.flags.send(Arc::new(flag));
    }
    Ok(())
}
