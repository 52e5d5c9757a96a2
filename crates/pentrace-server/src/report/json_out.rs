//! JSON: one object, `{"report": {…}, "footer": {…}}`.
//!
//! The report member is pretty-printed over many lines and the footer takes
//! the last line alone, so the same rule as in the other formats holds: the
//! hash covers every byte before the last line.

use serde::Serialize;

use super::{ReportError, ReportResult, Seal};

/// The opening of the object and the `report` member, up to the comma.
pub(super) fn body(report: &impl Serialize) -> ReportResult<String> {
    let report = serde_json::to_string_pretty(report).map_err(render)?;
    Ok(format!("{{\n\"report\": {report},\n"))
}

/// The footer member on one line, closing the object.
#[derive(Debug, Serialize)]
struct Footer<'a> {
    sha256: &'a str,
    hashed_bytes: usize,
    hashed: String,
}

/// The `footer` member and the object's closing brace, on one line.
pub(super) fn footer(seal: &Seal) -> ReportResult<String> {
    let footer = Footer {
        sha256: &seal.sha256,
        hashed_bytes: seal.hashed_bytes,
        hashed: seal.statement(),
    };
    let footer = serde_json::to_string(&footer).map_err(render)?;
    Ok(format!("\"footer\": {footer}}}\n"))
}

fn render(e: serde_json::Error) -> ReportError {
    ReportError::Render(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_and_footer_make_one_json_object() {
        let report = super::super::sterility::tests::sample();
        let body = body(&report).unwrap();
        let text = body.clone() + &footer(&Seal::of(&body)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["report"]["clinic"]["id"], "clinic-a");
        assert_eq!(
            value["report"]["flags"][0]["actions"][0]["signer_name"],
            "Carla \"CC\" Compliance"
        );
        assert_eq!(value["footer"]["sha256"], Seal::of(&body).sha256);
    }
}
