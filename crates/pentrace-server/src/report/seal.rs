//! The footer that makes a report self-checking.
//!
//! Rule, the same for every format: the footer is the file's last line, and
//! the hash covers every byte before it (the body, which ends with a line
//! break). The footer says how many bytes that is, so anyone can recompute
//! it with standard tools: `head -c N FILE | sha256sum`.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ReportError, ReportResult};

/// What a report's footer states about its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seal {
    /// SHA-256 of the body, lower-case hex.
    pub sha256: String,
    /// Length of the body in bytes: the hash covers bytes `0..hashed_bytes`.
    pub hashed_bytes: usize,
}

impl Seal {
    /// Hashes a body.
    pub fn of(body: &str) -> Seal {
        Seal {
            sha256: hex::encode(Sha256::digest(body.as_bytes())),
            hashed_bytes: body.len(),
        }
    }

    /// The footer's plain-language statement of what is hashed.
    pub fn statement(&self) -> String {
        format!(
            "SHA-256 {} of the first {} bytes of this file, that is every byte before this \
             footer line (UTF-8, as stored). Recompute: head -c {} FILE | sha256sum",
            self.sha256, self.hashed_bytes, self.hashed_bytes
        )
    }
}

/// Appends the footer that `footer` makes for the body's seal; returns the
/// whole file and its seal.
pub(super) fn seal(
    mut body: String,
    footer: impl FnOnce(&Seal) -> ReportResult<String>,
) -> ReportResult<(String, Seal)> {
    // The footer must start a line of its own for "every byte before the
    // last line" to be the body; renderers end with a line break already.
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let seal = Seal::of(&body);
    let footer = footer(&seal)?;
    if footer.trim_end_matches('\n').contains('\n') || !footer.ends_with('\n') {
        return Err(ReportError::Render(
            "a footer must be exactly one line".into(),
        ));
    }
    body.push_str(&footer);
    Ok((body, seal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seal_covers_exactly_the_bytes_before_the_last_line() {
        type Footer = fn(&Seal) -> ReportResult<String>;
        let footers: [Footer; 4] = [
            |s| super::super::csv_out::footer(super::super::csv_out::STERILITY, s),
            |s| super::super::csv_out::footer(super::super::csv_out::LOT, s),
            super::super::json_out::footer,
            |s| Ok(super::super::html_out::footer(s)),
        ];
        for footer in footers {
            let (text, seal) = seal("a,b\nc,\"d\ne\"".into(), footer).unwrap();
            let footer_start = text[..text.len() - 1].rfind('\n').unwrap() + 1;
            assert_eq!(footer_start, seal.hashed_bytes, "{text}");
            assert_eq!(Seal::of(&text[..footer_start]), seal, "{text}");
            assert!(text[footer_start..].contains(&seal.sha256), "{text}");
        }
    }

    #[test]
    fn a_footer_of_two_lines_is_refused() {
        assert!(seal("x\n".into(), |_| Ok("a\nb\n".into())).is_err());
    }

    #[test]
    fn a_known_digest() {
        // `printf 'abc' | sha256sum`
        assert_eq!(
            Seal::of("abc").sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
