//! `Compliance`: flags with filters, a live flag feed, cartridge history and
//! the outbreak lookback ("which sessions touched lot X").

use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pentrace_domain::CartridgeId;
use pentrace_domain::message::CartridgeRef;
use pentrace_domain::rules::identify;
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::compliance_server::Compliance;
use pentrace_store::{FlagAction, FlagQuery, FlagRecord, FlagStep, Role, SignatureMeaning, Store};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::convert::{self, flag_kind_from_wire, flag_state_from_wire, query_time, timestamp};
use crate::grpc_status::{invalid, status};

/// The Compliance service.
#[derive(Debug, Clone)]
pub struct ComplianceService {
    store: Arc<dyn Store>,
    auth: Authenticator,
    flags: broadcast::Sender<Arc<FlagRecord>>,
}

impl ComplianceService {
    pub fn new(store: Arc<dyn Store>, flags: broadcast::Sender<Arc<FlagRecord>>) -> Self {
        ComplianceService {
            auth: Authenticator::new(store.clone()),
            store,
            flags,
        }
    }

    /// A signed step on a flag by the caller.
    async fn sign(
        &self,
        request: Request<pb::FlagActionRequest>,
        step: FlagStep,
    ) -> Result<Response<pb::Flag>, Status> {
        let caller = self.auth.caller(&request).await?;
        match step {
            FlagStep::Acknowledge => caller.require(
                &[Role::Admin, Role::ClinicOwner, Role::ComplianceOfficer],
                "acknowledge flags",
            )?,
            FlagStep::Resolve => caller.require(
                &[Role::Admin, Role::ComplianceOfficer],
                "sign a flag resolution",
            )?,
        }
        let r = request.into_inner();
        let flag_id =
            uuid::Uuid::parse_str(&r.flag_id).map_err(|_| invalid("flag_id is not a UUID"))?;
        let meaning = match pb::SignatureMeaning::try_from(r.meaning) {
            Ok(pb::SignatureMeaning::Reviewed) => SignatureMeaning::Reviewed,
            Ok(pb::SignatureMeaning::Approved) => SignatureMeaning::Approved,
            Ok(pb::SignatureMeaning::Responsible) => SignatureMeaning::Responsible,
            _ => {
                return Err(invalid(format!(
                    "meaning must be REVIEWED, APPROVED or RESPONSIBLE, not {}",
                    r.meaning
                )));
            }
        };
        let reason = super::registry::reason("reason", &r.reason)?;
        if reason.is_empty() {
            return Err(invalid("a reason is mandatory for a signed action"));
        }
        let action = FlagAction {
            flag_id,
            step,
            signer: caller.user,
            meaning,
            reason,
        };
        let flag = self.store.sign_flag(&action).await.map_err(status)?;
        Ok(Response::new(convert::flag(&flag)))
    }
}

type FlagStream = Pin<Box<dyn Stream<Item = Result<pb::Flag, Status>> + Send>>;

/// Page tokens are `<raised_at µs>:<flag id>` of the last flag returned.
fn page_token(f: &FlagRecord) -> String {
    format!("{}:{}", f.raised_at.timestamp_micros(), f.id)
}

fn parse_page_token(token: &str) -> Result<Option<(DateTime<Utc>, uuid::Uuid)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("page_token is not one this server issued");
    let (micros, id) = token.split_once(':').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    let id = uuid::Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(Some((at, id)))
}

/// The flag kinds of a filter; UNSPECIFIED or a number this server does not
/// know is refused, never read as "any kind".
fn kinds(wire: &[i32]) -> Result<Vec<pentrace_domain::FlagKind>, Status> {
    wire.iter()
        .map(|k| flag_kind_from_wire(*k).ok_or_else(|| unknown_filter("kinds", "FlagKind", *k)))
        .collect()
}

/// The flag states of a filter, refused like [`kinds`].
fn states(wire: &[i32]) -> Result<Vec<pentrace_store::FlagState>, Status> {
    wire.iter()
        .map(|s| flag_state_from_wire(*s).ok_or_else(|| unknown_filter("states", "FlagState", *s)))
        .collect()
}

fn unknown_filter(field: &str, kind: &str, value: i32) -> Status {
    invalid(format!(
        "{field} contains {value}, which is not a {kind} (UNSPECIFIED included): \
         leave {field} empty for every one"
    ))
}

/// The cartridge id a caller means: `gtin:serial`/`chip:UID`, or any UDI form.
fn cartridge_id(input: &str) -> Result<String, Status> {
    if let Some(id) = CartridgeId::parse(input) {
        return Ok(id.to_string());
    }
    let cartridge = CartridgeRef {
        udi: input.to_owned(),
        chip_uid: String::new(),
    };
    let ident = identify(&cartridge, Utc::now().date_naive());
    match (ident.cartridge, ident.udi) {
        (Some(id), _) => Ok(id.to_string()),
        (None, Err(e)) => Err(invalid(format!("not a cartridge id or UDI: {e}"))),
        (None, Ok(_)) => Err(invalid(
            "the UDI has no serial (21): it names a product, not a cartridge",
        )),
    }
}

#[tonic::async_trait]
impl Compliance for ComplianceService {
    type WatchFlagsStream = FlagStream;

    async fn list_flags(
        &self,
        request: Request<pb::ListFlagsRequest>,
    ) -> Result<Response<pb::ListFlagsResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let r = request.into_inner();
        // A larger page is cut to the maximum: the page token says there
        // is more, so nothing is lost (AIP-158).
        let limit = if r.limit == 0 {
            1000
        } else {
            r.limit.min(10_000)
        };
        let query = FlagQuery {
            clinic_ids: caller.scope(&r.clinic_id),
            device_id: Some(r.device_id).filter(|d| !d.is_empty()),
            session_id: Some(r.session_id).filter(|s| !s.is_empty()),
            kinds: kinds(&r.kinds)?,
            states: states(&r.states)?,
            from: query_time("from", r.from).map_err(invalid)?,
            to: query_time("to", r.to).map_err(invalid)?,
            after: parse_page_token(&r.page_token)?,
            limit,
        };
        let flags = self.store.list_flags(&query).await.map_err(status)?;
        let next_page_token = match flags.last() {
            Some(last) if flags.len() == limit as usize => page_token(last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFlagsResponse {
            flags: flags.iter().map(convert::flag).collect(),
            next_page_token,
        }))
    }

    async fn watch_flags(
        &self,
        request: Request<pb::WatchFlagsRequest>,
    ) -> Result<Response<FlagStream>, Status> {
        let caller = self.auth.caller(&request).await?;
        let r = request.into_inner();
        let wanted = kinds(&r.kinds)?;
        let clinic = r.clinic_id;
        let mut feed = self.flags.subscribe();
        let stream = async_stream(move |tx| async move {
            loop {
                let flag = match feed.recv().await {
                    Ok(flag) => flag,
                    Err(RecvError::Closed) => return,
                    Err(RecvError::Lagged(n)) => {
                        let msg =
                            format!("watcher fell {n} flags behind; re-read them with ListFlags");
                        let _ = tx.send(Err(Status::resource_exhausted(msg))).await;
                        return;
                    }
                };
                let clinic_ok =
                    caller.sees(&flag.clinic_id) && (clinic.is_empty() || flag.clinic_id == clinic);
                let kind_ok = wanted.is_empty() || wanted.contains(&flag.kind);
                if clinic_ok && kind_ok && tx.send(Ok(convert::flag(&flag))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn cartridge_history(
        &self,
        request: Request<pb::CartridgeHistoryRequest>,
    ) -> Result<Response<pb::CartridgeHistoryResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let id = cartridge_id(request.into_inner().cartridge.trim())?;
        let mut h = self.store.cartridge_history(&id).await.map_err(status)?;
        h.sessions.retain(|s| caller.sees(&s.clinic_id));
        h.flags.retain(|f| caller.sees(&f.clinic_id));
        // The owner is named only to callers who may see the owning session.
        let visible = |s: &String| h.sessions.iter().any(|v| &v.session_id == s);
        let (bound_session_id, bound_device_id, bound_at) = match h.binding.clone() {
            Some((s, d, at)) if visible(&s) => (s, d, Some(timestamp(at))),
            _ => (String::new(), String::new(), None),
        };
        Ok(Response::new(pb::CartridgeHistoryResponse {
            cartridge_id: h.cartridge_id,
            bound_session_id,
            bound_device_id,
            bound_at,
            sessions: h.sessions.iter().map(convert::session).collect(),
            flags: h.flags.iter().map(convert::flag).collect(),
        }))
    }

    async fn lot_lookback(
        &self,
        request: Request<pb::LotLookbackRequest>,
    ) -> Result<Response<pb::LotLookbackResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let r = request.into_inner();
        if r.gtin.is_empty() || r.lot.is_empty() {
            return Err(invalid("gtin and lot are required"));
        }
        let mut sessions = self
            .store
            .lot_lookback(&r.gtin, &r.lot)
            .await
            .map_err(status)?;
        sessions.retain(|s| caller.sees(&s.clinic_id));
        Ok(Response::new(pb::LotLookbackResponse {
            sessions: sessions.iter().map(convert::session).collect(),
        }))
    }

    async fn acknowledge_flag(
        &self,
        request: Request<pb::FlagActionRequest>,
    ) -> Result<Response<pb::Flag>, Status> {
        self.sign(request, FlagStep::Acknowledge).await
    }

    async fn resolve_flag(
        &self,
        request: Request<pb::FlagActionRequest>,
    ) -> Result<Response<pb::Flag>, Status> {
        self.sign(request, FlagStep::Resolve).await
    }
}

/// A stream fed by a task that sends into a bounded channel.
fn async_stream<F, Fut>(body: F) -> FlagStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::Flag, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
