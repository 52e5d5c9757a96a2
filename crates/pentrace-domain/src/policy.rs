//! Policy values the rules are judged against (docs/architecture.md,
//! "Domain facts" and "Flags"); each product and clinic may override them.

use chrono::Duration;

use crate::message::{SkinThickness, TreatmentArea};

/// Default device depth limit: 2.0 mm.
pub const DEFAULT_MAX_DEPTH_UM: u32 = 2000;

/// The thresholds the rules use.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// A new session on the same device with the same cartridge within this
    /// time after the cartridge's last activity is a resume, not a reuse.
    pub resume_window: Duration,
    /// How far a resume may start *before* the cartridge's last activity
    /// (clocks jitter between a reboot and the last sample); any earlier
    /// start is a reuse, so a backlog uploaded out of order cannot pass an
    /// old session off as a resume.
    pub resume_tolerance: Duration,
    /// `sent_at` further than this from the server's receive time is skew.
    pub skew_window: Duration,
    /// A hole in a device's seq not filled within this time is a data gap.
    pub gap_window: Duration,
    /// Depth limit when neither device nor product sets one.
    pub default_max_depth_um: u32,
    /// Sample length assumed when a batch does not tell (ms).
    pub sample_interval_ms: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            resume_window: Duration::minutes(10),
            resume_tolerance: Duration::seconds(30),
            skew_window: Duration::minutes(5),
            gap_window: Duration::minutes(10),
            default_max_depth_um: DEFAULT_MAX_DEPTH_UM,
            sample_interval_ms: 100,
        }
    }
}

/// Upper bound of the depth guidance for an area and skin, micrometres;
/// `None` when the area is unspecified or unknown. Values are the table of
/// docs/architecture.md, "Domain facts" (the upper end of each range;
/// stretch marks and scalp have one range). An unknown skin thickness is
/// judged as thin (the lower bound).
pub fn area_guidance_um(area: TreatmentArea, skin: SkinThickness) -> Option<u32> {
    use TreatmentArea::*;
    let (thin, thick) = match area {
        Unspecified | Unknown(_) => return None,
        Forehead => (500, 750),
        Nose => (250, 500),
        Periorbital => (250, 500),
        Cheeks => (1000, 2000),
        UpperLip => (250, 750),
        Scars => (1250, 2000),
        StretchMarks => (2000, 2000),
        Scalp => (1500, 1500),
    };
    Some(match skin {
        SkinThickness::Thick => thick,
        SkinThickness::Thin | SkinThickness::Unknown(_) => thin,
    })
}
