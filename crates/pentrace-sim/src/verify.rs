//! `--verify`: compares the flags the server raised with the ground truth,
//! as sets of (kind, session), and checks that every sample sent is stored
//! exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use chrono::{DateTime, Utc};
use pentrace_domain::FlagKind;
use pentrace_proto::v1 as pb;

use crate::api::{Api, retrying};
use crate::config::SimConfig;
use crate::error::SimError;
use crate::report::{ExpectedSession, SimReport};
use crate::scenario::TruthRecord;
use crate::wire::timestamp;

/// Mismatches listed per category before "... and N more".
const SHOWN: usize = 5;
/// Most sessions the server returns per request.
const SESSION_PAGE: u32 = 10_000;

/// Expected and found flags of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindRow {
    pub kind: FlagKind,
    pub expected: usize,
    pub found: usize,
    pub missed: usize,
    pub unexpected: usize,
}

impl KindRow {
    /// Share of found flags that were expected (1.0 when none was found).
    pub fn precision(&self) -> f64 {
        if self.found == 0 {
            1.0
        } else {
            (self.found - self.unexpected) as f64 / self.found as f64
        }
    }

    /// Share of expected flags that were found (1.0 when none was expected).
    pub fn recall(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            (self.expected - self.missed) as f64 / self.expected as f64
        }
    }

    fn exact(&self) -> bool {
        self.missed == 0 && self.unexpected == 0
    }
}

/// The result of [`crate::verify`].
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// One row per flag kind.
    pub kinds: Vec<KindRow>,
    /// Expected flags the server did not raise (with the fault behind them).
    pub missed: Vec<String>,
    /// Flags the server raised that no fault explains.
    pub unexpected: Vec<String>,
    /// The same (kind, session) raised more than once.
    pub duplicate_flags: Vec<String>,
    /// Flags of a kind this simulator does not know.
    pub unknown_kinds: Vec<String>,
    pub sessions_checked: usize,
    pub samples_expected: u64,
    pub samples_stored: u64,
    /// Sessions whose stored samples differ from those sent.
    pub sample_mismatches: Vec<String>,
    /// Pens whose last stored seq differs from the last one sent.
    pub seq_mismatches: Vec<String>,
}

impl Verification {
    /// Exact precision and recall for every kind, no flag twice, every
    /// sample stored exactly once.
    pub fn passed(&self) -> bool {
        self.kinds.iter().all(KindRow::exact)
            && self.duplicate_flags.is_empty()
            && self.unknown_kinds.is_empty()
            && self.sample_mismatches.is_empty()
            && self.seq_mismatches.is_empty()
    }
}

/// Compares the server's flags and stored samples with what the run sent.
/// Retries while the server is briefly unreachable (e.g. restarting).
pub async fn verify(config: &SimConfig, report: &SimReport) -> Result<Verification, SimError> {
    retrying(config.ack_timeout, || verify_once(config, report)).await
}

async fn verify_once(config: &SimConfig, report: &SimReport) -> Result<Verification, SimError> {
    let api = Api::connect(config).await?;
    let flags = list_flags(&api, &config.clinic, report.started_at).await?;
    let mut verification = compare_flags(&report.truth, &flags);
    check_samples(&api, report, &mut verification).await?;
    check_seqs(&api, config, report, &mut verification).await?;
    Ok(verification)
}

/// Every flag of the clinic raised since `from`, page by page.
async fn list_flags(
    api: &Api,
    clinic: &str,
    from: DateTime<Utc>,
) -> Result<Vec<pb::Flag>, SimError> {
    let mut client = api.compliance();
    let mut flags = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_flags(pb::ListFlagsRequest {
                clinic_id: clinic.to_owned(),
                from: Some(timestamp(from)),
                limit: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| SimError::rpc("Compliance.ListFlags", s))?
            .into_inner();
        flags.extend(page.flags);
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            return Ok(flags);
        }
        page_token = page.next_page_token;
    }
}

/// The domain kind of a wire flag kind.
fn flag_kind(kind: i32) -> Option<FlagKind> {
    let name = pb::FlagKind::try_from(kind).ok()?.as_str_name();
    FlagKind::parse(name.strip_prefix("FLAG_KIND_")?)
}

type Key = (FlagKind, String);

/// Compares as sets of (kind, session id).
pub(crate) fn compare_flags(truth: &[TruthRecord], flags: &[pb::Flag]) -> Verification {
    let mut expected: BTreeMap<Key, &TruthRecord> = BTreeMap::new();
    for t in truth {
        for kind in &t.expected_flags {
            let session = t.session_id.clone().unwrap_or_default();
            expected.entry((*kind, session)).or_insert(t);
        }
    }
    let mut found: BTreeMap<Key, &pb::Flag> = BTreeMap::new();
    let mut v = Verification::default();
    for f in flags {
        let Some(kind) = flag_kind(f.kind) else {
            v.unknown_kinds.push(format!(
                "flag {} of unknown kind {}: {}",
                f.flag_id, f.kind, f.detail
            ));
            continue;
        };
        if found.insert((kind, f.session_id.clone()), f).is_some() {
            v.duplicate_flags.push(describe_flag(kind, f));
        }
    }
    for kind in FlagKind::ALL {
        let e: BTreeSet<&Key> = expected.keys().filter(|k| k.0 == kind).collect();
        let g: BTreeSet<&Key> = found.keys().filter(|k| k.0 == kind).collect();
        let missed: Vec<&&Key> = e.difference(&g).collect();
        let unexpected: Vec<&&Key> = g.difference(&e).collect();
        v.missed.extend(
            missed
                .iter()
                .filter_map(|k| expected.get(**k))
                .map(|t| describe_truth(kind, t)),
        );
        v.unexpected.extend(
            unexpected
                .iter()
                .filter_map(|k| found.get(**k))
                .map(|f| describe_flag(kind, f)),
        );
        v.kinds.push(KindRow {
            kind,
            expected: e.len(),
            found: g.len(),
            missed: missed.len(),
            unexpected: unexpected.len(),
        });
    }
    v
}

fn describe_truth(kind: FlagKind, t: &TruthRecord) -> String {
    format!(
        "{} on session {} ({}, seq {}): injected {}: {}",
        kind.as_str(),
        t.session_id.as_deref().unwrap_or("-"),
        t.device_id,
        t.seq,
        t.fault,
        t.detail
    )
}

fn describe_flag(kind: FlagKind, f: &pb::Flag) -> String {
    let session = if f.session_id.is_empty() {
        "-"
    } else {
        &f.session_id
    };
    format!(
        "{} on session {session} ({}, seq {}): {} {}",
        kind.as_str(),
        f.device_id,
        f.seq,
        f.detail,
        f.evidence_json
    )
}

/// Samples stored per session, from `Fleet.ListSessions`.
async fn check_samples(
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
async fn check_seqs(
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

fn list(f: &mut fmt::Formatter<'_>, title: &str, items: &[String]) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    writeln!(f, "{title} ({}):", items.len())?;
    for item in items.iter().take(SHOWN) {
        writeln!(f, "  - {item}")?;
    }
    if items.len() > SHOWN {
        writeln!(f, "  ... and {} more", items.len() - SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for Verification {
    /// The per-kind table, the reasons for any mismatch, and the verdict.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<27} {:>8} {:>6} {:>6} {:>10} {:>9} {:>6}",
            "kind", "expected", "found", "missed", "unexpected", "precision", "recall"
        )?;
        for r in &self.kinds {
            writeln!(
                f,
                "{:<27} {:>8} {:>6} {:>6} {:>10} {:>9.3} {:>6.3}",
                r.kind.as_str(),
                r.expected,
                r.found,
                r.missed,
                r.unexpected,
                r.precision(),
                r.recall()
            )?;
        }
        writeln!(
            f,
            "samples: {} sessions checked, {} samples sent, {} stored",
            self.sessions_checked, self.samples_expected, self.samples_stored
        )?;
        list(f, "missed flags", &self.missed)?;
        list(f, "unexpected flags", &self.unexpected)?;
        list(f, "flags raised twice", &self.duplicate_flags)?;
        list(f, "flags of unknown kinds", &self.unknown_kinds)?;
        list(f, "sample mismatches", &self.sample_mismatches)?;
        list(f, "seq mismatches", &self.seq_mismatches)?;
        let verdict = if self.passed() {
            "PASSED: precision and recall 1.0 for every kind; every sample stored exactly once"
        } else {
            "FAILED"
        };
        writeln!(f, "verify: {verdict}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultKind;

    fn truth(fault: FaultKind, session: &str) -> TruthRecord {
        TruthRecord {
            fault,
            device_id: "pen".into(),
            session_id: Some(session.into()),
            seq: 1,
            expected_flags: fault.expected_flags(),
            detail: String::new(),
        }
    }

    fn flag(kind: pb::FlagKind, session: &str) -> pb::Flag {
        pb::Flag {
            kind: kind as i32,
            session_id: session.into(),
            ..Default::default()
        }
    }

    #[test]
    fn equal_sets_pass_and_empty_kinds_score_one() {
        let t = [truth(FaultKind::Depth, "s1"), truth(FaultKind::Dup, "s2")];
        let f = [
            flag(pb::FlagKind::DepthExceeded, "s1"),
            flag(pb::FlagKind::DepthAboveAreaGuidance, "s1"),
        ];
        let v = compare_flags(&t, &f);
        assert!(v.passed(), "{v}");
        let reused = &v.kinds[0];
        assert_eq!(reused.kind, FlagKind::CartridgeReused);
        assert_eq!((reused.precision(), reused.recall()), (1.0, 1.0));
    }

    #[test]
    fn missed_unexpected_and_twice_raised_flags_fail() {
        let t = [
            truth(FaultKind::Reuse, "s1"),
            truth(FaultKind::Resume, "s2"),
        ];
        let f = [
            flag(pb::FlagKind::CartridgeReused, "s2"),
            flag(pb::FlagKind::SessionResumed, "s2"),
            flag(pb::FlagKind::SessionResumed, "s2"),
        ];
        let v = compare_flags(&t, &f);
        assert!(!v.passed());
        let reused = &v.kinds[0];
        assert_eq!(
            (
                reused.expected,
                reused.found,
                reused.missed,
                reused.unexpected
            ),
            (1, 1, 1, 1)
        );
        assert_eq!((reused.precision(), reused.recall()), (0.0, 0.0));
        assert_eq!(v.missed.len(), 1);
        assert!(v.missed[0].contains("s1") && v.missed[0].contains("reuse"));
        assert_eq!(v.unexpected.len(), 1);
        assert_eq!(v.duplicate_flags.len(), 1);
    }

    #[test]
    fn wire_kinds_map_to_domain_kinds() {
        for kind in FlagKind::ALL {
            let wire = pb::FlagKind::from_str_name(&format!("FLAG_KIND_{}", kind.as_str()))
                .expect("wire kind");
            assert_eq!(flag_kind(wire as i32), Some(kind));
        }
        assert_eq!(flag_kind(0), None);
    }
}
