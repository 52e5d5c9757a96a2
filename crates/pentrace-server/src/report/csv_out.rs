//! CSV: one table, one header, a `record` column that says what each row is
//! (`report`, `session`, `flag`, `action`, `audit`, `footer` in a sterility
//! report; `report`, `lot`, `clinic`, `device`, `session`, `footer` in a lot
//! report). Any CSV reader parses it whole; a row leaves blank the columns
//! that do not apply to it. Quoting follows RFC 4180, records end in `\n`.

use super::lot::{LotReport, UseLine};
use super::sterility::{ActionLine, FlagLine, SterilityReport};
use super::{ReportError, ReportResult, Seal, SessionLine};

/// Columns of the sterility report.
pub(super) const STERILITY: &[&str] = &[
    "record",
    "report_id",
    "clinic_id",
    "clinic_name",
    "period_from",
    "period_to",
    "generated_at",
    "session_id",
    "device_id",
    "started_at",
    "ended_at",
    "udi",
    "cartridge_id",
    "gtin",
    "lot",
    "expiry",
    "area",
    "operator_ref",
    "patient_ref",
    "strokes",
    "max_depth_um",
    "samples",
    "flag_id",
    "flag_kind",
    "severity",
    "state",
    "raised_at",
    "detail",
    "step",
    "signer_name",
    "signed_at",
    "meaning",
    "reason",
    "bound_hash",
    "chain",
    "status",
    "events_verified",
    "head_hash",
    "broken_at",
    "sha256",
    "note",
];

/// Columns of the lot report.
pub(super) const LOT: &[&str] = &[
    "record",
    "report_id",
    "generated_at",
    "gtin",
    "lot",
    "expiry",
    "recalled_at",
    "recall_reason",
    "clinic_id",
    "clinic_name",
    "device_id",
    "sessions",
    "first_use",
    "last_use",
    "session_id",
    "started_at",
    "ended_at",
    "udi",
    "cartridge_id",
    "area",
    "operator_ref",
    "patient_ref",
    "strokes",
    "max_depth_um",
    "samples",
    "sha256",
    "note",
];

/// One row: a value per column of its table, blank where none applies.
#[derive(Debug)]
struct Row {
    columns: &'static [&'static str],
    values: Vec<String>,
}

impl Row {
    fn new(columns: &'static [&'static str], record: &str) -> Row {
        let mut values = vec![String::new(); columns.len()];
        values[0] = record.to_owned();
        Row { columns, values }
    }

    /// Sets a column by name; naming a column the table lacks is a bug the
    /// unit tests catch.
    fn set(mut self, column: &str, value: impl ToString) -> Row {
        match self.columns.iter().position(|c| *c == column) {
            Some(i) => self.values[i] = value.to_string(),
            None => debug_assert!(false, "no column {column}"),
        }
        self
    }

    /// Sets a column when there is a value.
    fn opt(self, column: &str, value: Option<impl ToString>) -> Row {
        match value {
            Some(v) => self.set(column, v),
            None => self,
        }
    }
}

/// Writes a header and rows to a string.
fn table(
    columns: &'static [&'static str],
    rows: impl IntoIterator<Item = Row>,
) -> ReportResult<String> {
    let header = columns.iter().map(|c| (*c).to_owned()).collect();
    write(std::iter::once(header).chain(rows.into_iter().map(|r| r.values)))
}

/// Writes records to a string: RFC 4180 quoting, `\n` after each record.
fn write(records: impl IntoIterator<Item = Vec<String>>) -> ReportResult<String> {
    let mut out = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    for record in records {
        out.write_record(&record).map_err(render)?;
    }
    let bytes = out.into_inner().map_err(|e| render(e.into_error()))?;
    String::from_utf8(bytes).map_err(render)
}

fn render(e: impl std::fmt::Display) -> ReportError {
    ReportError::Render(e.to_string())
}

/// The sterility report's body: header, then report, sessions, flags each
/// followed by its actions, and the audit verification.
pub(super) fn sterility(r: &SterilityReport) -> ReportResult<String> {
    let mut rows = vec![
        Row::new(STERILITY, "report")
            .set("report_id", r.id)
            .set("clinic_id", &r.clinic.id)
            .set("clinic_name", &r.clinic.name)
            .set("period_from", &r.period.from)
            .set("period_to", &r.period.to)
            .set("generated_at", &r.generated_at)
            .set(
                "note",
                format!(
                    "sterility report; all times UTC; sessions: {}; flags: {}",
                    r.period.sessions, r.period.flags
                ),
            ),
    ];
    rows.extend(r.sessions.iter().map(|s| session(STERILITY, s)));
    for f in &r.flags {
        rows.push(flag(f, &r.clinic.id));
        rows.extend(f.actions.iter().map(|a| action(f, a)));
    }
    let a = &r.audit;
    rows.push(
        Row::new(STERILITY, "audit")
            .set("clinic_id", &r.clinic.id)
            .set("chain", &a.chain)
            .set("status", a.status)
            .set("events_verified", a.events_verified)
            .opt("head_hash", a.head_hash.as_ref())
            .opt("broken_at", a.broken_at)
            .set("note", format!("{}; verified: {}", a.summary, a.scope)),
    );
    table(STERILITY, rows)
}

/// A session row; the columns exist in both tables.
fn session(columns: &'static [&'static str], s: &SessionLine) -> Row {
    Row::new(columns, "session")
        .set("session_id", &s.session_id)
        .set("clinic_id", &s.clinic_id)
        .set("device_id", &s.device_id)
        .set("started_at", &s.started_at)
        .opt("ended_at", s.ended_at.as_ref())
        .set("udi", &s.udi)
        .opt("cartridge_id", s.cartridge_id.as_ref())
        .opt("gtin", s.gtin.as_ref())
        .opt("lot", s.lot.as_ref())
        .opt("expiry", s.expiry.as_ref())
        .set("area", &s.area)
        .set("operator_ref", &s.operator_ref)
        .opt("patient_ref", s.patient_ref.as_ref())
        .set("strokes", s.strokes)
        .set("max_depth_um", s.max_depth_um)
        .set("samples", s.samples)
}

fn flag(f: &FlagLine, clinic_id: &str) -> Row {
    Row::new(STERILITY, "flag")
        .set("clinic_id", clinic_id)
        .set("flag_id", &f.flag_id)
        .set("flag_kind", f.kind)
        .set("severity", f.severity)
        .set("state", f.state)
        .set("device_id", &f.device_id)
        .opt("session_id", f.session_id.as_ref())
        .opt("cartridge_id", f.cartridge_id.as_ref())
        .set("raised_at", &f.raised_at)
        .set("detail", &f.detail)
}

fn action(f: &FlagLine, a: &ActionLine) -> Row {
    Row::new(STERILITY, "action")
        .set("flag_id", &f.flag_id)
        .opt("session_id", f.session_id.as_ref())
        .set("step", &a.step)
        .set("signer_name", &a.signer_name)
        .set("signed_at", &a.signed_at)
        .set("meaning", &a.meaning)
        .set("reason", &a.reason)
        .set("bound_hash", &a.bound_hash)
}

/// The lot report's body: header, then report, lot, clinics, devices and
/// sessions.
pub(super) fn lot(r: &LotReport) -> ReportResult<String> {
    let l = &r.lot;
    let mut rows = vec![
        Row::new(LOT, "report")
            .set("report_id", r.id)
            .set("generated_at", &r.generated_at)
            .set("gtin", &l.gtin)
            .set("lot", &l.lot)
            .set("note", "lot lookback; all times UTC"),
        Row::new(LOT, "lot")
            .set("gtin", &l.gtin)
            .set("lot", &l.lot)
            .opt("expiry", l.expiry.as_ref())
            .opt("recalled_at", l.recalled_at.as_ref())
            .opt("recall_reason", l.recall_reason.as_ref())
            .set(
                "note",
                if l.registered {
                    "registered lot"
                } else {
                    "lot not registered"
                },
            ),
    ];
    rows.extend(r.clinics.iter().map(|u| usage("clinic", u)));
    rows.extend(r.devices.iter().map(|u| usage("device", u)));
    rows.extend(r.sessions.iter().map(|s| session(LOT, s)));
    table(LOT, rows)
}

fn usage(record: &str, u: &UseLine) -> Row {
    Row::new(LOT, record)
        .set("clinic_id", &u.clinic_id)
        .opt("clinic_name", u.clinic_name.as_ref())
        .opt("device_id", u.device_id.as_ref())
        .set("sessions", u.sessions)
        .set("first_use", &u.first_use)
        .set("last_use", &u.last_use)
}

/// The footer row under the table's header (`columns`): `record` =
/// `footer`, the hash in `sha256` and what it covers in `note`.
pub(super) fn footer(columns: &'static [&'static str], seal: &Seal) -> ReportResult<String> {
    let row = Row::new(columns, "footer")
        .set("sha256", &seal.sha256)
        .set("note", seal.statement());
    write([row.values])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_named_by_a_row_exists() {
        // Rendering the samples runs every `set` (debug_assert on a typo).
        sterility(&super::super::sterility::tests::sample()).unwrap();
        lot(&super::super::lot::tests::sample()).unwrap();
    }

    #[test]
    fn the_sterility_csv_parses_back_with_its_awkward_values() {
        let report = super::super::sterility::tests::sample();
        let text = sterility(&report).unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let headers = reader.headers().unwrap().clone();
        let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        let kinds: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
        assert_eq!(kinds, ["report", "session", "flag", "action", "audit"]);
        assert_eq!(&rows[0][col("clinic_name")], "Clinic <A> & Co");
        assert_eq!(&rows[3][col("reason")], report.flags[0].actions[0].reason);
        assert_eq!(&rows[3][col("signer_name")], "Carla \"CC\" Compliance");
        assert_eq!(&rows[4][col("status")], "OK");
    }
}
