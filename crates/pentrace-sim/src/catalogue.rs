//! The simulated cartridge catalogue: products, lots, and how a cartridge's
//! UDI reads in each of the three GS1 forms a pen's scanner may produce.

use chrono::{Datelike, Duration, NaiveDate};

/// Registered cartridge products (GTIN-14 with valid check digits), with
/// no rating of their own: an ordinary session never overuses them.
pub const PRODUCTS: [(&str, &str); 2] = [
    ("09506000134352", "Sim Nano 12-pin cartridge"),
    ("09506000134369", "Sim Nano 36-pin cartridge"),
];

/// The registered product rated for [`RATED_STROKES`]: only the sessions of
/// the `resume_overuse` fault use it, so no other session can overuse.
pub const RATED_PRODUCT: (&str, &str) = ("09506000134376", "Sim Nano 12-pin cartridge, rated");

/// Strokes [`RATED_PRODUCT`] is rated for (a few sessions' worth of
/// batches, whatever `--batches` says: those sessions size their own).
pub const RATED_STROKES: u64 = 1000;

/// A GTIN-14 with a valid check digit that the simulator never registers.
pub const UNKNOWN_GTIN: &str = "04012345000016";

/// The lot every ordinary cartridge comes from.
pub const OK_LOT: &str = "SIM-OK";

/// The lot that `--setup` recalls before any simulated session starts.
pub const RECALLED_LOT: &str = "SIM-RECALLED";

/// Shelf life of the simulated products (the lots expire this long after
/// setup).
pub const SHELF_LIFE_DAYS: i64 = 730;

/// Group separator, which ends variable-length values in raw scanner data.
const GS: char = '\u{1d}';

/// The textual form a pen's scanner reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdiForm {
    /// `(01)…(17)…(10)…(21)…`
    Bracketed,
    /// `]d2` + element string with GS separators.
    Raw,
    /// `https://id.example/01/…/10/…/21/…?17=…`
    DigitalLink,
}

impl UdiForm {
    /// Every form.
    pub const ALL: [UdiForm; 3] = [UdiForm::Bracketed, UdiForm::Raw, UdiForm::DigitalLink];
}

/// What a cartridge's label says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub gtin: String,
    /// AI (17) as printed: `YYMMDD`, or `YYMM00` for "end of month".
    pub expiry: String,
    pub lot: String,
    pub serial: String,
}

impl Label {
    /// The UDI as a scanner of `form` reports it.
    pub fn udi(&self, form: UdiForm) -> String {
        let Label {
            gtin,
            expiry,
            lot,
            serial,
        } = self;
        match form {
            UdiForm::Bracketed => format!("(01){gtin}(17){expiry}(10){lot}(21){serial}"),
            UdiForm::Raw => format!("]d201{gtin}17{expiry}10{lot}{GS}21{serial}"),
            UdiForm::DigitalLink => {
                format!("https://id.example/01/{gtin}/10/{lot}/21/{serial}?17={expiry}")
            }
        }
    }

    /// The cartridge identity the server binds (`gtin:serial`).
    pub fn cartridge_id(&self) -> String {
        format!("{}:{}", self.gtin, self.serial)
    }
}

/// `YYMMDD` of a date.
pub fn yymmdd(d: NaiveDate) -> String {
    format!("{:02}{:02}{:02}", d.year() % 100, d.month(), d.day())
}

/// `YYMM00` of the month before `d`'s month: day 00 is the last day of that
/// month, so the cartridge expired before `d`.
pub fn last_month_yymm00(d: NaiveDate) -> String {
    let last_month = d - Duration::days(i64::from(d.day()));
    format!("{:02}{:02}00", last_month.year() % 100, last_month.month())
}

/// The expiry of the simulated lots registered on `today`.
pub fn lot_expiry(today: NaiveDate) -> NaiveDate {
    today + Duration::days(SHELF_LIFE_DAYS)
}

/// The same GTIN with a wrong check digit.
pub fn corrupt_check_digit(gtin: &str) -> String {
    let (body, check) = gtin.split_at(gtin.len().saturating_sub(1));
    let digit = check.parse::<u8>().unwrap_or(0);
    format!("{body}{}", (digit + 1) % 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pentrace_domain::Udi;
    use pentrace_domain::udi::gtin_check_digit;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, 15).expect("date")
    }

    fn label(gtin: &str, expiry: &str) -> Label {
        Label {
            gtin: gtin.into(),
            expiry: expiry.into(),
            lot: OK_LOT.into(),
            serial: "AB12CD34".into(),
        }
    }

    #[test]
    fn the_gtins_have_valid_check_digits() {
        let gtins = PRODUCTS.iter().chain([&RATED_PRODUCT]).map(|p| p.0);
        for gtin in gtins.chain([UNKNOWN_GTIN]) {
            assert_eq!(
                gtin_check_digit(&gtin[..13]),
                gtin[13..].parse().ok(),
                "{gtin}"
            );
        }
        let bad = corrupt_check_digit(PRODUCTS[0].0);
        assert_ne!(gtin_check_digit(&bad[..13]), bad[13..].parse().ok());
    }

    #[test]
    fn every_form_parses_to_the_same_cartridge() {
        let l = label(PRODUCTS[0].0, &yymmdd(lot_expiry(today())));
        for form in UdiForm::ALL {
            let udi = Udi::parse(&l.udi(form), today()).expect("parses");
            assert_eq!(udi.gtin, l.gtin, "{form:?}");
            assert_eq!(udi.serial.as_deref(), Some("AB12CD34"), "{form:?}");
            assert_eq!(udi.lot.as_deref(), Some(OK_LOT), "{form:?}");
            assert_eq!(udi.expiry, Some(lot_expiry(today())), "{form:?}");
        }
    }

    #[test]
    fn day_00_means_the_end_of_last_month() {
        let l = label(PRODUCTS[1].0, &last_month_yymm00(today()));
        assert_eq!(l.expiry, "260200");
        for form in UdiForm::ALL {
            let udi = Udi::parse(&l.udi(form), today()).expect("parses");
            assert_eq!(udi.expiry, NaiveDate::from_ymd_opt(2026, 2, 28), "{form:?}");
        }
        let january = NaiveDate::from_ymd_opt(2026, 1, 1).expect("date");
        assert_eq!(last_month_yymm00(january), "251200");
    }

    #[test]
    fn a_wrong_check_digit_does_not_parse_in_any_form() {
        let l = label(&corrupt_check_digit(PRODUCTS[0].0), "280101");
        for form in UdiForm::ALL {
            assert!(Udi::parse(&l.udi(form), today()).is_err(), "{form:?}");
        }
    }
}
