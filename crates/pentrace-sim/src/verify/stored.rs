//! The storage part of the verification: every sample stored exactly
//! once, and every pen's last seq stored.

use std::collections::{BTreeMap, HashMap};

use pentrace_proto::v1 as pb;

use super::Verification;
use crate::api::Api;
use crate::config::SimConfig;
use crate::error::SimError;
use crate::report::{ExpectedSession, SimReport};

/// Most sessions the server returns per request.
const SESSION_PAGE: u32 = 10_000;

/// Samples stored per session, from `Fleet.ListSessions`.
pub(super) async fn check_samples(
    api: &Api,
    report: &SimReport,
    v: &mut Verification,
) -> Result<(), SimError> {
    let mut by_device: BTreeMap<&str, Vec<&ExpectedSession>> = BTreeMap::new();
    for s in &report.expected_sessions {
        by_device.entry(&s.device_id).or_default().push(s);
    }
    for (device, sessions) in by_device {
        let stored = stored_samples(api, device).await?;
        for s in sessions {
            v.sessions_checked += 1;
            v.samples_expected += s.samples;
            match stored.get(&s.session_id) {
                Some(&n) => {
                    v.samples_stored += n;
                    if n != s.samples {
                        v.sample_mismatches.push(format!(
                            "session {} ({device}): {n} samples stored, {} sent",
                            s.session_id, s.samples
                        ));
                    }
                }
                None => v.sample_mismatches.push(format!(
                    "session {} ({device}) is not stored ({} samples sent)",
                    s.session_id, s.samples
                )),
            }
        }
    }
    Ok(())
}

/// Every session of a device with its stored samples (newest first, page
/// by page going back in time).
async fn stored_samples(api: &Api, device: &str) -> Result<HashMap<String, u64>, SimError> {
    let mut fleet = api.fleet();
    let mut out = HashMap::new();
    let mut to = None;
    loop {
        let sessions = fleet
            .list_sessions(pb::ListSessionsRequest {
                device_id: device.to_owned(),
                to,
                limit: SESSION_PAGE,
                ..Default::default()
            })
            .await
            .map_err(|s| SimError::rpc("Fleet.ListSessions", s))?
            .into_inner()
            .sessions;
        let full = sessions.len() >= SESSION_PAGE as usize;
        let oldest = sessions
            .iter()
            .filter_map(|s| s.started_at)
            .min_by_key(|t| (t.seconds, t.nanos));
        let before = out.len();
        for s in sessions {
            out.insert(s.session_id, s.samples);
        }
        // `to` is exclusive: ask again from just after the oldest seen, and
        // stop when a page brings nothing new.
        match oldest {
            Some(t) if full && out.len() > before => {
                to = Some(prost_types::Timestamp {
                    seconds: t.seconds,
                    nanos: t.nanos.saturating_add(1),
                });
            }
            _ => return Ok(out),
        }
    }
}

/// The server's last seq of every pen equals the last one it sent.
pub(super) async fn check_seqs(
    api: &Api,
    config: &SimConfig,
    report: &SimReport,
    v: &mut Verification,
) -> Result<(), SimError> {
    let devices = api
        .fleet()
        .list_devices(pb::ListDevicesRequest {
            clinic_id: config.clinic.clone(),
        })
        .await
        .map_err(|s| SimError::rpc("Fleet.ListDevices", s))?
        .into_inner()
        .devices;
    let stored: HashMap<String, u64> = devices
        .into_iter()
        .filter_map(|d| Some((d.device?.device_id, d.last_seq)))
        .collect();
    for (device, last) in &report.last_seqs {
        let got = stored.get(device).copied().unwrap_or(0);
        if got != *last {
            v.seq_mismatches
                .push(format!("{device}: last stored seq {got}, last sent {last}"));
        }
    }
    Ok(())
}
