//! Compliance reports (`pentrace report`; docs/architecture.md, "Audit
//! trail"): a clinic's sterility record for a period and the outbreak
//! lookback of a cartridge lot, as CSV, JSON or printable HTML.
//!
//! Every report ends with a one-line footer that carries the SHA-256 of all
//! bytes before it (the body), so a copy can be checked without pentrace
//! (`head -c N FILE | sha256sum`). Generating a report is itself an audit
//! event (`report.exported`) that records the same hash, which ties each
//! copy that was handed out to the tamper-evident chain.

mod csv_out;
mod html_out;
mod json_out;
mod lot;
mod seal;
mod sterility;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use pentrace_domain::audit::Actor;
use pentrace_store::{AuditDraft, GLOBAL_CHAIN, SessionRecord, Store, StoreError};
use serde::Serialize;
use serde_json::json;

pub use lot::{LotLine, LotReport, UseLine};
pub use seal::Seal;
pub use sterility::{ActionLine, AuditLine, ClinicLine, FlagLine, PeriodLine, SterilityReport};

/// The audit action recorded for every generated report.
pub const EXPORTED_ACTION: &str = "report.exported";

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the facts or recording the export failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request names nothing the report can be about.
    #[error("{0}")]
    Invalid(String),
    /// A renderer failed (never expected for in-memory output).
    #[error("cannot render the report: {0}")]
    Render(String),
}

/// Result of report building.
pub type ReportResult<T> = Result<T, ReportError>;

/// The file format of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// One table with a `record` column (report, session, flag, action, …).
    Csv,
    /// One JSON object: `{"report": …, "footer": …}`.
    Json,
    /// Plain HTML and CSS, printable on A4; no scripts.
    Html,
}

impl ReportFormat {
    /// The name used on the command line and in the audit event.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportFormat::Csv => "csv",
            ReportFormat::Json => "json",
            ReportFormat::Html => "html",
        }
    }
}

impl FromStr for ReportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(ReportFormat::Csv),
            "json" => Ok(ReportFormat::Json),
            "html" => Ok(ReportFormat::Html),
            other => Err(format!(
                "unknown format {other:?}: expected csv, json or html"
            )),
        }
    }
}

impl fmt::Display for ReportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whole UTC days `[from, to)`: a session belongs to the period when it
/// started at or after `from` 00:00 UTC and before `to` 00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    from: NaiveDate,
    to: NaiveDate,
}

impl Period {
    /// A period of at least one day.
    pub fn new(from: NaiveDate, to: NaiveDate) -> ReportResult<Period> {
        if from >= to {
            return Err(ReportError::Invalid(format!(
                "the period is empty: --from {from} must be before --to {to} (--to is exclusive)"
            )));
        }
        Ok(Period { from, to })
    }

    /// First day (inclusive).
    pub fn from(&self) -> NaiveDate {
        self.from
    }

    /// Day after the last one (exclusive).
    pub fn to(&self) -> NaiveDate {
        self.to
    }

    /// `from` 00:00 UTC.
    pub fn start(&self) -> DateTime<Utc> {
        self.from.and_time(chrono::NaiveTime::MIN).and_utc()
    }

    /// `to` 00:00 UTC.
    pub fn end(&self) -> DateTime<Utc> {
        self.to.and_time(chrono::NaiveTime::MIN).and_utc()
    }
}

/// A report as handed out: its text (body and footer), its seal, and where
/// its export was recorded.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The report's id, also the subject of its audit event.
    pub report_id: uuid::Uuid,
    /// The audit chain the `report.exported` event went to.
    pub chain: String,
    /// The whole file.
    pub text: String,
    /// What the footer says about the body.
    pub seal: Seal,
}

/// Builds a clinic's sterility report for `period`, records its export in
/// the clinic's audit chain, and returns the finished file.
pub async fn sterility(
    store: &dyn Store,
    clinic_id: &str,
    period: Period,
    format: ReportFormat,
    actor: &Actor,
) -> ReportResult<Exported> {
    let report = SterilityReport::build(store, clinic_id, period).await?;
    let (text, seal) = match format {
        ReportFormat::Csv => seal::seal(csv_out::sterility(&report)?, |s| {
            csv_out::footer(csv_out::STERILITY, s)
        })?,
        ReportFormat::Json => seal::seal(json_out::body(&report)?, json_out::footer)?,
        ReportFormat::Html => {
            seal::seal(html_out::sterility(&report), |s| Ok(html_out::footer(s)))?
        }
    };
    let draft = AuditDraft {
        clinic_id: report.clinic.id.clone(),
        actor: actor.clone(),
        action: EXPORTED_ACTION.into(),
        subject_type: "report".into(),
        subject_id: report.id.to_string(),
        old_value: None,
        new_value: Some(json!({
            "kind": "sterility",
            "clinic": report.clinic.id,
            "from": period.from().to_string(),
            "to": period.to().to_string(),
            "format": format.as_str(),
            "sha256": seal.sha256,
            "hashed_bytes": seal.hashed_bytes,
            "sessions": report.sessions.len(),
            "flags": report.flags.len(),
        })),
        reason: None,
    };
    record(store, draft, report.id, text, seal).await
}

/// Builds the outbreak lookback of a lot, records its export in the global
/// audit chain (a lot belongs to no single clinic), and returns the file.
pub async fn lot(
    store: &dyn Store,
    gtin: &str,
    lot: &str,
    format: ReportFormat,
    actor: &Actor,
) -> ReportResult<Exported> {
    let report = LotReport::build(store, gtin, lot).await?;
    let (text, seal) = match format {
        ReportFormat::Csv => {
            seal::seal(csv_out::lot(&report)?, |s| csv_out::footer(csv_out::LOT, s))?
        }
        ReportFormat::Json => seal::seal(json_out::body(&report)?, json_out::footer)?,
        ReportFormat::Html => seal::seal(html_out::lot(&report), |s| Ok(html_out::footer(s)))?,
    };
    let draft = AuditDraft {
        clinic_id: GLOBAL_CHAIN.into(),
        actor: actor.clone(),
        action: EXPORTED_ACTION.into(),
        subject_type: "report".into(),
        subject_id: report.id.to_string(),
        old_value: None,
        new_value: Some(json!({
            "kind": "lot",
            "gtin": report.lot.gtin,
            "lot": report.lot.lot,
            "format": format.as_str(),
            "sha256": seal.sha256,
            "hashed_bytes": seal.hashed_bytes,
            "sessions": report.sessions.len(),
            "clinics": report.clinics.len(),
        })),
        reason: None,
    };
    record(store, draft, report.id, text, seal).await
}

/// Appends the export event before the report is handed out: a recorded
/// export whose file then failed to be written is harmless, an export that
/// left no trace is not.
async fn record(
    store: &dyn Store,
    draft: AuditDraft,
    report_id: uuid::Uuid,
    text: String,
    seal: Seal,
) -> ReportResult<Exported> {
    let chain = draft.clinic_id.clone();
    store.append_audit(&[draft]).await?;
    Ok(Exported {
        report_id,
        chain,
        text,
        seal,
    })
}

/// Every time in a report: UTC, RFC 3339, milliseconds (what pens send).
pub(crate) fn utc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, to the second: a report's own time needs no more.
fn generated_at() -> String {
    let now = Utc::now();
    utc(DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now))
}

/// One session as every report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionLine {
    pub session_id: String,
    pub clinic_id: String,
    pub device_id: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// The UDI as scanned.
    pub udi: String,
    /// `gtin:serial` (or the chip UID) when the UDI identified a cartridge.
    pub cartridge_id: Option<String>,
    pub gtin: Option<String>,
    pub lot: Option<String>,
    pub expiry: Option<String>,
    pub area: String,
    pub operator_ref: String,
    /// Opaque patient reference (a hash, never a name): what an outbreak
    /// lookback needs to rebuild the client list.
    pub patient_ref: Option<String>,
    pub strokes: u64,
    pub max_depth_um: u32,
    pub samples: u64,
}

impl From<SessionRecord> for SessionLine {
    fn from(s: SessionRecord) -> Self {
        SessionLine {
            session_id: s.session_id,
            clinic_id: s.clinic_id,
            device_id: s.device_id,
            started_at: utc(s.started_at),
            ended_at: s.ended_at.map(utc),
            udi: s.udi,
            cartridge_id: s.cartridge_id,
            gtin: s.gtin,
            lot: s.lot,
            expiry: s.expiry.map(|d| d.to_string()),
            area: s.area,
            operator_ref: s.operator_ref,
            patient_ref: s.patient_ref,
            strokes: s.strokes,
            max_depth_um: s.max_depth_um,
            samples: s.samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_name() {
        assert_eq!("CSV".parse::<ReportFormat>(), Ok(ReportFormat::Csv));
        assert_eq!("html".parse::<ReportFormat>(), Ok(ReportFormat::Html));
        assert!("pdf".parse::<ReportFormat>().is_err());
    }

    #[test]
    fn a_period_is_whole_utc_days_with_an_exclusive_end() {
        let day = |d| NaiveDate::from_ymd_opt(2025, 3, d).unwrap();
        let p = Period::new(day(1), day(31)).unwrap();
        assert_eq!(utc(p.start()), "2025-03-01T00:00:00.000Z");
        assert_eq!(utc(p.end()), "2025-03-31T00:00:00.000Z");
        assert!(Period::new(day(2), day(2)).is_err());
        assert!(Period::new(day(3), day(2)).is_err());
    }
}
