//! Flag kinds, severities and verdicts (docs/architecture.md, "Flags").

use serde::{Deserialize, Serialize};

/// What a flag says about a message, a session or a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlagKind {
    CartridgeReused,
    SessionResumed,
    CartridgeExpired,
    CartridgeRecalled,
    RecallExposure,
    CartridgeUnknown,
    UdiInvalid,
    CartridgeOverused,
    DepthExceeded,
    DepthAboveAreaGuidance,
    ClockSkew,
    DataGap,
}

impl FlagKind {
    /// Every kind, in declaration order.
    pub const ALL: [FlagKind; 12] = [
        FlagKind::CartridgeReused,
        FlagKind::SessionResumed,
        FlagKind::CartridgeExpired,
        FlagKind::CartridgeRecalled,
        FlagKind::RecallExposure,
        FlagKind::CartridgeUnknown,
        FlagKind::UdiInvalid,
        FlagKind::CartridgeOverused,
        FlagKind::DepthExceeded,
        FlagKind::DepthAboveAreaGuidance,
        FlagKind::ClockSkew,
        FlagKind::DataGap,
    ];

    /// The stable name used in the database, the wire and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagKind::CartridgeReused => "CARTRIDGE_REUSED",
            FlagKind::SessionResumed => "SESSION_RESUMED",
            FlagKind::CartridgeExpired => "CARTRIDGE_EXPIRED",
            FlagKind::CartridgeRecalled => "CARTRIDGE_RECALLED",
            FlagKind::RecallExposure => "RECALL_EXPOSURE",
            FlagKind::CartridgeUnknown => "CARTRIDGE_UNKNOWN",
            FlagKind::UdiInvalid => "UDI_INVALID",
            FlagKind::CartridgeOverused => "CARTRIDGE_OVERUSED",
            FlagKind::DepthExceeded => "DEPTH_EXCEEDED",
            FlagKind::DepthAboveAreaGuidance => "DEPTH_ABOVE_AREA_GUIDANCE",
            FlagKind::ClockSkew => "CLOCK_SKEW",
            FlagKind::DataGap => "DATA_GAP",
        }
    }

    /// Parses the stable name.
    pub fn parse(name: &str) -> Option<FlagKind> {
        FlagKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Default severity of the kind.
    pub fn severity(self) -> Severity {
        match self {
            FlagKind::CartridgeReused
            | FlagKind::CartridgeExpired
            | FlagKind::CartridgeRecalled
            | FlagKind::RecallExposure => Severity::Critical,
            FlagKind::CartridgeUnknown
            | FlagKind::UdiInvalid
            | FlagKind::CartridgeOverused
            | FlagKind::DepthExceeded => Severity::Major,
            FlagKind::DepthAboveAreaGuidance | FlagKind::ClockSkew | FlagKind::DataGap => {
                Severity::Warning
            }
            FlagKind::SessionResumed => Severity::Info,
        }
    }

    /// Whether the pen should be told to stop using the cartridge.
    pub fn rejects_cartridge(self) -> bool {
        matches!(
            self,
            FlagKind::CartridgeReused | FlagKind::CartridgeExpired | FlagKind::CartridgeRecalled
        )
    }
}

impl std::fmt::Display for FlagKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How serious a flag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Major,
    Critical,
}

impl Severity {
    /// The stable name used in the database and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

/// The domain's verdict: a flag to raise, with its evidence.
///
/// `dedupe_key` names what the flag is about (e.g. one `DEPTH_EXCEEDED` per
/// session); the store keeps one flag per key, so a redelivered or repeated
/// observation never raises the same flag twice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub kind: FlagKind,
    pub severity: Severity,
    pub dedupe_key: String,
    /// One sentence a person can read.
    pub detail: String,
    /// Machine-readable evidence (a JSON object).
    pub evidence: serde_json::Value,
}

impl Verdict {
    /// A verdict of `kind` with its default severity.
    pub fn new(
        kind: FlagKind,
        dedupe_key: String,
        detail: String,
        evidence: serde_json::Value,
    ) -> Verdict {
        Verdict {
            kind,
            severity: kind.severity(),
            dedupe_key,
            detail,
            evidence,
        }
    }
}
