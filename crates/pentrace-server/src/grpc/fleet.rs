//! `Fleet`: every pen with its status, the sessions of one pen, and the
//! fleet checks.

use std::sync::Arc;

use chrono::Utc;
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::fleet_server::Fleet;
use pentrace_store::{SessionQuery, Store};
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::convert::{self, query_time, timestamp};
use crate::fleet_checks::{self, Finding, FindingKind, FleetPolicy};
use crate::grpc_status::{invalid, status};

/// Most sessions one `ListSessions` answers.
const MAX_SESSIONS: u32 = 10_000;

/// The Fleet service.
#[derive(Debug, Clone)]
pub struct FleetService {
    store: Arc<dyn Store>,
    auth: Authenticator,
    /// The fleet checks' defaults (config `fleet.*`).
    policy: FleetPolicy,
}

impl FleetService {
    pub fn new(store: Arc<dyn Store>, policy: FleetPolicy) -> Self {
        FleetService {
            auth: Authenticator::new(store.clone()),
            store,
            policy,
        }
    }
}

#[tonic::async_trait]
impl Fleet for FleetService {
    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let clinic = request.into_inner().clinic_id;
        let devices = match caller.scope(&clinic) {
            None => self
                .store
                .list_devices(None, Utc::now())
                .await
                .map_err(status)?,
            Some(clinics) => {
                let mut all = Vec::new();
                for c in clinics {
                    all.extend(
                        self.store
                            .list_devices(Some(&c), Utc::now())
                            .await
                            .map_err(status)?,
                    );
                }
                all
            }
        };
        let devices = devices
            .into_iter()
            .map(|d| pb::DeviceStatus {
                device: Some(pb::Device {
                    device_id: d.device.id,
                    clinic_id: d.device.clinic_id,
                    model: d.device.model,
                    max_depth_um: d.device.max_depth_um,
                }),
                online: d.online,
                last_seen: d.last_seen.map(timestamp),
                battery_pct: d.battery_pct.unwrap_or(0),
                sessions_today: d.sessions_today,
                strokes_today: d.strokes_today,
                open_flags: d.open_flags,
                last_seq: d.last_seq,
            })
            .collect();
        Ok(Response::new(pb::ListDevicesResponse { devices }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let r = request.into_inner();
        if r.device_id.is_empty() {
            return Err(invalid("device_id is required"));
        }
        // No page token to continue with: a limit cut short would lose
        // sessions without saying so.
        if r.limit > MAX_SESSIONS {
            return Err(invalid(format!(
                "limit is {}; at most {MAX_SESSIONS} (page back with `to`)",
                r.limit
            )));
        }
        let query = SessionQuery {
            device_id: r.device_id,
            from: query_time("from", r.from).map_err(invalid)?,
            to: query_time("to", r.to).map_err(invalid)?,
            limit: if r.limit == 0 { 100 } else { r.limit },
        };
        let mut sessions = self.store.list_sessions(&query).await.map_err(status)?;
        sessions.retain(|s| caller.sees(&s.clinic_id));
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.iter().map(convert::session).collect(),
        }))
    }

    async fn check_fleet(
        &self,
        request: Request<pb::CheckFleetRequest>,
    ) -> Result<Response<pb::CheckFleetResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let r = request.into_inner();
        let policy = policy_of(&r, self.policy)?;
        let clinics = caller.scope(&r.clinic_id);
        let report =
            fleet_checks::run(self.store.as_ref(), clinics.as_deref(), &policy, Utc::now())
                .await
                .map_err(status)?;
        Ok(Response::new(pb::CheckFleetResponse {
            checked_at: Some(timestamp(report.checked_at)),
            findings: report.findings.into_iter().map(finding).collect(),
            incomplete: report.incomplete,
        }))
    }
}

/// The request's overrides of the server's policy, bounded so that no
/// request can make the server read years of audit trail.
fn policy_of(r: &pb::CheckFleetRequest, default: FleetPolicy) -> Result<FleetPolicy, Status> {
    const MAX_LOOKBACK_S: u64 = 90 * 86_400;
    const MAX_DAYS: u32 = 3650;
    if r.lookback_s > MAX_LOOKBACK_S {
        return Err(invalid("lookback_s must be at most 90 days (7776000 s)"));
    }
    if r.certificate_warning_days > MAX_DAYS {
        return Err(invalid("certificate_warning_days must be at most 3650"));
    }
    if r.silent_after_s > u64::from(MAX_DAYS) * 86_400 {
        return Err(invalid("silent_after_s must be at most 3650 days"));
    }
    let secs = |s: u64, d: chrono::Duration| {
        if s == 0 {
            d
        } else {
            chrono::Duration::seconds(s as i64)
        }
    };
    Ok(FleetPolicy {
        lookback: secs(r.lookback_s, default.lookback),
        certificate_warning: if r.certificate_warning_days == 0 {
            default.certificate_warning
        } else {
            chrono::Duration::days(i64::from(r.certificate_warning_days))
        },
        silent_after: secs(r.silent_after_s, default.silent_after),
    })
}

fn finding(f: Finding) -> pb::FleetFinding {
    let kind = match f.kind {
        FindingKind::CredentialShared => pb::FleetFindingKind::CredentialShared,
        FindingKind::RevokedCredentialInUse => pb::FleetFindingKind::RevokedCredentialInUse,
        FindingKind::ExpiredCredentialInUse => pb::FleetFindingKind::ExpiredCredentialInUse,
        FindingKind::CertificateExpiring => pb::FleetFindingKind::CertificateExpiring,
        FindingKind::PenSilent => pb::FleetFindingKind::PenSilent,
    };
    pb::FleetFinding {
        kind: kind.into(),
        clinic_id: f.clinic_id,
        principal: f.principal,
        credential_id: f.credential_id.map(|id| id.to_string()).unwrap_or_default(),
        occurrences: f.occurrences,
        first_at: f.first_at.map(timestamp),
        last_at: f.last_at.map(timestamp),
        detail: f.detail,
    }
}
