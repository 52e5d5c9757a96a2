//! HTML: one self-contained page of plain HTML and CSS, no scripts and no
//! external resources, printable on A4 and readable in any browser without
//! pentrace. Every value from the database is escaped.

use std::fmt::Write as _;

use super::lot::{LotReport, UseLine};
use super::sterility::{AuditLine, FlagLine, SterilityReport};
use super::{Seal, SessionLine};

/// Print and screen styles: A4 pages, table headers repeated on each page,
/// rows never split across pages, long ids wrapped anywhere.
const STYLE: &str = "\
@page { size: A4; margin: 14mm 12mm 16mm 12mm; }
* { box-sizing: border-box; }
body { font: 9pt/1.35 \"Helvetica Neue\", Helvetica, Arial, sans-serif; color: #111; margin: 0;
  -webkit-print-color-adjust: exact; print-color-adjust: exact; }
@media screen { body { max-width: 186mm; margin: 10mm auto; } }
h1 { font-size: 15pt; margin: 0 0 3mm; }
h2 { font-size: 11pt; margin: 6mm 0 2mm; padding-bottom: 1mm; border-bottom: 0.5pt solid #888;
  break-after: avoid; page-break-after: avoid; }
table { width: 100%; border-collapse: collapse; table-layout: fixed; }
thead { display: table-header-group; }
tr { break-inside: avoid; page-break-inside: avoid; }
th, td { border: 0.4pt solid #aaa; padding: 1mm 1.2mm; vertical-align: top; text-align: left;
  overflow-wrap: anywhere; word-break: break-word; }
th { background: #eee; font-weight: 600; overflow-wrap: normal; word-break: normal; }
td.n, th.n { text-align: right; overflow-wrap: normal; word-break: normal; }
th.n { font-size: 7.5pt; }
table.meta th { width: 32mm; }
.id { font-family: \"DejaVu Sans Mono\", Menlo, Consolas, monospace; font-size: 7.5pt; }
.sub { color: #444; }
.ok { color: #05621d; font-weight: 700; }
.broken { color: #a00000; font-weight: 700; }
.kind { font-size: 8pt; overflow-wrap: normal; word-break: normal; }
.reason { white-space: pre-line; }
td.t { overflow-wrap: normal; word-break: normal; }
.critical { color: #a00000; font-weight: 700; }
.major { color: #8a4b00; font-weight: 700; }
tr.sig td { background: #f6f6f6; padding-left: 6mm; }
footer { margin-top: 6mm; padding-top: 2mm; border-top: 0.5pt solid #888; font-size: 7.5pt; }
";

/// Escapes text for element content and quoted attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A report time with a space for the `T` (RFC 3339 allows either), so a
/// narrow column wraps between date and time rather than inside a number.
fn when(t: &str) -> String {
    escape(&t.replacen('T', " ", 1))
}

/// A flag kind that may wrap after its underscores.
fn kind(k: &str) -> String {
    escape(k).replace('_', "_<wbr>")
}

/// An optional value, or a dash.
fn or_dash(value: Option<&String>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| escape(v))
}

/// `<!DOCTYPE>` to the page title, with the style sheet.
fn open(page: &mut String, title: &str) {
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(page, "<title>{}</title>", escape(title));
    let _ = writeln!(page, "<style>\n{STYLE}</style>\n</head>\n<body>");
    let _ = writeln!(page, "<h1>{}</h1>", escape(title));
}

/// A two-column table of labelled values (already escaped).
fn meta(page: &mut String, rows: &[(&str, String)]) {
    page.push_str("<table class=\"meta\">\n");
    for (label, value) in rows {
        let _ = writeln!(page, "<tr><th>{}</th><td>{value}</td></tr>", escape(label));
    }
    page.push_str("</table>\n");
}

/// The sterility report's body (everything but the footer line).
pub(super) fn sterility(r: &SterilityReport) -> String {
    let mut page = String::new();
    let title = format!(
        "Sterility report — {} — {} to {}",
        r.clinic.name, r.period.from, r.period.to
    );
    open(&mut page, &title);
    meta(
        &mut page,
        &[
            (
                "Clinic",
                format!(
                    "{} <span class=\"id\">({})</span>",
                    escape(&r.clinic.name),
                    escape(&r.clinic.id)
                ),
            ),
            (
                "Period",
                format!(
                    "{} (inclusive) to {} (exclusive), UTC",
                    escape(&r.period.from),
                    escape(&r.period.to)
                ),
            ),
            ("Sessions", escape(r.period.sessions)),
            ("Flags", escape(r.period.flags)),
            ("Generated", escape(&r.generated_at)),
            ("Report id", format!("<span class=\"id\">{}</span>", r.id)),
            ("Times", "All times are UTC (RFC 3339).".to_owned()),
        ],
    );
    audit_section(&mut page, &r.audit);
    sessions_section(&mut page, &r.sessions, false);
    flags_section(&mut page, &r.flags);
    page
}

fn audit_section(page: &mut String, a: &AuditLine) {
    page.push_str("<h2>Audit trail verification</h2>\n");
    let (class, verdict) = if a.ok() {
        ("ok", "OK".to_owned())
    } else {
        (
            "broken",
            format!(
                "BROKEN at position {}: {}",
                a.broken_at.unwrap_or_default(),
                a.broken_reason.as_deref().unwrap_or("")
            ),
        )
    };
    meta(
        page,
        &[
            (
                "Result",
                format!("<span class=\"{class}\">{}</span>", escape(&verdict)),
            ),
            ("Chain", escape(&a.chain)),
            ("Events verified", a.events_verified.to_string()),
            (
                "Hash at last verified event",
                format!(
                    "<span class=\"id\">{}</span>",
                    or_dash(a.head_hash.as_ref())
                ),
            ),
            ("Checkpoints holding", a.checkpoints_ok.to_string()),
            ("Verified", escape(a.scope)),
            ("Verifier", escape(&a.summary)),
        ],
    );
}

/// The sessions table; `with_clinic` adds the clinic (lot lookbacks span
/// clinics).
fn sessions_section(page: &mut String, sessions: &[SessionLine], with_clinic: bool) {
    let _ = writeln!(page, "<h2>Sessions ({})</h2>", sessions.len());
    if sessions.is_empty() {
        page.push_str("<p>None.</p>\n");
        return;
    }
    page.push_str(
        "<table>\n<colgroup><col style=\"width:15%\"><col style=\"width:22%\">\
         <col style=\"width:28%\"><col style=\"width:11%\"><col style=\"width:7%\">\
         <col style=\"width:8%\"><col style=\"width:9%\"></colgroup>\n\
         <thead><tr><th>Started / ended</th><th>Session / device</th>\
         <th>Cartridge (UDI; GTIN, lot, expiry)</th><th>Area / operator / patient</th>\
         <th class=\"n\">Strokes</th><th class=\"n\">Max depth µm</th>\
         <th class=\"n\">Samples</th></tr></thead>\n<tbody>\n",
    );
    for s in sessions {
        session_row(page, s, with_clinic);
    }
    page.push_str("</tbody>\n</table>\n");
}

fn session_row(page: &mut String, s: &SessionLine, with_clinic: bool) {
    let clinic = if with_clinic {
        format!(
            "<br><span class=\"sub\">clinic {}</span>",
            escape(&s.clinic_id)
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        page,
        "<tr><td class=\"t\">{}<br><span class=\"sub\">{}</span></td>\
         <td><span class=\"id\">{}</span><br>{}{clinic}</td>\
         <td><span class=\"id\">{}</span><br><span class=\"sub\">{} · lot {} · exp. {}</span></td>\
         <td>{}<br><span class=\"sub\">{} · {}</span></td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
        when(&s.started_at),
        s.ended_at.as_deref().map_or_else(|| "—".to_owned(), when),
        escape(&s.session_id),
        escape(&s.device_id),
        escape(&s.udi),
        or_dash(s.gtin.as_ref()),
        or_dash(s.lot.as_ref()),
        or_dash(s.expiry.as_ref()),
        escape(&s.area),
        escape(&s.operator_ref),
        or_dash(s.patient_ref.as_ref()),
        s.strokes,
        s.max_depth_um,
        s.samples,
    );
}

fn flags_section(page: &mut String, flags: &[FlagLine]) {
    let _ = writeln!(page, "<h2>Flags and signatures ({})</h2>", flags.len());
    if flags.is_empty() {
        page.push_str("<p>None.</p>\n");
        return;
    }
    page.push_str(
        "<table>\n<colgroup><col style=\"width:15%\"><col style=\"width:24%\">\
         <col style=\"width:13%\"><col style=\"width:22%\"><col style=\"width:26%\"></colgroup>\n\
         <thead><tr><th>Raised</th><th>Flag</th><th>State</th><th>Session / device</th>\
         <th>Detail</th></tr></thead>\n<tbody>\n",
    );
    for f in flags {
        flag_rows(page, f);
    }
    page.push_str("</tbody>\n</table>\n");
}

/// A flag, then one row per signature under it.
fn flag_rows(page: &mut String, f: &FlagLine) {
    let _ = writeln!(
        page,
        "<tr><td class=\"t\">{}</td><td><span class=\"kind {}\">{}</span><br>\
         <span class=\"sub\">{}</span><br><span class=\"id\">{}</span></td>\
         <td class=\"t\">{}</td><td><span class=\"id\">{}</span><br>{}</td><td>{}</td></tr>",
        when(&f.raised_at),
        escape(f.severity),
        kind(f.kind),
        escape(f.severity),
        escape(&f.flag_id),
        escape(f.state),
        or_dash(f.session_id.as_ref()),
        escape(&f.device_id),
        escape(&f.detail),
    );
    for a in &f.actions {
        let _ = writeln!(
            page,
            "<tr class=\"sig\"><td colspan=\"5\">Signed <b>{}</b> by <b>{}</b> at {}, \
             meaning: <b>{}</b>. Reason: <span class=\"reason\">{}</span><br><span class=\"sub\">bound to the flag's audit \
             hash <span class=\"id\">{}</span></span></td></tr>",
            escape(&a.step),
            escape(&a.signer_name),
            when(&a.signed_at),
            escape(&a.meaning),
            escape(&a.reason),
            escape(&a.bound_hash),
        );
    }
}

/// The lot report's body (everything but the footer line).
pub(super) fn lot(r: &LotReport) -> String {
    let mut page = String::new();
    let l = &r.lot;
    open(
        &mut page,
        &format!("Lot lookback — GTIN {} lot {}", l.gtin, l.lot),
    );
    let recall = match (&l.recalled_at, &l.recall_reason) {
        (Some(at), reason) => format!(
            "<span class=\"broken\">recalled {}</span> {}",
            escape(at),
            or_dash(reason.as_ref())
        ),
        (None, _) => "not recalled".to_owned(),
    };
    meta(
        &mut page,
        &[
            (
                "GTIN",
                format!("<span class=\"id\">{}</span>", escape(&l.gtin)),
            ),
            ("Lot", escape(&l.lot)),
            (
                "Registered",
                if l.registered { "yes" } else { "no" }.to_owned(),
            ),
            ("Expiry", or_dash(l.expiry.as_ref())),
            ("Recall", recall),
            ("Generated", escape(&r.generated_at)),
            ("Report id", format!("<span class=\"id\">{}</span>", r.id)),
            ("Times", "All times are UTC (RFC 3339).".to_owned()),
        ],
    );
    uses_section(&mut page, "Clinics", &r.clinics);
    uses_section(&mut page, "Devices", &r.devices);
    sessions_section(&mut page, &r.sessions, true);
    page
}

fn uses_section(page: &mut String, title: &str, uses: &[UseLine]) {
    let _ = writeln!(page, "<h2>{} ({})</h2>", escape(title), uses.len());
    if uses.is_empty() {
        page.push_str("<p>None.</p>\n");
        return;
    }
    page.push_str(
        "<table>\n<thead><tr><th>Clinic</th><th>Device</th><th class=\"n\">Sessions</th>\
         <th>First use</th><th>Last use</th></tr></thead>\n<tbody>\n",
    );
    for u in uses {
        let name = u
            .clinic_name
            .as_ref()
            .map(|n| format!("{} ", escape(n)))
            .unwrap_or_default();
        let _ = writeln!(
            page,
            "<tr><td>{name}<span class=\"id\">({})</span></td><td>{}</td>\
             <td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&u.clinic_id),
            or_dash(u.device_id.as_ref()),
            u.sessions,
            when(&u.first_use),
            when(&u.last_use),
        );
    }
    page.push_str("</tbody>\n</table>\n");
}

/// The footer line: the seal, then the end of the page.
pub(super) fn footer(seal: &Seal) -> String {
    format!(
        "<footer><p>Report SHA-256: <span class=\"id\">{}</span></p><p>{}</p></footer>\
         </body></html>\n",
        escape(&seal.sha256),
        escape(&seal.statement())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_the_five_special_characters() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn values_are_escaped_and_the_page_has_no_script() {
        let page = sterility(&super::super::sterility::tests::sample());
        assert!(!page.to_lowercase().contains("<script"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("Clinic &lt;A&gt; &amp; Co"));
        assert!(page.contains("@page { size: A4;"));
        assert!(page.contains("Carla &quot;CC&quot; Compliance"));
        let lot_page = lot(&super::super::lot::tests::sample());
        assert!(lot_page.contains("A &amp; Co"));
        assert!(lot_page.contains("Sessions (3)"));
    }
}
