//! GS1 UDI parsing (docs/architecture.md, "Domain facts").
//!
//! A cartridge UDI is a GS1 element string made of these Application
//! Identifiers (AIs): (01) GTIN-14, (17) expiry YYMMDD, (10) lot, (21) serial
//! and optionally (11) production date YYMMDD. Every other AI is rejected.
//!
//! [`Udi::parse`] accepts three forms:
//!
//! * raw scanner data, with an optional symbology identifier (`]d2`, `]C1`,
//!   `]Q3`), the AIs concatenated and the variable-length values ended by GS
//!   (ASCII 29) unless last;
//! * bracketed human-readable text such as `(01)09506000134352(10)A1B2`, AIs in
//!   any order;
//! * GS1 Digital Link URIs (`http://` or `https://`) such as
//!   `https://id.example/01/09506000134352/10/A1B2?17=270200`.
//!
//! Choices where the standard leaves room or the forms are ambiguous:
//!
//! * In bracketed text a `(` always starts the next AI, although `(` is in
//!   GS1's character set 82: a lot or serial containing `(` cannot be written
//!   in that form (use the raw form or a Digital Link instead).
//! * In raw data a GS after a fixed-length value and a GS at the very end are
//!   tolerated, since some printers emit them.
//! * In a Digital Link the path must end with `/01/{gtin}`, optionally
//!   followed by `/10/{lot}` then `/21/{serial}` in that order (the order GS1
//!   Digital Link prescribes); anything before `/01/` is a path prefix. Dates
//!   belong in the query. Query keys made of digits must be supported AIs;
//!   other keys (`linkType`, ...) are ignored. `+` is taken literally, not as
//!   a space, because it is a valid GS1 character.
//! * Error positions are 0-based character offsets in the untrimmed input:
//!   the offending character for character-level problems, the start of the
//!   value for whole-value problems (length, check digit, date), the start of
//!   the AI for AI-level problems (unknown, duplicate).

use std::ops::Range;
use std::{fmt, iter};

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

/// A parsed cartridge UDI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Udi {
    /// AI (01): GTIN-14 with a valid check digit.
    pub gtin: String,
    /// AI (10): lot / batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lot: Option<String>,
    /// AI (21): serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// AI (17): expiry date (day 00 resolved to the month's last day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry: Option<NaiveDate>,
    /// AI (11): production date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub production_date: Option<NaiveDate>,
}

/// Why a UDI was rejected: which AI (if one is concerned), where, and what.
///
/// Displays as one line, e.g.
/// `AI (01) at position 4: check digit is 3, expected 2`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} at position {position}: {problem}", subject(.ai.as_deref()))]
pub struct UdiError {
    /// The AI concerned, as its digits (`"17"`), when the problem is tied to one.
    pub ai: Option<String>,
    /// 0-based character offset in the input where the problem is.
    pub position: usize,
    /// What is wrong.
    pub problem: UdiProblem,
}

/// The kinds of problem a UDI can have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdiProblem {
    /// Nothing to parse (empty, blank, or only a symbology identifier).
    Empty,
    /// Input starting with `]` that is not `]d2`, `]C1` or `]Q3`.
    UnknownSymbology(String),
    /// An AI was expected but this character (or the end of input) was found.
    ExpectedAi {
        /// The character found; `None` at the end of the input.
        found: Option<char>,
    },
    /// A `(` in bracketed text has no matching `)`.
    UnclosedBracket,
    /// A well-formed AI that pentrace does not support.
    UnknownAi,
    /// (01) is absent although another AI requires it.
    MissingGtin {
        /// The first AI found, which requires a GTIN.
        required_by: String,
    },
    /// The same AI appears twice.
    Duplicate,
    /// A non-digit in a numeric value.
    NotDigit(char),
    /// A fixed-length value with the wrong number of characters.
    WrongLength {
        /// Digits the AI requires.
        expected: usize,
        /// Characters found.
        found: usize,
    },
    /// A Digital Link GTIN that is not 8, 12, 13 or 14 digits long.
    GtinLength {
        /// Digits found.
        found: usize,
    },
    /// The GTIN's mod-10 check digit does not match.
    CheckDigit {
        /// The check digit computed from the first 13 digits.
        expected: u8,
        /// The check digit in the input.
        found: u8,
    },
    /// A YYMMDD value that is not a calendar date.
    BadDate {
        /// The six digits as given.
        value: String,
        /// The year after applying the century rule.
        year: i32,
        /// The month as given.
        month: u32,
        /// The day as given.
        day: u32,
    },
    /// A variable-length value with no characters.
    EmptyValue,
    /// A character outside GS1's character set 82 (control, space, non-ASCII...).
    BadCharacter(char),
    /// A variable-length value longer than the AI allows.
    TooLong {
        /// The AI's maximum length.
        max: usize,
        /// Characters found.
        found: usize,
    },
    /// A `%` not followed by two hex digits, or escapes that are not UTF-8.
    BadEscape,
    /// A Digital Link URI without the expected structure.
    MalformedLink(&'static str),
}

impl fmt::Display for UdiProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("input is empty"),
            Self::UnknownSymbology(id) => {
                write!(
                    f,
                    "unknown symbology identifier {id:?} (expected ]d2, ]C1 or ]Q3)"
                )
            }
            Self::ExpectedAi { found: Some(c) } => write!(f, "expected a numeric AI, found {c:?}"),
            Self::ExpectedAi { found: None } => f.write_str("expected a numeric AI, found the end"),
            Self::UnclosedBracket => f.write_str("'(' without a closing ')'"),
            Self::UnknownAi => {
                f.write_str("unsupported AI (only 01, 10, 11, 17, 21 are supported)")
            }
            Self::MissingGtin { required_by } => {
                write!(f, "missing, but ({required_by}) requires a GTIN")
            }
            Self::Duplicate => f.write_str("appears more than once"),
            Self::NotDigit(c) => write!(f, "{c:?} is not a digit"),
            Self::WrongLength { expected, found } => {
                write!(
                    f,
                    "value has {found} characters, expected {expected} digits"
                )
            }
            Self::GtinLength { found } => {
                write!(f, "GTIN has {found} digits, expected 8, 12, 13 or 14")
            }
            Self::CheckDigit { expected, found } => {
                write!(f, "check digit is {found}, expected {expected}")
            }
            Self::BadDate {
                value,
                year,
                month,
                day,
            } => bad_date(f, value, *year, *month, *day),
            Self::EmptyValue => f.write_str("value is empty"),
            Self::BadCharacter(c) => write!(
                f,
                "character {c:?} (U+{:04X}) is not in the GS1 character set 82",
                u32::from(*c)
            ),
            Self::TooLong { max, found } => {
                write!(f, "value has {found} characters, at most {max} allowed")
            }
            Self::BadEscape => f.write_str("malformed percent-escape"),
            Self::MalformedLink(why) => write!(f, "malformed Digital Link: {why}"),
        }
    }
}

fn bad_date(
    f: &mut fmt::Formatter<'_>,
    value: &str,
    year: i32,
    month: u32,
    day: u32,
) -> fmt::Result {
    if (1..=12).contains(&month) {
        write!(
            f,
            "{value} is not a date (no day {day} in {year:04}-{month:02})"
        )
    } else {
        write!(f, "{value} is not a date (no month {month:02})")
    }
}

/// The start of an error message: the AI when there is one.
fn subject(ai: Option<&str>) -> String {
    ai.map_or_else(|| "UDI".to_owned(), |ai| format!("AI ({ai})"))
}

impl UdiError {
    fn at(ai: Option<Ai>, position: usize, problem: UdiProblem) -> UdiError {
        UdiError {
            ai: ai.map(|ai| ai.code().to_owned()),
            position,
            problem,
        }
    }

    /// For AIs outside [`Ai`], named by their digits.
    fn unknown_ai(code: String, position: usize) -> UdiError {
        UdiError {
            ai: Some(code),
            position,
            problem: UdiProblem::UnknownAi,
        }
    }
}

impl Udi {
    /// Parses any accepted form; `today` decides the century of YY dates.
    pub fn parse(input: &str, today: NaiveDate) -> Result<Udi, UdiError> {
        let text = Text::new(input);
        if text.chars.is_empty() {
            return Err(UdiError::at(None, 0, UdiProblem::Empty));
        }
        let mut builder = Builder::new(today);
        if text.chars[0] == '(' {
            parse_bracketed(&text, &mut builder)?;
        } else if let Some(scheme_len) = link_scheme_len(&text) {
            parse_link(&text, scheme_len, &mut builder)?;
        } else {
            parse_raw(&text, &mut builder)?;
        }
        let udi = builder.finish(text.base)?;
        // Element values are checked against character set 82 as they are
        // parsed; what a form does not look into (a Digital Link's host,
        // path prefix or fragment) must still be printable ASCII, so a UDI
        // with a control character (the transport replaces those with
        // U+FFFD) or non-ASCII anywhere is invalid, never silently accepted.
        if let Some(i) = text.find(0, text.len(), |c| !(c.is_ascii_graphic() || c == GS)) {
            let c = text.chars.get(i).copied().unwrap_or_default();
            return Err(UdiError::at(None, text.pos(i), UdiProblem::BadCharacter(c)));
        }
        Ok(udi)
    }

    /// The bracketed human-readable form, AIs in the order 01, 11, 17, 10, 21.
    pub fn to_bracketed(&self) -> String {
        self.elements()
            .map(|(ai, value)| format!("({}){value}", ai.code()))
            .collect()
    }

    /// Raw scanner data as a GS1 DataMatrix would transmit it: `]d2`, then
    /// (01), the fixed-length AIs and the variable ones, each variable value
    /// but the last ended by GS.
    pub fn to_raw(&self) -> String {
        let mut raw = String::from("]d2");
        let mut pending_gs = false;
        for (ai, value) in self.elements() {
            if pending_gs {
                raw.push(GS);
            }
            raw.push_str(ai.code());
            raw.push_str(&value);
            pending_gs = ai.fixed_len().is_none();
        }
        raw
    }

    /// A GS1 Digital Link URI on `base` (e.g. `https://id.example`, a path
    /// prefix allowed): `/01/{gtin}[/10/{lot}][/21/{serial}]` plus the dates
    /// as `?17=...&11=...`, values percent-encoded outside RFC 3986's
    /// unreserved characters.
    pub fn to_digital_link(&self, base: &str) -> String {
        let mut link = format!("{}/01/{}", base.trim_end_matches('/'), self.gtin);
        for (code, value) in [("10", &self.lot), ("21", &self.serial)] {
            if let Some(value) = value {
                link.push_str(&format!("/{code}/{}", percent_encode(value)));
            }
        }
        let query: Vec<String> = [("17", self.expiry), ("11", self.production_date)]
            .into_iter()
            .filter_map(|(code, date)| date.map(|d| format!("{code}={}", yymmdd(d))))
            .collect();
        if !query.is_empty() {
            link.push('?');
            link.push_str(&query.join("&"));
        }
        link
    }

    /// The present elements in canonical order: 01, 11, 17, 10, 21.
    fn elements(&self) -> impl Iterator<Item = (Ai, String)> + '_ {
        let dates = [
            (Ai::Production, self.production_date),
            (Ai::Expiry, self.expiry),
        ]
        .into_iter()
        .filter_map(|(ai, date)| date.map(|d| (ai, yymmdd(d))));
        let texts = [(Ai::Lot, &self.lot), (Ai::Serial, &self.serial)]
            .into_iter()
            .filter_map(|(ai, text)| text.clone().map(|t| (ai, t)));
        iter::once((Ai::Gtin, self.gtin.clone()))
            .chain(dates)
            .chain(texts)
    }
}

/// The GS1 mod-10 check digit of the first 13 digits of a GTIN-14; `None`
/// unless `first13` is exactly 13 ASCII digits.
pub fn gtin_check_digit(first13: &str) -> Option<u8> {
    let digits = first13.as_bytes();
    if digits.len() != 13 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Weights run 3, 1, 3, ... from the right, so padding on the left with
    // zeros (GTIN-8/12/13 to 14) leaves the check digit unchanged.
    let sum: u32 = digits
        .iter()
        .rev()
        .zip([3, 1].into_iter().cycle())
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    u8::try_from((10 - sum % 10) % 10).ok()
}

/// GS (ASCII 29), FNC1 in transmitted data: ends variable-length values.
const GS: char = '\u{1d}';
const MAX_VARIABLE_LEN: usize = 20;
const SYMBOLOGY_IDS: [&str; 3] = ["]d2", "]C1", "]Q3"];

/// The supported Application Identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ai {
    Gtin,
    Production,
    Expiry,
    Lot,
    Serial,
}

impl Ai {
    const ALL: [Ai; 5] = [Ai::Gtin, Ai::Production, Ai::Expiry, Ai::Lot, Ai::Serial];

    fn code(self) -> &'static str {
        match self {
            Ai::Gtin => "01",
            Ai::Production => "11",
            Ai::Expiry => "17",
            Ai::Lot => "10",
            Ai::Serial => "21",
        }
    }

    fn from_code(code: &str) -> Option<Ai> {
        Ai::ALL.into_iter().find(|ai| ai.code() == code)
    }

    /// `None` for variable-length AIs (up to [`MAX_VARIABLE_LEN`]).
    fn fixed_len(self) -> Option<usize> {
        match self {
            Ai::Gtin => Some(14),
            Ai::Production | Ai::Expiry => Some(6),
            Ai::Lot | Ai::Serial => None,
        }
    }
}

/// How many digits an AI starting with `prefix` has (GS1 General
/// Specifications, AI prefix table). Raw data does not delimit AIs, so this
/// is only needed to name an unsupported AI in full.
fn ai_code_len(prefix: &str) -> usize {
    match prefix {
        "23" | "24" | "25" | "40" | "41" | "42" | "71" => 3,
        "31" | "32" | "33" | "34" | "35" | "36" | "39" | "43" | "70" | "72" | "80" | "81"
        | "82" => 4,
        _ => 2,
    }
}

/// GS1 AI encodable character set 82.
fn is_cset82(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!\"%&'()*+,-./:;<=>?_".contains(c)
}

/// The trimmed input as characters, so that positions are character offsets
/// of the original input (`base` is the number of trimmed leading characters).
struct Text {
    chars: Vec<char>,
    base: usize,
}

impl Text {
    fn new(input: &str) -> Text {
        let start = input.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let base = input.chars().count() - start.chars().count();
        let chars = start
            .trim_end_matches(|c: char| c.is_ascii_whitespace())
            .chars()
            .collect();
        Text { chars, base }
    }

    fn len(&self) -> usize {
        self.chars.len()
    }

    fn pos(&self, index: usize) -> usize {
        self.base + index
    }

    /// The first index in `from..to` whose character satisfies `pred`.
    fn find(&self, from: usize, to: usize, pred: impl Fn(char) -> bool) -> Option<usize> {
        (from..to).find(|&i| self.chars.get(i).is_some_and(|&c| pred(c)))
    }

    fn string(&self, range: Range<usize>) -> String {
        self.chars.get(range).unwrap_or_default().iter().collect()
    }

    /// The characters of `range` with their positions.
    fn spanned(&self, range: Range<usize>) -> Spanned {
        range
            .filter_map(|i| self.chars.get(i).map(|&c| (c, self.pos(i))))
            .collect()
    }
}

/// Value characters, each with its position in the input (percent-decoding
/// makes the two differ in Digital Links).
type Spanned = Vec<(char, usize)>;

/// One AI and its not yet validated value.
struct Element {
    ai: Ai,
    ai_pos: usize,
    value: Spanned,
    /// Where the value starts (or would start, when empty).
    value_pos: usize,
}

/// Validates elements as the parsers find them, so that the first problem
/// in the input is the one reported.
struct Builder {
    today: NaiveDate,
    first: Option<(Ai, usize)>,
    gtin: Option<String>,
    lot: Option<String>,
    serial: Option<String>,
    expiry: Option<NaiveDate>,
    production_date: Option<NaiveDate>,
}

impl Builder {
    fn new(today: NaiveDate) -> Builder {
        Builder {
            today,
            first: None,
            gtin: None,
            lot: None,
            serial: None,
            expiry: None,
            production_date: None,
        }
    }

    fn has(&self, ai: Ai) -> bool {
        match ai {
            Ai::Gtin => self.gtin.is_some(),
            Ai::Production => self.production_date.is_some(),
            Ai::Expiry => self.expiry.is_some(),
            Ai::Lot => self.lot.is_some(),
            Ai::Serial => self.serial.is_some(),
        }
    }

    fn add(&mut self, element: Element) -> Result<(), UdiError> {
        if self.has(element.ai) {
            return Err(UdiError::at(
                Some(element.ai),
                element.ai_pos,
                UdiProblem::Duplicate,
            ));
        }
        self.first.get_or_insert((element.ai, element.ai_pos));
        match element.ai {
            Ai::Gtin => self.gtin = Some(validate_gtin(&element)?),
            Ai::Production => self.production_date = Some(validate_date(&element, self.today)?),
            Ai::Expiry => self.expiry = Some(validate_date(&element, self.today)?),
            Ai::Lot => self.lot = Some(validate_variable(&element)?),
            Ai::Serial => self.serial = Some(validate_variable(&element)?),
        }
        Ok(())
    }

    fn finish(self, base: usize) -> Result<Udi, UdiError> {
        let Some(gtin) = self.gtin else {
            let problem = |ai: Ai| UdiProblem::MissingGtin {
                required_by: ai.code().to_owned(),
            };
            return Err(match self.first {
                Some((ai, pos)) => UdiError::at(Some(Ai::Gtin), pos, problem(ai)),
                None => UdiError::at(None, base, UdiProblem::Empty),
            });
        };
        Ok(Udi {
            gtin,
            lot: self.lot,
            serial: self.serial,
            expiry: self.expiry,
            production_date: self.production_date,
        })
    }
}

/// Fixed-length numeric value: digits first, so a stray letter is named.
fn validate_digits(element: &Element, len: usize) -> Result<String, UdiError> {
    if let Some(&(c, pos)) = element.value.iter().find(|(c, _)| !c.is_ascii_digit()) {
        return Err(UdiError::at(Some(element.ai), pos, UdiProblem::NotDigit(c)));
    }
    if element.value.len() != len {
        let problem = UdiProblem::WrongLength {
            expected: len,
            found: element.value.len(),
        };
        return Err(UdiError::at(Some(element.ai), element.value_pos, problem));
    }
    Ok(element.value.iter().map(|&(c, _)| c).collect())
}

fn validate_gtin(element: &Element) -> Result<String, UdiError> {
    let gtin = validate_digits(element, 14)?;
    let (first13, last) = gtin.split_at(13);
    let expected = gtin_check_digit(first13);
    let found = last.parse::<u8>().ok();
    match (expected, found) {
        (Some(expected), Some(found)) if expected != found => {
            let problem = UdiProblem::CheckDigit { expected, found };
            Err(UdiError::at(Some(Ai::Gtin), element.value_pos, problem))
        }
        _ => Ok(gtin),
    }
}

fn validate_date(element: &Element, today: NaiveDate) -> Result<NaiveDate, UdiError> {
    let value = validate_digits(element, 6)?;
    // Six ASCII digits by now: YY, MM, DD.
    let pair = |i: usize| {
        let digit = |j: usize| value.as_bytes().get(j).map_or(0, |b| u32::from(b - b'0'));
        digit(i) * 10 + digit(i + 1)
    };
    let (yy, month, day) = (pair(0), pair(2), pair(4));
    let year = resolve_century(yy, today);
    let date = if day == 0 {
        last_day_of_month(year, month)
    } else {
        NaiveDate::from_ymd_opt(year, month, day)
    };
    date.ok_or_else(|| {
        let problem = UdiProblem::BadDate {
            value,
            year,
            month,
            day,
        };
        UdiError::at(Some(element.ai), element.value_pos, problem)
    })
}

/// GS1 General Specifications 7.12: a two-digit year is taken within
/// 49 years before and 50 years after the current year.
fn resolve_century(yy: u32, today: NaiveDate) -> i32 {
    let current = today.year().rem_euclid(100);
    let century = today.year() - current;
    let yy = i32::try_from(yy).unwrap_or_default(); // at most 99
    let diff = yy - current;
    if diff >= 51 {
        century - 100 + yy
    } else if diff > -50 {
        century + yy
    } else {
        century + 100 + yy
    }
}

fn last_day_of_month(year: i32, month: u32) -> Option<NaiveDate> {
    (28..=31)
        .rev()
        .find_map(|day| NaiveDate::from_ymd_opt(year, month, day))
}

fn validate_variable(element: &Element) -> Result<String, UdiError> {
    let ai = Some(element.ai);
    if element.value.is_empty() {
        return Err(UdiError::at(ai, element.value_pos, UdiProblem::EmptyValue));
    }
    if let Some(&(c, pos)) = element.value.iter().find(|(c, _)| !is_cset82(*c)) {
        return Err(UdiError::at(ai, pos, UdiProblem::BadCharacter(c)));
    }
    if element.value.len() > MAX_VARIABLE_LEN {
        let problem = UdiProblem::TooLong {
            max: MAX_VARIABLE_LEN,
            found: element.value.len(),
        };
        return Err(UdiError::at(ai, element.value_pos, problem));
    }
    Ok(element.value.iter().map(|&(c, _)| c).collect())
}

fn yymmdd(date: NaiveDate) -> String {
    format!(
        "{:02}{:02}{:02}",
        date.year().rem_euclid(100),
        date.month(),
        date.day()
    )
}

// ---------------------------------------------------------------- bracketed

/// `(AI)value...`: the caller has checked that the text starts with `(`, and
/// values end at the next `(`, so every loop turn starts on one.
fn parse_bracketed(text: &Text, out: &mut Builder) -> Result<(), UdiError> {
    let mut open = 0;
    while open < text.len() {
        let close = text
            .find(open + 1, text.len(), |c| c == ')')
            .ok_or_else(|| UdiError::at(None, text.pos(open), UdiProblem::UnclosedBracket))?;
        let ai = bracketed_ai(text, open + 1..close)?;
        let end = text
            .find(close + 1, text.len(), |c| c == '(')
            .unwrap_or(text.len());
        out.add(Element {
            ai,
            ai_pos: text.pos(open + 1),
            value: text.spanned(close + 1..end),
            value_pos: text.pos(close + 1),
        })?;
        open = end;
    }
    Ok(())
}

fn bracketed_ai(text: &Text, code: Range<usize>) -> Result<Ai, UdiError> {
    if let Some(i) = text.find(code.start, code.end, |c| !c.is_ascii_digit()) {
        let found = text.chars.get(i).copied();
        return Err(UdiError::at(
            None,
            text.pos(i),
            UdiProblem::ExpectedAi { found },
        ));
    }
    if code.is_empty() {
        return Err(UdiError::at(
            None,
            text.pos(code.end),
            UdiProblem::ExpectedAi { found: Some(')') },
        ));
    }
    let digits = text.string(code.clone());
    Ai::from_code(&digits).ok_or_else(|| UdiError::unknown_ai(digits, text.pos(code.start)))
}

// ---------------------------------------------------------------------- raw

fn parse_raw(text: &Text, out: &mut Builder) -> Result<(), UdiError> {
    let mut i = skip_symbology_id(text)?;
    if i >= text.len() {
        return Err(UdiError::at(None, text.pos(i), UdiProblem::Empty));
    }
    let mut after_fixed = false;
    while i < text.len() {
        if after_fixed && text.chars.get(i) == Some(&GS) {
            i += 1;
            after_fixed = false;
            continue;
        }
        let ai = raw_ai(text, i)?;
        let start = i + 2;
        let end = match ai.fixed_len() {
            Some(len) => (start + len).min(text.len()),
            None => text
                .find(start, text.len(), |c| c == GS)
                .unwrap_or(text.len()),
        };
        out.add(Element {
            ai,
            ai_pos: text.pos(i),
            value: text.spanned(start..end),
            value_pos: text.pos(start),
        })?;
        after_fixed = ai.fixed_len().is_some();
        // Step over the GS that ended a variable-length value.
        i = if after_fixed { end } else { end + 1 };
    }
    Ok(())
}

fn skip_symbology_id(text: &Text) -> Result<usize, UdiError> {
    if text.chars.first() != Some(&']') {
        return Ok(0);
    }
    let id = text.string(0..text.len().min(3));
    if SYMBOLOGY_IDS.contains(&id.as_str()) {
        Ok(3)
    } else {
        Err(UdiError::at(
            None,
            text.pos(0),
            UdiProblem::UnknownSymbology(id),
        ))
    }
}

/// Reads the two-digit AI at `i`, naming an unsupported one in full.
fn raw_ai(text: &Text, i: usize) -> Result<Ai, UdiError> {
    for j in [i, i + 1] {
        let found = text.chars.get(j).copied();
        if !found.is_some_and(|c| c.is_ascii_digit()) {
            return Err(UdiError::at(
                None,
                text.pos(j),
                UdiProblem::ExpectedAi { found },
            ));
        }
    }
    let code = text.string(i..i + 2);
    if let Some(ai) = Ai::from_code(&code) {
        return Ok(ai);
    }
    let end = (i + ai_code_len(&code)).min(text.len());
    let end = text.find(i, end, |c| !c.is_ascii_digit()).unwrap_or(end);
    Err(UdiError::unknown_ai(text.string(i..end), text.pos(i)))
}

// ------------------------------------------------------------- Digital Link

/// Length of an `http://` or `https://` scheme (any case), if the text has one.
fn link_scheme_len(text: &Text) -> Option<usize> {
    ["https://", "http://"].into_iter().find_map(|scheme| {
        let head = text.string(0..scheme.len().min(text.len()));
        head.eq_ignore_ascii_case(scheme).then_some(scheme.len())
    })
}

fn parse_link(text: &Text, scheme_len: usize, out: &mut Builder) -> Result<(), UdiError> {
    let len = text.len();
    let host_end = text
        .find(scheme_len, len, |c| matches!(c, '/' | '?' | '#'))
        .unwrap_or(len);
    if host_end == scheme_len {
        return Err(malformed(None, text.pos(scheme_len), MISSING_HOST));
    }
    let path_end = text
        .find(host_end, len, |c| matches!(c, '?' | '#'))
        .unwrap_or(len);
    let segments = path_segments(text, host_end..path_end);
    let primary = primary_key_index(text, &segments)
        .ok_or_else(|| malformed(None, text.pos(host_end), LINK_SHAPE))?;
    push_link_path(text, segments.get(primary..).unwrap_or_default(), out)?;
    if text.chars.get(path_end) == Some(&'?') {
        let query_end = text.find(path_end, len, |c| c == '#').unwrap_or(len);
        push_link_query(text, path_end + 1..query_end, out)?;
    }
    Ok(())
}

const LINK_SHAPE: &str = "path must end with /01/{gtin}[/10/{lot}][/21/{serial}]";
const LOT_BEFORE_SERIAL: &str = "/10/ must come before /21/";
const DATES_IN_QUERY: &str = "dates belong in the query string";
const MISSING_HOST: &str = "missing host";

fn malformed(ai: Option<Ai>, position: usize, why: &'static str) -> UdiError {
    UdiError::at(ai, position, UdiProblem::MalformedLink(why))
}

/// The `/`-separated segments of `path` (which starts with `/` unless empty);
/// one trailing `/` is tolerated.
fn path_segments(text: &Text, path: Range<usize>) -> Vec<Range<usize>> {
    if path.is_empty() {
        return Vec::new();
    }
    let mut segments = Vec::new();
    let mut start = path.start + 1;
    while let Some(slash) = text.find(start, path.end, |c| c == '/') {
        segments.push(start..slash);
        start = slash + 1;
    }
    segments.push(start..path.end);
    if segments.len() > 1 && segments.last().is_some_and(Range::is_empty) {
        segments.pop();
    }
    segments
}

/// The index of the `01` key. Keys and values alternate up to the end of the
/// path, so keys sit at an even distance from the end; the last such `01`
/// is the key (an earlier one belongs to the path prefix).
fn primary_key_index(text: &Text, segments: &[Range<usize>]) -> Option<usize> {
    // n-2, n-4, ...: the key positions.
    (0..segments.len())
        .rev()
        .skip(1)
        .step_by(2)
        .find(|&i| text.string(segments[i].clone()) == "01")
}

/// Pushes `/01/{gtin}` and the `/10/` and `/21/` pairs after it.
fn push_link_path(text: &Text, pairs: &[Range<usize>], out: &mut Builder) -> Result<(), UdiError> {
    let mut after_serial = false;
    for (index, pair) in pairs.chunks_exact(2).enumerate() {
        let (key, value) = (pair[0].clone(), pair[1].clone());
        let ai = if index == 0 {
            Ai::Gtin
        } else {
            path_qualifier(text, key.clone(), after_serial)?
        };
        after_serial |= ai == Ai::Serial;
        let mut decoded = percent_decode(text, value.clone(), ai)?;
        if ai == Ai::Gtin {
            decoded = pad_gtin(decoded, text.pos(value.start))?;
        }
        out.add(Element {
            ai,
            ai_pos: text.pos(key.start),
            value: decoded,
            value_pos: text.pos(value.start),
        })?;
    }
    Ok(())
}

fn path_qualifier(text: &Text, key: Range<usize>, after_serial: bool) -> Result<Ai, UdiError> {
    let code = text.string(key.clone());
    let pos = text.pos(key.start);
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(None, pos, LINK_SHAPE));
    }
    match Ai::from_code(&code) {
        Some(Ai::Lot) if after_serial => Err(malformed(Some(Ai::Lot), pos, LOT_BEFORE_SERIAL)),
        Some(ai @ (Ai::Gtin | Ai::Lot | Ai::Serial)) => Ok(ai),
        Some(ai) => Err(malformed(Some(ai), pos, DATES_IN_QUERY)),
        None => Err(UdiError::unknown_ai(code, pos)),
    }
}

/// Digital Link allows GTIN-8, -12 and -13, which are GTIN-14s with leading
/// zeros dropped. Non-digits are left for the common validation to name.
fn pad_gtin(gtin: Spanned, value_pos: usize) -> Result<Spanned, UdiError> {
    if !gtin.iter().all(|(c, _)| c.is_ascii_digit()) {
        return Ok(gtin);
    }
    match gtin.len() {
        14 => Ok(gtin),
        8 | 12 | 13 => Ok(iter::repeat_n(('0', value_pos), 14 - gtin.len())
            .chain(gtin)
            .collect()),
        found => Err(UdiError::at(
            Some(Ai::Gtin),
            value_pos,
            UdiProblem::GtinLength { found },
        )),
    }
}

/// Pushes the AIs among `&`-separated `key=value` parameters.
fn push_link_query(text: &Text, query: Range<usize>, out: &mut Builder) -> Result<(), UdiError> {
    let mut start = query.start;
    while start <= query.end {
        let end = text
            .find(start, query.end, |c| c == '&')
            .unwrap_or(query.end);
        push_query_param(text, start..end, out)?;
        start = end + 1;
    }
    Ok(())
}

fn push_query_param(text: &Text, param: Range<usize>, out: &mut Builder) -> Result<(), UdiError> {
    let eq = text.find(param.start, param.end, |c| c == '=');
    let key = param.start..eq.unwrap_or(param.end);
    let value = eq.map_or(param.end..param.end, |eq| eq + 1..param.end);
    let code = text.string(key.clone());
    // Non-numeric keys (linkType, context, ...) are Digital Link options,
    // not AIs, and say nothing about the cartridge.
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    let Some(ai) = Ai::from_code(&code) else {
        return Err(UdiError::unknown_ai(code, text.pos(key.start)));
    };
    out.add(Element {
        ai,
        ai_pos: text.pos(key.start),
        value: percent_decode(text, value.clone(), ai)?,
        value_pos: text.pos(value.start),
    })
}

/// Decodes `%XX` escapes (UTF-8), keeping for each character the position
/// of its first source character.
fn percent_decode(text: &Text, range: Range<usize>, ai: Ai) -> Result<Spanned, UdiError> {
    let bad_escape = |pos: usize| UdiError::at(Some(ai), pos, UdiProblem::BadEscape);
    let mut bytes: Vec<(u8, usize)> = Vec::new();
    let mut i = range.start;
    while i < range.end {
        let c = text.chars.get(i).copied().unwrap_or_default();
        let pos = text.pos(i);
        if c == '%' {
            let byte = (i + 2 < range.end).then(|| hex_byte(text, i + 1)).flatten();
            bytes.push((byte.ok_or_else(|| bad_escape(pos))?, pos));
            i += 3;
        } else {
            let mut buf = [0; 4];
            bytes.extend(c.encode_utf8(&mut buf).bytes().map(|b| (b, pos)));
            i += 1;
        }
    }
    let raw: Vec<u8> = bytes.iter().map(|&(b, _)| b).collect();
    match std::str::from_utf8(&raw) {
        Ok(decoded) => Ok(decoded
            .char_indices()
            .map(|(at, c)| (c, bytes[at].1))
            .collect()),
        Err(e) => Err(bad_escape(
            bytes
                .get(e.valid_up_to())
                .map_or(text.pos(range.start), |b| b.1),
        )),
    }
}

fn hex_byte(text: &Text, i: usize) -> Option<u8> {
    let digit = |j: usize| text.chars.get(j).and_then(|c| c.to_digit(16));
    u8::try_from(digit(i)? * 16 + digit(i + 1)?).ok()
}

/// Escapes everything but RFC 3986 unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: &str = "09506000134352";
    const CSET82: &str =
        "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

    fn date(year: i32, month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(year, month, day).unwrap()
    }

    fn udi(gtin: &str) -> Udi {
        Udi {
            gtin: gtin.to_owned(),
            lot: None,
            serial: None,
            expiry: None,
            production_date: None,
        }
    }

    /// The example of the docs and the README:
    /// (01)09506000134352(17)270200(10)A1B2(21)SN0001.
    fn example() -> Udi {
        Udi {
            lot: Some("A1B2".to_owned()),
            serial: Some("SN0001".to_owned()),
            expiry: Some(date(2027, 2, 28)),
            ..udi(G)
        }
    }

    fn lot(lot: &str) -> Udi {
        Udi {
            lot: Some(lot.to_owned()),
            ..udi(G)
        }
    }

    fn serial(serial: &str) -> Udi {
        Udi {
            serial: Some(serial.to_owned()),
            ..udi(G)
        }
    }

    fn expiry(year: i32, month: u32, day: u32) -> Udi {
        Udi {
            expiry: Some(date(year, month, day)),
            ..udi(G)
        }
    }

    fn bad_date(value: &str, year: i32, month: u32, day: u32) -> UdiProblem {
        UdiProblem::BadDate {
            value: value.to_owned(),
            year,
            month,
            day,
        }
    }

    struct Case {
        input: String,
        today: NaiveDate,
        expect: Result<Udi, (Option<&'static str>, usize, UdiProblem)>,
    }

    /// Parsed with today = 2026-11-25 unless `on` says otherwise.
    fn ok(input: &str, udi: Udi) -> Case {
        Case {
            input: input.to_owned(),
            today: date(2026, 11, 25),
            expect: Ok(udi),
        }
    }

    fn err(input: &str, ai: Option<&'static str>, position: usize, problem: UdiProblem) -> Case {
        Case {
            input: input.to_owned(),
            today: date(2026, 11, 25),
            expect: Err((ai, position, problem)),
        }
    }

    fn on(today: NaiveDate, case: Case) -> Case {
        Case { today, ..case }
    }

    fn cases() -> Vec<Case> {
        use UdiProblem::*;
        let b = |rest: &str| format!("(01){G}{rest}");
        let link = |rest: &str| format!("https://id.example/01/{G}{rest}");
        vec![
            // The three forms of the example.
            ok("(01)09506000134352(17)270200(10)A1B2(21)SN0001", example()),
            ok(
                concat!(
                    "]d2",
                    "0109506000134352",
                    "17270200",
                    "10A1B2\x1d",
                    "21SN0001"
                ),
                example(),
            ),
            ok(
                "https://id.example/01/09506000134352/10/A1B2/21/SN0001?17=270200",
                example(),
            ),
            ok(&format!("(21)SN0001(10)A1B2(17)270200(01){G}"), example()),
            err(
                &b("(17)270231(10)A1B2(21)SN0001"),
                Some("17"),
                22,
                bad_date("270231", 2027, 2, 31),
            ),
            err(
                "(01)09506000134353(17)270200",
                Some("01"),
                4,
                CheckDigit {
                    expected: 2,
                    found: 3,
                },
            ),
            err(
                "  (01)09506000134353",
                Some("01"),
                6,
                CheckDigit {
                    expected: 2,
                    found: 3,
                },
            ),
            // Dates: day 00, leap years, months.
            ok(&b("(17)240200"), expiry(2024, 2, 29)),
            ok(&b("(17)240229"), expiry(2024, 2, 29)),
            ok(&b("(17)261200"), expiry(2026, 12, 31)),
            err(
                &b("(17)250229"),
                Some("17"),
                22,
                bad_date("250229", 2025, 2, 29),
            ),
            err(
                &b("(17)271301"),
                Some("17"),
                22,
                bad_date("271301", 2027, 13, 1),
            ),
            err(
                &b("(11)250431"),
                Some("11"),
                22,
                bad_date("250431", 2025, 4, 31),
            ),
            ok(
                &b("(11)250100(17)270200"),
                Udi {
                    production_date: Some(date(2025, 1, 31)),
                    ..expiry(2027, 2, 28)
                },
            ),
            err(
                &b("(17)27020"),
                Some("17"),
                22,
                WrongLength {
                    expected: 6,
                    found: 5,
                },
            ),
            // Century rule boundaries.
            ok(&b("(17)760101"), expiry(2076, 1, 1)),
            ok(&b("(17)770101"), expiry(1977, 1, 1)),
            on(date(2080, 6, 15), ok(&b("(17)300101"), expiry(2130, 1, 1))),
            on(date(2080, 6, 15), ok(&b("(17)310101"), expiry(2031, 1, 1))),
            on(date(2099, 12, 31), ok(&b("(17)000101"), expiry(2100, 1, 1))),
            // Structure.
            err("", None, 0, Empty),
            err(" \t ", None, 0, Empty),
            err("]d2", None, 3, Empty),
            err(
                "(17)270200(10)A1B2",
                Some("01"),
                1,
                MissingGtin {
                    required_by: "17".to_owned(),
                },
            ),
            err(
                "17270200",
                Some("01"),
                0,
                MissingGtin {
                    required_by: "17".to_owned(),
                },
            ),
            err(&b("(240)ABC"), Some("240"), 19, UnknownAi),
            err(&format!("]d201{G}240ABC"), Some("240"), 19, UnknownAi),
            err(&format!("]d201{G}99X"), Some("99"), 19, UnknownAi),
            err(&b("(10)A(10)B"), Some("10"), 24, Duplicate),
            err(&b("(17)270200(17)270200"), Some("17"), 29, Duplicate),
            err("(01", None, 0, UnclosedBracket),
            err(&b("(1x)A"), None, 20, ExpectedAi { found: Some('x') }),
            err(&format!("]d201{G}1"), None, 20, ExpectedAi { found: None }),
            err(
                &format!("]e001{G}"),
                None,
                0,
                UnknownSymbology("]e0".to_owned()),
            ),
            ok(&b(""), udi(G)),
            ok(&b("(10)A1B2  \n"), lot("A1B2")),
            // GTIN.
            err(
                "(01)0950600013435",
                Some("01"),
                4,
                WrongLength {
                    expected: 14,
                    found: 13,
                },
            ),
            err(
                "]d2010950600013",
                Some("01"),
                5,
                WrongLength {
                    expected: 14,
                    found: 10,
                },
            ),
            err("(01)0950600013435X", Some("01"), 17, NotDigit('X')),
            // Lot and serial.
            ok(&b("(10)ABCDEFGHIJKLMNOPQRST"), lot("ABCDEFGHIJKLMNOPQRST")),
            err(
                &b("(10)ABCDEFGHIJKLMNOPQRSTU"),
                Some("10"),
                22,
                TooLong { max: 20, found: 21 },
            ),
            ok(&b("(10)A)B"), lot("A)B")),
            err(&b("(10)Aé"), Some("10"), 23, BadCharacter('é')),
            err(&b("(10)A B"), Some("10"), 23, BadCharacter(' ')),
            err(&b("(21)S#1"), Some("21"), 23, BadCharacter('#')),
            err(
                &format!("]d201{G}10A\x01B"),
                Some("10"),
                22,
                BadCharacter('\u{1}'),
            ),
            err(&b("(10)"), Some("10"), 22, EmptyValue),
            // Raw data.
            ok(&format!("]C101{G}17270200"), expiry(2027, 2, 28)),
            ok(
                &format!("]Q301{G}10A1B2\x1d21SN0001"),
                Udi {
                    serial: Some("SN0001".to_owned()),
                    ..lot("A1B2")
                },
            ),
            ok(&format!("01{G}21SN0001"), serial("SN0001")),
            ok(
                &format!("]d201{G}17270200\x1d10A1B2\x1d"),
                Udi {
                    lot: Some("A1B2".to_owned()),
                    ..expiry(2027, 2, 28)
                },
            ),
            // Without its GS a lot runs on into what follows.
            ok(&format!("]d201{G}10A1B221SN0001"), lot("A1B221SN0001")),
            // Digital Link.
            ok("https://id.example/01/96385074", udi("00000096385074")),
            ok("https://id.example/01/036000291452", udi("00036000291452")),
            ok("https://id.example/01/4006381333931", udi("04006381333931")),
            err(
                "https://id.example/01/0950600013",
                Some("01"),
                22,
                GtinLength { found: 10 },
            ),
            ok(&link("/21/SN%2F0001"), serial("SN/0001")),
            ok(&link("/10/%41%62"), lot("Ab")),
            err(&link("/10/A%20B"), Some("10"), 41, BadCharacter(' ')),
            err(&link("/10/%C3%A9"), Some("10"), 40, BadCharacter('é')),
            err(&link("/10/A%2"), Some("10"), 41, BadEscape),
            err(&link("/10/%FF"), Some("10"), 40, BadEscape),
            ok(&format!("http://id.example/01/{G}"), udi(G)),
            ok(&format!("HTTPS://id.example/01/{G}/"), udi(G)),
            ok(
                &format!("https://example.com/some/prefix/01/{G}/10/A1B2?17=270200&11=250100"),
                Udi {
                    production_date: Some(date(2025, 1, 31)),
                    lot: Some("A1B2".to_owned()),
                    ..expiry(2027, 2, 28)
                },
            ),
            ok(&format!("https://example.com/01/x/01/{G}"), udi(G)),
            ok(
                &link("?10=A1B2&21=SN0001"),
                Udi {
                    serial: Some("SN0001".to_owned()),
                    ..lot("A1B2")
                },
            ),
            ok(
                &link("?linkType=gs1:pip&17=270200#top"),
                expiry(2027, 2, 28),
            ),
            err(&link("?17=270200&99=x"), Some("99"), 47, UnknownAi),
            err(&link("/10/A1B2?10=A1B2"), Some("10"), 45, Duplicate),
            err(&link("?01=09506000134352"), Some("01"), 37, Duplicate),
            err(&link("/22/V1"), Some("22"), 37, UnknownAi),
            err(
                &link("/17/270200"),
                Some("17"),
                37,
                MalformedLink(DATES_IN_QUERY),
            ),
            err(
                &link("/21/S1/10/L1"),
                Some("10"),
                43,
                MalformedLink(LOT_BEFORE_SERIAL),
            ),
            err(
                "https://id.example/10/A1B2",
                None,
                18,
                MalformedLink(LINK_SHAPE),
            ),
            err(
                "https:///01/09506000134352",
                None,
                8,
                MalformedLink(MISSING_HOST),
            ),
        ]
    }

    #[test]
    fn table() {
        let cases = cases();
        assert!(cases.len() >= 30);
        let mut failures = Vec::new();
        for case in cases {
            let got = Udi::parse(&case.input, case.today);
            let got = got.map_err(|e| (e.ai, e.position, e.problem));
            let want = case
                .expect
                .map_err(|(ai, pos, problem)| (ai.map(str::to_owned), pos, problem));
            if got != want {
                failures.push(format!(
                    "{:?} on {}:\n  got  {got:?}\n  want {want:?}",
                    case.input, case.today
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn messages_name_the_ai_and_position() {
        let today = date(2026, 11, 25);
        let check = Udi::parse("(01)09506000134353(17)270200", today).unwrap_err();
        assert_eq!(
            check.to_string(),
            "AI (01) at position 4: check digit is 3, expected 2"
        );
        let bad = Udi::parse(&format!("(01){G}(17)270231"), today).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "AI (17) at position 22: 270231 is not a date (no day 31 in 2027-02)"
        );
        let month = Udi::parse(&format!("(01){G}(11)271300"), today).unwrap_err();
        assert_eq!(
            month.to_string(),
            "AI (11) at position 22: 271300 is not a date (no month 13)"
        );
        let empty = Udi::parse("", today).unwrap_err();
        assert_eq!(empty.to_string(), "UDI at position 0: input is empty");
        let control = Udi::parse(&format!("(01){G}(10)A\nB"), today).unwrap_err();
        assert_eq!(
            control.to_string(),
            "AI (10) at position 23: character '\\n' (U+000A) is not in the GS1 character set 82"
        );
        let unknown = Udi::parse(&format!("(01){G}(240)X"), today).unwrap_err();
        assert!(
            unknown
                .to_string()
                .starts_with("AI (240) at position 19: unsupported AI")
        );
    }

    #[test]
    fn renders_every_form() {
        let full = Udi {
            production_date: Some(date(2025, 1, 31)),
            ..example()
        };
        assert_eq!(
            full.to_bracketed(),
            format!("(01){G}(11)250131(17)270228(10)A1B2(21)SN0001")
        );
        assert_eq!(
            full.to_raw(),
            format!("]d201{G}112501311727022810A1B2\x1d21SN0001")
        );
        assert_eq!(lot("A1B2").to_raw(), format!("]d201{G}10A1B2"));
        assert_eq!(
            full.to_digital_link("https://id.example/"),
            format!("https://id.example/01/{G}/10/A1B2/21/SN0001?17=270228&11=250131")
        );
        assert_eq!(
            serial("a/b?c%d+e").to_digital_link("https://id.example"),
            format!("https://id.example/01/{G}/21/a%2Fb%3Fc%25d%2Be")
        );
        assert_eq!(
            udi(G).to_digital_link("https://id.example"),
            format!("https://id.example/01/{G}")
        );
    }

    #[test]
    fn a_digital_link_with_a_stray_character_outside_its_elements_is_invalid() {
        let today = date(2026, 1, 1);
        let link = format!("https://id.example/01/{G}/21/SN1");
        assert!(Udi::parse(&link, today).is_ok());
        for bad in [
            format!("https://id.\u{fffd}example/01/{G}/21/SN1"),
            format!("https://id.example/a\u{0}b/01/{G}/21/SN1"),
            format!("https://id.example/01/{G}/21/SN1#x\u{7f}"),
            format!("https://id.ex ample/01/{G}/21/SN1"),
        ] {
            let e = Udi::parse(&bad, today).unwrap_err();
            assert!(
                matches!(e.problem, UdiProblem::BadCharacter(_)),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn check_digit_helper() {
        assert_eq!(gtin_check_digit("0950600013435"), Some(2));
        assert_eq!(gtin_check_digit("0000009638507"), Some(4));
        assert_eq!(gtin_check_digit("095060001343"), None);
        assert_eq!(gtin_check_digit("095060001343X"), None);
        assert_eq!(gtin_check_digit("09506000134352"), None);
    }

    #[test]
    fn charset_is_the_82_set() {
        assert_eq!(CSET82.chars().count(), 82);
        let accepted: String = (0..128u8)
            .map(char::from)
            .filter(|&c| is_cset82(c))
            .collect();
        assert_eq!(accepted, CSET82);
    }

    #[test]
    fn serializes_without_absent_fields() {
        let json = serde_json::to_string(&lot("A1")).unwrap();
        assert_eq!(json, format!(r#"{{"gtin":"{G}","lot":"A1"}}"#));
    }

    // ------------------------------------------------------------ properties

    fn gs1_text(chars: &'static str) -> impl Strategy<Value = String> {
        let chars: Vec<char> = chars.chars().collect();
        prop::collection::vec(prop::sample::select(chars), 1..=MAX_VARIABLE_LEN)
            .prop_map(|cs| cs.into_iter().collect())
    }

    fn any_today() -> impl Strategy<Value = NaiveDate> {
        (1950i32..=2150, 1u32..=365)
            .prop_map(|(year, day)| NaiveDate::from_yo_opt(year, day).unwrap())
    }

    /// A date whose year is within 49 years of `today`'s, where the century
    /// rule is unambiguous.
    fn near(today: NaiveDate, (years, month, day): (i32, u32, u32)) -> NaiveDate {
        let year = today.year() + years;
        NaiveDate::from_ymd_opt(year, month, day)
            .unwrap_or_else(|| last_day_of_month(year, month).unwrap())
    }

    fn any_gtin() -> impl Strategy<Value = String> {
        "[0-9]{13}".prop_map(|first13| format!("{first13}{}", gtin_check_digit(&first13).unwrap()))
    }

    /// A valid UDI with the `today` its dates are meant for; lots and serials
    /// drawn from `chars`.
    fn any_udi(chars: &'static str) -> impl Strategy<Value = (Udi, NaiveDate)> {
        let offset = (-49i32..=49, 1u32..=12, 1u32..=31);
        (
            any_today(),
            any_gtin(),
            prop::option::of(gs1_text(chars)),
            prop::option::of(gs1_text(chars)),
            prop::option::of(offset.clone()),
            prop::option::of(offset),
        )
            .prop_map(|(today, gtin, lot, serial, expiry, production)| {
                let udi = Udi {
                    gtin,
                    lot,
                    serial,
                    expiry: expiry.map(|o| near(today, o)),
                    production_date: production.map(|o| near(today, o)),
                };
                (udi, today)
            })
    }

    /// Printable and control characters around the syntax the parser cares about.
    fn token_soup() -> impl Strategy<Value = String> {
        let tokens = vec![
            "(",
            ")",
            "01",
            "10",
            "11",
            "17",
            "21",
            "99",
            "240",
            "\x1d",
            "]d2",
            "]C1",
            "https://",
            "http://h",
            "/",
            "?",
            "&",
            "=",
            "#",
            "%",
            "%2",
            "%C3",
            "%A9",
            "%FF",
            "0",
            "9",
            "A",
            "é",
            " ",
            "\n",
            G,
            "0950600013435",
            "270200",
            "000000",
            "999999",
            "ABCDEFGHIJKLMNOPQRSTU",
        ];
        prop::collection::vec(prop::sample::select(tokens), 0..20).prop_map(|ts| ts.concat())
    }

    /// Whatever parses, parses again identically from each rendered form.
    fn check_accepted(input: &str, today: NaiveDate) -> Result<(), TestCaseError> {
        match Udi::parse(input, today) {
            Ok(udi) => {
                prop_assert_eq!(udi.gtin.len(), 14);
                prop_assert_eq!(Udi::parse(&udi.to_raw(), today), Ok(udi.clone()));
                let link = udi.to_digital_link("https://id.example");
                prop_assert_eq!(Udi::parse(&link, today), Ok(udi));
            }
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn every_form_round_trips(
            (udi, today) in any_udi(CSET82),
            prefix in prop::sample::select(vec!["]d2", "]C1", "]Q3", ""]),
            base in prop::sample::select(vec![
                "https://id.example", "http://id.example/", "https://example.com/a/01/b",
            ]),
        ) {
            let raw = format!("{prefix}{}", udi.to_raw().trim_start_matches("]d2"));
            prop_assert_eq!(Udi::parse(&raw, today), Ok(udi.clone()));
            prop_assert_eq!(Udi::parse(&udi.to_digital_link(base), today), Ok(udi.clone()));
            // A `(` in a value would start a new AI in bracketed text.
            let paren = |v: &Option<String>| v.as_ref().is_some_and(|v| v.contains('('));
            if !paren(&udi.lot) && !paren(&udi.serial) {
                prop_assert_eq!(Udi::parse(&udi.to_bracketed(), today), Ok(udi));
            }
        }

        #[test]
        fn bracketed_round_trips_without_open_paren(
            (udi, today) in any_udi(
                "!\"%&')*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
            ),
        ) {
            prop_assert_eq!(Udi::parse(&udi.to_bracketed(), today), Ok(udi));
        }

        #[test]
        fn wrong_check_digit_is_rejected(
            first13 in "[0-9]{13}",
            delta in 1u8..=9,
            today in any_today(),
        ) {
            let expected = gtin_check_digit(&first13).unwrap();
            let found = (expected + delta) % 10;
            let wrong = Udi { gtin: format!("{first13}{found}"), ..udi(G) };
            let forms = [wrong.to_bracketed(), wrong.to_raw(), wrong.to_digital_link("https://x.example")];
            for form in forms {
                let e = Udi::parse(&form, today).unwrap_err();
                prop_assert_eq!(e.ai.as_deref(), Some("01"));
                prop_assert_eq!(e.problem, UdiProblem::CheckDigit { expected, found });
            }
        }

        #[test]
        fn a_stray_character_anywhere_makes_any_form_invalid(
            (udi, today) in any_udi(CSET82),
            form in 0usize..3,
            at in any::<prop::sample::Index>(),
            stray in any::<char>().prop_filter("not printable ASCII, GS or trimmed", |c| {
                !(c.is_ascii_graphic() || *c == GS || c.is_ascii_whitespace())
            }),
        ) {
            let text = match form {
                0 => udi.to_raw(),
                1 => udi.to_bracketed(),
                _ => udi.to_digital_link("https://id.example"),
            };
            let mut chars: Vec<char> = text.chars().collect();
            chars.insert(at.index(chars.len() + 1), stray);
            let input: String = chars.into_iter().collect();
            prop_assert!(Udi::parse(&input, today).is_err(), "{input:?} parsed");
        }

        #[test]
        fn never_panics_on_any_string(input in any::<String>(), today in any_today()) {
            check_accepted(&input, today)?;
        }

        #[test]
        fn never_panics_on_printable_ascii(input in "[ -~]{0,80}", today in any_today()) {
            check_accepted(&input, today)?;
        }

        #[test]
        fn never_panics_on_token_soup(input in token_soup(), today in any_today()) {
            check_accepted(&input, today)?;
        }
    }
}
