//! The faults the simulator injects and the `--faults` option that sets
//! their rates.

use std::fmt;
use std::str::FromStr;

use pentrace_domain::FlagKind;
use serde::{Deserialize, Serialize};

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The pen presents the cartridge of its previous session again, after
    /// the resume window.
    Reuse,
    /// The pen presents a cartridge another pen's session already used.
    Moved,
    /// The cartridge's expiry (17) is before the session's start.
    Expired,
    /// The cartridge comes from a lot recalled before the session.
    Recalled,
    /// The cartridge's GTIN is not in the catalogue.
    Unknown,
    /// The UDI's GTIN check digit is wrong.
    BadUdi,
    /// A legitimate resume: same pen, cartridge and patient within the
    /// window. Must be flagged only as the informational `SESSION_RESUMED`.
    Resume,
    /// A batch (or the end) of a session names another cartridge than the
    /// session started with: one an earlier session of the pen, for another
    /// patient, already used.
    CartridgeSwap,
    /// A session under its cartridge's rated strokes and a legitimate resume
    /// of it that crosses the rating only in sum: overuse is judged over
    /// the procedure, not per session.
    ResumeOveruse,
    /// The pen was offline for days and uploads the sessions it recorded
    /// meanwhile in a shuffled order; some of them used one cartridge days
    /// apart. Whichever of those is uploaded later is the reuse.
    Backlog,
    /// Some samples deeper than the device limit.
    Depth,
    /// The pen's clock is off by minutes for one session.
    Skew,
    /// A message is sent twice.
    Dup,
    /// Two adjacent messages are sent swapped.
    Reorder,
    /// The pen drops its connection mid-session and resends what is unacked.
    Disconnect,
}

impl FaultKind {
    /// Every kind, in the order `--faults` lists them.
    pub const ALL: [FaultKind; 15] = [
        FaultKind::Reuse,
        FaultKind::Moved,
        FaultKind::Expired,
        FaultKind::Recalled,
        FaultKind::Unknown,
        FaultKind::BadUdi,
        FaultKind::Depth,
        FaultKind::Resume,
        FaultKind::CartridgeSwap,
        FaultKind::ResumeOveruse,
        FaultKind::Backlog,
        FaultKind::Dup,
        FaultKind::Reorder,
        FaultKind::Skew,
        FaultKind::Disconnect,
    ];

    /// The faults that decide a session's cartridge; a session has at most
    /// one of them. (One draw picks among them in this order: new kinds go
    /// last, so a seed without them plans what it planned before.)
    pub const CARTRIDGE: [FaultKind; 9] = [
        FaultKind::Reuse,
        FaultKind::Moved,
        FaultKind::Expired,
        FaultKind::Recalled,
        FaultKind::Unknown,
        FaultKind::BadUdi,
        FaultKind::Resume,
        FaultKind::CartridgeSwap,
        FaultKind::ResumeOveruse,
    ];

    /// The key used in `--faults` and in the ground truth.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Reuse => "reuse",
            FaultKind::Moved => "moved",
            FaultKind::Expired => "expired",
            FaultKind::Recalled => "recalled",
            FaultKind::Unknown => "unknown",
            FaultKind::BadUdi => "bad_udi",
            FaultKind::Resume => "resume",
            FaultKind::CartridgeSwap => "cartridge_swap",
            FaultKind::ResumeOveruse => "resume_overuse",
            FaultKind::Backlog => "backlog",
            FaultKind::Depth => "depth",
            FaultKind::Skew => "skew",
            FaultKind::Dup => "dup",
            FaultKind::Reorder => "reorder",
            FaultKind::Disconnect => "disconnect",
        }
    }

    /// Parses a `--faults` key.
    pub fn parse(key: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.as_str() == key)
    }

    /// The flags the server must raise for the fault (and no others).
    pub fn expected_flags(self) -> Vec<FlagKind> {
        match self {
            FaultKind::Reuse | FaultKind::Moved | FaultKind::CartridgeSwap | FaultKind::Backlog => {
                vec![FlagKind::CartridgeReused]
            }
            FaultKind::Expired => vec![FlagKind::CartridgeExpired],
            FaultKind::Recalled => vec![FlagKind::CartridgeRecalled],
            FaultKind::Unknown => vec![FlagKind::CartridgeUnknown],
            FaultKind::BadUdi => vec![FlagKind::UdiInvalid],
            FaultKind::Resume => vec![FlagKind::SessionResumed],
            // On the resume: the owner alone stays within the rating.
            FaultKind::ResumeOveruse => {
                vec![FlagKind::SessionResumed, FlagKind::CartridgeOverused]
            }
            // Every area's guidance is at most the default limit, so a
            // sample above the limit is also above the guidance.
            FaultKind::Depth => vec![FlagKind::DepthExceeded, FlagKind::DepthAboveAreaGuidance],
            FaultKind::Skew => vec![FlagKind::ClockSkew],
            FaultKind::Dup | FaultKind::Reorder | FaultKind::Disconnect => Vec::new(),
        }
    }

    /// Whether the rate counts per message (else per session, or per pen
    /// for [`FaultKind::Backlog`]).
    pub fn per_message(self) -> bool {
        matches!(self, FaultKind::Dup | FaultKind::Reorder)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rate of every fault: per session, per message for `dup` and
/// `reorder`, per pen for `backlog`. Kinds not given are 0.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRates {
    rates: [f64; FaultKind::ALL.len()],
}

/// The rates `pentrace sim` uses when `--faults` is not given.
pub const DEFAULT_FAULTS: &str = "reuse=0.02,moved=0.01,expired=0.01,recalled=0.01,unknown=0.01,\
bad_udi=0.01,depth=0.02,resume=0.02,cartridge_swap=0.01,resume_overuse=0.01,backlog=0.02,\
dup=0.05,reorder=0.02,skew=0.01,disconnect=0.01";

impl FaultRates {
    /// No faults at all.
    pub fn none() -> FaultRates {
        FaultRates {
            rates: [0.0; FaultKind::ALL.len()],
        }
    }

    fn index(kind: FaultKind) -> usize {
        FaultKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default()
    }

    /// The rate of one kind.
    pub fn rate(&self, kind: FaultKind) -> f64 {
        self.rates[Self::index(kind)]
    }

    /// Sets the rate of one kind; it must be within 0..=1.
    pub fn set(&mut self, kind: FaultKind, rate: f64) -> Result<(), FaultsError> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(FaultsError::OutOfRange {
                key: kind.as_str().to_owned(),
                value: rate.to_string(),
            });
        }
        self.rates[Self::index(kind)] = rate;
        Ok(())
    }

    /// Sum of the cartridge faults' rates: one draw decides among them, so
    /// it may not exceed 1.
    pub fn cartridge_total(&self) -> f64 {
        FaultKind::CARTRIDGE.iter().map(|k| self.rate(*k)).sum()
    }
}

impl Default for FaultRates {
    fn default() -> Self {
        DEFAULT_FAULTS
            .parse()
            .unwrap_or_else(|_| FaultRates::none())
    }
}

/// Why a `--faults` value was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    #[error("unknown fault {key:?}; known faults: {}", known_keys())]
    UnknownKey { key: String },
    #[error("fault {key}: rate {value:?} is not a number within 0..=1")]
    OutOfRange { key: String, value: String },
    #[error("{item:?} is not KEY=RATE (e.g. reuse=0.02)")]
    Malformed { item: String },
    #[error("fault {key} is given twice")]
    Duplicate { key: String },
    #[error(
        "the cartridge faults (reuse, moved, expired, recalled, unknown, bad_udi, resume, \
         cartridge_swap, resume_overuse) add up to {total}; a session has at most one, \
         so they may add up to 1 at most"
    )]
    CartridgeTotal { total: f64 },
}

fn known_keys() -> String {
    FaultKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for FaultRates {
    type Err = FaultsError;

    /// Parses `key=rate,key=rate,...`; `none` (or an empty string) means no
    /// faults.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut rates = FaultRates::none();
        let text = text.trim();
        if text.is_empty() || text == "none" {
            return Ok(rates);
        }
        let mut seen = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| FaultsError::Malformed {
                item: item.to_owned(),
            })?;
            let key = key.trim();
            let kind = FaultKind::parse(key).ok_or_else(|| FaultsError::UnknownKey {
                key: key.to_owned(),
            })?;
            if seen.contains(&kind) {
                return Err(FaultsError::Duplicate {
                    key: key.to_owned(),
                });
            }
            seen.push(kind);
            let rate: f64 = value.trim().parse().map_err(|_| FaultsError::OutOfRange {
                key: key.to_owned(),
                value: value.trim().to_owned(),
            })?;
            rates.set(kind, rate)?;
        }
        let total = rates.cartridge_total();
        if total > 1.0 + 1e-9 {
            return Err(FaultsError::CartridgeTotal { total });
        }
        Ok(rates)
    }
}

impl fmt::Display for FaultRates {
    /// The `--faults` form of the non-zero rates (`none` when all are 0).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = FaultKind::ALL
            .iter()
            .filter(|k| self.rate(**k) > 0.0)
            .map(|k| format!("{}={}", k.as_str(), self.rate(*k)))
            .collect();
        if items.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_list_parses_with_every_kind() {
        let rates: FaultRates = DEFAULT_FAULTS.parse().expect("default faults");
        for kind in FaultKind::ALL {
            assert!(rates.rate(kind) > 0.0, "{kind} has a default rate");
        }
        assert_eq!(rates.rate(FaultKind::Dup), 0.05);
        assert_eq!(rates, FaultRates::default());
    }

    #[test]
    fn missing_keys_are_zero_and_display_round_trips() {
        let rates: FaultRates = " depth=0.5 , dup=1 ".parse().expect("parses");
        assert_eq!(rates.rate(FaultKind::Depth), 0.5);
        assert_eq!(rates.rate(FaultKind::Dup), 1.0);
        assert_eq!(rates.rate(FaultKind::Reuse), 0.0);
        assert_eq!(rates.to_string(), "depth=0.5,dup=1");
        assert_eq!(rates.to_string().parse::<FaultRates>(), Ok(rates));
    }

    #[test]
    fn none_and_empty_mean_no_faults() {
        for text in ["none", "", "  "] {
            let rates: FaultRates = text.parse().expect("parses");
            assert_eq!(rates, FaultRates::none());
            assert_eq!(rates.to_string(), "none");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_the_known_ones() {
        let err = "reuse=0.1,bogus=0.2"
            .parse::<FaultRates>()
            .expect_err("unknown key");
        assert_eq!(
            err,
            FaultsError::UnknownKey {
                key: "bogus".into()
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("bad_udi") && text.contains("disconnect"),
            "{text}"
        );
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        for bad in [
            "reuse=1.5",
            "reuse=-0.1",
            "reuse=abc",
            "reuse=NaN",
            "reuse=inf",
        ] {
            let err = bad.parse::<FaultRates>().expect_err(bad);
            assert!(
                matches!(err, FaultsError::OutOfRange { ref key, .. } if key == "reuse"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn malformed_and_duplicate_items_are_refused() {
        assert!(matches!(
            "reuse".parse::<FaultRates>(),
            Err(FaultsError::Malformed { .. })
        ));
        assert!(matches!(
            "reuse=0.1,reuse=0.2".parse::<FaultRates>(),
            Err(FaultsError::Duplicate { .. })
        ));
    }

    #[test]
    fn cartridge_faults_may_not_add_up_to_more_than_one() {
        let err = "reuse=0.6,expired=0.6"
            .parse::<FaultRates>()
            .expect_err("too much");
        assert!(matches!(err, FaultsError::CartridgeTotal { .. }));
        // Independent faults do not count toward the total.
        assert!(
            "reuse=0.5,resume=0.5,depth=1,dup=1"
                .parse::<FaultRates>()
                .is_ok()
        );
    }

    #[test]
    fn expected_flags_per_fault() {
        assert_eq!(
            FaultKind::Resume.expected_flags(),
            vec![FlagKind::SessionResumed]
        );
        assert_eq!(
            FaultKind::Depth.expected_flags(),
            vec![FlagKind::DepthExceeded, FlagKind::DepthAboveAreaGuidance]
        );
        assert!(FaultKind::Disconnect.expected_flags().is_empty());
        assert_eq!(
            FaultKind::ResumeOveruse.expected_flags(),
            vec![FlagKind::SessionResumed, FlagKind::CartridgeOverused]
        );
        for kind in [FaultKind::CartridgeSwap, FaultKind::Backlog] {
            assert_eq!(kind.expected_flags(), vec![FlagKind::CartridgeReused]);
        }
    }

    #[test]
    fn every_kind_parses_from_its_key() {
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::parse(kind.as_str()), Some(kind));
        }
        let rates: FaultRates = "cartridge_swap=0.5,resume_overuse=0.5,backlog=1"
            .parse()
            .expect("parses");
        assert_eq!(rates.rate(FaultKind::Backlog), 1.0);
        // The backlog is drawn per pen, outside the cartridge draw.
        assert_eq!(rates.cartridge_total(), 1.0);
    }
}
