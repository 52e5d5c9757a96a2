//! `Fleet`: every pen with its status, and the sessions of one pen.

use std::sync::Arc;

use chrono::Utc;
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::fleet_server::Fleet;
use pentrace_store::{SessionQuery, Store};
use tonic::{Request, Response, Status};

use super::{invalid, status};
use crate::auth::Authenticator;
use crate::convert::{self, optional_time, timestamp};

/// The Fleet service.
#[derive(Debug, Clone)]
pub struct FleetService {
    store: Arc<dyn Store>,
    auth: Authenticator,
}

impl FleetService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        FleetService {
            auth: Authenticator::new(store.clone()),
            store,
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
        let query = SessionQuery {
            device_id: r.device_id,
            from: optional_time(r.from),
            to: optional_time(r.to),
            limit: if r.limit == 0 {
                100
            } else {
                r.limit.min(10_000)
            },
        };
        let mut sessions = self.store.list_sessions(&query).await.map_err(status)?;
        sessions.retain(|s| caller.sees(&s.clinic_id));
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.iter().map(convert::session).collect(),
        }))
    }
}
