//! `--verify`: compares the flags the server raised with the ground truth,
//! as sets of (kind, session), and checks that every sample sent is stored
//! exactly once.

use std::fmt;

use pentrace_domain::FlagKind;

use crate::api::{Api, retrying};
use crate::config::SimConfig;
use crate::error::SimError;
use crate::report::SimReport;

mod flags;
mod stored;

/// Mismatches listed per category before "... and N more".
const SHOWN: usize = 5;

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

/// The result of [`crate::verify()`].
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
    let found = flags::list(&api, &config.clinic, report.started_at).await?;
    let mut verification = flags::compare(&report.truth, &found);
    stored::check_samples(&api, report, &mut verification).await?;
    stored::check_seqs(&api, config, report, &mut verification).await?;
    Ok(verification)
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
