//! The outbreak lookback of a cartridge lot (docs/architecture.md, "Domain
//! facts"): every session that used a cartridge of the lot, and every clinic
//! and device it was used at, with first and last use.

use std::collections::{BTreeMap, HashMap};

use pentrace_store::Store;
use serde::Serialize;

use super::{ReportError, ReportResult, SessionLine, generated_at, utc};

/// The lookback of one lot.
#[derive(Debug, Clone, Serialize)]
pub struct LotReport {
    /// The report's id (the subject of its `report.exported` audit event).
    pub id: uuid::Uuid,
    /// Always `"lot"`.
    pub kind: &'static str,
    pub generated_at: String,
    pub times: &'static str,
    pub lot: LotLine,
    /// Clinics that used the lot, by id.
    pub clinics: Vec<UseLine>,
    /// Devices that used the lot, by clinic and id.
    pub devices: Vec<UseLine>,
    /// Sessions, oldest first.
    pub sessions: Vec<SessionLine>,
}

/// The lot as registered (or only as named, when it is not registered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LotLine {
    pub gtin: String,
    pub lot: String,
    pub registered: bool,
    pub expiry: Option<String>,
    pub recalled_at: Option<String>,
    pub recall_reason: Option<String>,
}

/// Where the lot was used: a clinic (`device_id` None) or a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UseLine {
    pub clinic_id: String,
    /// The clinic's name, when it is registered.
    pub clinic_name: Option<String>,
    pub device_id: Option<String>,
    pub sessions: u64,
    pub first_use: String,
    pub last_use: String,
}

impl LotReport {
    /// Reads the lot, its sessions and the clinics' names.
    pub async fn build(store: &dyn Store, gtin: &str, lot: &str) -> ReportResult<LotReport> {
        let (gtin, lot) = (gtin.trim(), lot.trim());
        if gtin.is_empty() || lot.is_empty() {
            return Err(ReportError::Invalid(
                "--gtin and --lot must not be empty".into(),
            ));
        }
        let registered = store
            .list_lots(Some(gtin))
            .await?
            .into_iter()
            .find(|l| l.lot == lot);
        let sessions: Vec<SessionLine> = store
            .lot_lookback(gtin, lot)
            .await?
            .into_iter()
            .map(SessionLine::from)
            .collect();
        let names: HashMap<String, String> = store
            .list_clinics()
            .await?
            .into_iter()
            .map(|c| (c.id, c.name))
            .collect();
        Ok(LotReport {
            id: uuid::Uuid::new_v4(),
            kind: "lot",
            generated_at: generated_at(),
            times: "UTC",
            lot: LotLine {
                gtin: gtin.to_owned(),
                lot: lot.to_owned(),
                registered: registered.is_some(),
                expiry: registered
                    .as_ref()
                    .and_then(|l| l.expiry)
                    .map(|d| d.to_string()),
                recalled_at: registered.as_ref().and_then(|l| l.recalled_at).map(utc),
                recall_reason: registered.and_then(|l| l.recall_reason),
            },
            clinics: uses(&sessions, &names, |_| None),
            devices: uses(&sessions, &names, |s| Some(s.device_id.clone())),
            sessions,
        })
    }
}

/// Groups sessions by clinic and `device` (None = the clinic as a whole).
/// Sessions come oldest first, so the first and last seen are the first
/// and last use.
fn uses(
    sessions: &[SessionLine],
    names: &HashMap<String, String>,
    device: impl Fn(&SessionLine) -> Option<String>,
) -> Vec<UseLine> {
    let mut by_key: BTreeMap<(String, Option<String>), UseLine> = BTreeMap::new();
    for s in sessions {
        let key = (s.clinic_id.clone(), device(s));
        by_key
            .entry(key)
            .and_modify(|u| {
                u.sessions += 1;
                u.last_use.clone_from(&s.started_at);
            })
            .or_insert_with_key(|(clinic_id, device_id)| UseLine {
                clinic_id: clinic_id.clone(),
                clinic_name: names.get(clinic_id).cloned(),
                device_id: device_id.clone(),
                sessions: 1,
                first_use: s.started_at.clone(),
                last_use: s.started_at.clone(),
            });
    }
    by_key.into_values().collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn session(clinic: &str, device: &str, at: &str) -> SessionLine {
        SessionLine {
            session_id: format!("{device}-{at}"),
            clinic_id: clinic.into(),
            device_id: device.into(),
            started_at: at.into(),
            ended_at: None,
            udi: "(01)09506000134352(10)L1(21)S".into(),
            cartridge_id: None,
            gtin: Some("09506000134352".into()),
            lot: Some("L1".into()),
            expiry: None,
            area: "cheeks".into(),
            operator_ref: String::new(),
            patient_ref: None,
            strokes: 0,
            max_depth_um: 0,
            samples: 0,
        }
    }

    /// A small lookback over two clinics, for the renderers' tests.
    pub(crate) fn sample() -> LotReport {
        let sessions = vec![
            session("clinic-a", "pen-1", "2025-03-01T09:00:00.000Z"),
            session("clinic-b", "pen-9", "2025-03-02T09:00:00.000Z"),
            session("clinic-a", "pen-2", "2025-03-03T09:00:00.000Z"),
        ];
        let names = HashMap::from([("clinic-a".to_owned(), "A & Co".to_owned())]);
        LotReport {
            id: uuid::Uuid::nil(),
            kind: "lot",
            generated_at: "2025-04-01T00:00:00.000Z".into(),
            times: "UTC",
            lot: LotLine {
                gtin: "09506000134352".into(),
                lot: "L1".into(),
                registered: true,
                expiry: Some("2027-01-01".into()),
                recalled_at: Some("2025-03-05T00:00:00.000Z".into()),
                recall_reason: Some("sterility breach".into()),
            },
            clinics: uses(&sessions, &names, |_| None),
            devices: uses(&sessions, &names, |s| Some(s.device_id.clone())),
            sessions,
        }
    }

    #[test]
    fn uses_count_sessions_with_first_and_last_use() {
        let report = sample();
        let a = &report.clinics[0];
        assert_eq!(
            (a.clinic_id.as_str(), a.sessions, a.clinic_name.as_deref()),
            ("clinic-a", 2, Some("A & Co"))
        );
        assert_eq!(a.first_use, "2025-03-01T09:00:00.000Z");
        assert_eq!(a.last_use, "2025-03-03T09:00:00.000Z");
        assert_eq!(report.clinics[1].clinic_name, None);
        assert_eq!(report.devices.len(), 3);
    }
}
