//! Any string through the GS1 UDI parser, under any "today": it never
//! panics, and whatever it accepts renders to forms that parse back to the
//! same UDI.

#![no_main]

use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use pentrace_domain::Udi;

fuzz_target!(|data: &[u8]| {
    // The first four bytes choose "today" (which decides two-digit years).
    let (day, rest) = match data.split_first_chunk::<4>() {
        Some((day, rest)) => (i32::from_le_bytes(*day), rest),
        None => (739_000, data),
    };
    let today = NaiveDate::from_num_days_from_ce_opt(day)
        .or_else(|| NaiveDate::from_num_days_from_ce_opt(739_000 + day.rem_euclid(40_000)))
        .unwrap_or_default();
    let Ok(input) = std::str::from_utf8(rest) else {
        return;
    };
    if let Ok(udi) = Udi::parse(input, today) {
        assert_eq!(udi.gtin.len(), 14);
        assert_eq!(Udi::parse(&udi.to_raw(), today).as_ref(), Ok(&udi));
        let link = udi.to_digital_link("https://id.example");
        assert_eq!(Udi::parse(&link, today).as_ref(), Ok(&udi));
    }
});
