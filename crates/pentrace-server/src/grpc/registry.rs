//! `Registry`: clinics, devices, the product catalogue, lots and recalls.

use std::sync::Arc;

use chrono::Utc;
use pentrace_domain::rules::recall_exposure;
use pentrace_domain::udi::gtin_check_digit;
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::registry_server::Registry;
use pentrace_store::{
    Clinic, CredentialKind, Device, DeviceCredential, FlagRecord, Lot, Product, Role, Store,
};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::auth::{Authenticator, Caller};
use crate::convert::{self, timestamp};
use crate::credentials::{self, IssueError, IssueRequest};
use crate::grpc_status::{invalid, status};
use crate::pki::CertificateAuthority;

/// The Registry service.
#[derive(Debug, Clone)]
pub struct RegistryService {
    store: Arc<dyn Store>,
    auth: Authenticator,
    flags: broadcast::Sender<Arc<FlagRecord>>,
    /// Signs pen certificates; None = certificates cannot be issued.
    ca: Option<Arc<CertificateAuthority>>,
    /// The broker whose pen accounts pentrace manages, if any.
    mqtt: crate::mqtt::MqttSettings,
}

impl RegistryService {
    pub fn new(
        store: Arc<dyn Store>,
        flags: broadcast::Sender<Arc<FlagRecord>>,
        ca: Option<Arc<CertificateAuthority>>,
        mqtt: crate::mqtt::MqttSettings,
    ) -> Self {
        let auth = Authenticator::new(store.clone());
        RegistryService {
            store,
            auth,
            flags,
            ca,
            mqtt,
        }
    }

    /// Registry changes are an admin's.
    async fn admin<T>(&self, request: &Request<T>, what: &str) -> Result<Caller, Status> {
        let caller = self.auth.caller(request).await?;
        caller.require(&[Role::Admin], what)?;
        Ok(caller)
    }
}

fn required(field: &str, value: &str) -> Result<String, Status> {
    let v = label(field, value)?;
    if v.is_empty() {
        return Err(invalid(format!(
            "{field} must be 1-256 printable characters"
        )));
    }
    Ok(v)
}

/// A name that may be empty: trimmed, at most 256 characters (whatever
/// their script), none a control character.
fn label(field: &str, value: &str) -> Result<String, Status> {
    let v = value.trim();
    if v.chars().count() > 256 || v.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{field} must be at most 256 printable characters"
        )));
    }
    Ok(v.to_owned())
}

/// A GTIN-14 with a valid check digit.
fn gtin(field: &str, value: &str) -> Result<String, Status> {
    let ok = value.len() == 14
        && value.bytes().all(|b| b.is_ascii_digit())
        && gtin_check_digit(&value[..13]) == value[13..].parse::<u8>().ok();
    if !ok {
        return Err(invalid(format!(
            "{field} {value:?} is not a GTIN-14 with a valid check digit"
        )));
    }
    Ok(value.to_owned())
}

/// Longest time zone name accepted (the longest IANA name has 32).
const MAX_TIME_ZONE: usize = 64;

/// An IANA time zone name by its shape ("Europe/Berlin", "Etc/GMT+5",
/// "UTC"); empty = UTC. There is no time zone database in the server to
/// look the name up in, but the name is printed in reports, so it must at
/// least be one line of the characters such names use.
fn time_zone(value: &str) -> Result<String, Status> {
    if value.is_empty() {
        return Ok("UTC".into());
    }
    let shape = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+');
    if value.len() > MAX_TIME_ZONE || !value.chars().all(shape) {
        return Err(invalid(format!(
            "clinic.time_zone {value:?} is not an IANA time zone name such as \"Europe/Berlin\""
        )));
    }
    Ok(value.to_owned())
}

/// Refuses the first of `fields` (name, whether set) that the request set:
/// they are the server's to fill in, and taking them silently would drop
/// what the caller meant.
fn output_only(fields: &[(&str, bool)], instead: &str) -> Result<(), Status> {
    match fields.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(invalid(format!("{field} is output-only: {instead}"))),
        None => Ok(()),
    }
}

/// A lot's recall is the server's record of a `RecallLot`: that call stamps
/// the time itself (a client's `recalled_at` could backdate a recall) and
/// raises the exposure flags on past sessions.
fn refuse_recall_fields(l: &pb::Lot) -> Result<(), Status> {
    output_only(
        &[
            ("lot.recalled", l.recalled),
            ("lot.recalled_at", l.recalled_at.is_some()),
            ("lot.recall_reason", !l.recall_reason.is_empty()),
        ],
        "call RecallLot to recall a lot",
    )
}

fn clinic_out(c: Clinic) -> pb::Clinic {
    pb::Clinic {
        clinic_id: c.id,
        name: c.name,
        time_zone: c.time_zone,
    }
}

fn device_out(d: Device) -> pb::Device {
    pb::Device {
        device_id: d.id,
        clinic_id: d.clinic_id,
        model: d.model,
        max_depth_um: d.max_depth_um,
    }
}

fn product_out(p: Product) -> pb::Product {
    pb::Product {
        gtin: p.gtin,
        name: p.name,
        max_depth_um: p.max_depth_um,
        rated_strokes: p.rated_strokes,
        max_active_s: p.max_active_s,
        shelf_life_days: p.shelf_life_days,
    }
}

fn lot_out(l: Lot) -> pb::Lot {
    pb::Lot {
        gtin: l.gtin,
        lot: l.lot,
        expiry: l.expiry.map(|d| d.to_string()).unwrap_or_default(),
        recalled: l.recalled_at.is_some(),
        recalled_at: l.recalled_at.map(timestamp),
        recall_reason: l.recall_reason.unwrap_or_default(),
    }
}

pub fn credential_out(c: DeviceCredential) -> pb::DeviceCredential {
    let kind = match c.kind {
        CredentialKind::PenSecret => pb::CredentialKind::PenSecret,
        CredentialKind::PenCertificate => pb::CredentialKind::PenCertificate,
        CredentialKind::GatewaySecret => pb::CredentialKind::GatewaySecret,
    };
    pb::DeviceCredential {
        credential_id: c.id.to_string(),
        kind: kind as i32,
        principal: c.principal,
        clinic_id: c.clinic_id,
        fingerprint_sha256: hex::encode(c.fingerprint),
        created_at: Some(timestamp(c.created_at)),
        not_after: c.not_after.map(timestamp),
        revoked_at: c.revoked_at.map(timestamp),
    }
}

fn issue_status(e: IssueError) -> Status {
    match e {
        IssueError::Invalid(why) => invalid(why),
        IssueError::NoCa => Status::failed_precondition(e.to_string()),
        IssueError::Pki(e) => {
            tracing::error!(error = %e, "cannot issue a device certificate");
            Status::internal("cannot issue a certificate")
        }
        IssueError::Store(e) => status(e),
        IssueError::Broker(_) | IssueError::BrokerRemove(_) => Status::unavailable(e.to_string()),
    }
}

/// Longest free-text reason accepted (revocations, recalls).
pub const MAX_REASON_CHARS: usize = 1000;

/// A free-text reason: trimmed, at most [`MAX_REASON_CHARS`], no control
/// characters but line breaks.
pub fn reason(field: &str, value: &str) -> Result<String, Status> {
    let v = value.trim();
    if v.chars().count() > MAX_REASON_CHARS {
        return Err(invalid(format!(
            "{field} is {} characters; at most {MAX_REASON_CHARS}",
            v.chars().count()
        )));
    }
    if v.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(v.to_owned())
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn issue_device_credential(
        &self,
        request: Request<pb::IssueDeviceCredentialRequest>,
    ) -> Result<Response<pb::IssuedDeviceCredential>, Status> {
        let caller = self.admin(&request, "issue device credentials").await?;
        let r = request.into_inner();
        let kind = match pb::CredentialKind::try_from(r.kind) {
            Ok(pb::CredentialKind::PenSecret) => CredentialKind::PenSecret,
            Ok(pb::CredentialKind::PenCertificate) => CredentialKind::PenCertificate,
            Ok(pb::CredentialKind::GatewaySecret) => CredentialKind::GatewaySecret,
            _ => {
                return Err(invalid(format!(
                    "kind must be PEN_SECRET, PEN_CERTIFICATE or GATEWAY_SECRET, not {}",
                    r.kind
                )));
            }
        };
        let clinic_id = Some(r.clinic_id.trim().to_owned()).filter(|c| !c.is_empty());
        // A pen's credential belongs to its device's clinic; a clinic named
        // here would otherwise be dropped without a word.
        if kind.is_pen() && clinic_id.is_some() {
            return Err(invalid(
                "clinic_id is for GATEWAY_SECRET only: a pen's credential belongs to the \
                 clinic its device is registered to",
            ));
        }
        let issue = IssueRequest {
            kind,
            principal: r.principal.trim().to_owned(),
            clinic_id,
            replace: r.replace,
        };
        let issued = credentials::issue(
            self.store.as_ref(),
            self.ca.as_deref(),
            &self.mqtt,
            &issue,
            &caller.actor(),
        )
        .await
        .map_err(issue_status)?;
        let (certificate_pem, private_key_pem) = issued
            .certificate
            .map(|c| (c.certificate_pem, c.private_key_pem))
            .unwrap_or_default();
        Ok(Response::new(pb::IssuedDeviceCredential {
            credential: Some(credential_out(issued.credential)),
            secret: issued.secret.unwrap_or_default(),
            certificate_pem,
            private_key_pem,
            ca_certificate_pem: issued.ca_certificate_pem.unwrap_or_default(),
            revoked_credential_ids: issued.revoked.iter().map(|c| c.id.to_string()).collect(),
        }))
    }

    async fn revoke_device_credential(
        &self,
        request: Request<pb::RevokeDeviceCredentialRequest>,
    ) -> Result<Response<pb::DeviceCredential>, Status> {
        let caller = self.admin(&request, "revoke device credentials").await?;
        let r = request.into_inner();
        let id = uuid::Uuid::parse_str(r.credential_id.trim())
            .map_err(|_| invalid(format!("credential_id {:?} is not a UUID", r.credential_id)))?;
        let why = reason("reason", &r.reason)?;
        let why = if why.is_empty() {
            "revoked".to_owned()
        } else {
            why
        };
        let revoked =
            credentials::revoke(self.store.as_ref(), &self.mqtt, id, &why, &caller.actor())
                .await
                .map_err(issue_status)?;
        Ok(Response::new(credential_out(revoked)))
    }

    async fn list_device_credentials(
        &self,
        request: Request<pb::ListDeviceCredentialsRequest>,
    ) -> Result<Response<pb::ListDeviceCredentialsResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let scope = caller.scope(&request.get_ref().clinic_id);
        let credentials = self
            .store
            .list_device_credentials(scope.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListDeviceCredentialsResponse {
            credentials: credentials.into_iter().map(credential_out).collect(),
        }))
    }

    async fn register_clinic(
        &self,
        request: Request<pb::RegisterClinicRequest>,
    ) -> Result<Response<pb::Clinic>, Status> {
        let caller = self.admin(&request, "register clinics").await?;
        let c = request
            .into_inner()
            .clinic
            .ok_or_else(|| invalid("clinic is missing"))?;
        let clinic = Clinic {
            id: required("clinic.clinic_id", &c.clinic_id)?,
            name: required(
                "clinic.name",
                if c.name.is_empty() {
                    &c.clinic_id
                } else {
                    &c.name
                },
            )?,
            time_zone: time_zone(&c.time_zone)?,
        };
        let stored = self
            .store
            .upsert_clinic(&clinic, &caller.actor())
            .await
            .map_err(status)?;
        Ok(Response::new(clinic_out(stored)))
    }

    async fn register_device(
        &self,
        request: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let caller = self.admin(&request, "register devices").await?;
        let d = request
            .into_inner()
            .device
            .ok_or_else(|| invalid("device is missing"))?;
        // The rule a device's messages are held to, so that no device is
        // registered that could never send.
        crate::convert::check_device_id(&d.device_id)
            .map_err(|e| invalid(format!("device.{}", e.0)))?;
        let device = Device {
            id: d.device_id.clone(),
            clinic_id: required("device.clinic_id", &d.clinic_id)?,
            model: label("device.model", &d.model)?,
            max_depth_um: d.max_depth_um,
        };
        let stored = self
            .store
            .upsert_device(&device, &caller.actor())
            .await
            .map_err(status)?;
        Ok(Response::new(device_out(stored)))
    }

    async fn register_product(
        &self,
        request: Request<pb::RegisterProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let caller = self.admin(&request, "change the product catalogue").await?;
        let p = request
            .into_inner()
            .product
            .ok_or_else(|| invalid("product is missing"))?;
        let product = Product {
            gtin: gtin("product.gtin", &p.gtin)?,
            name: label("product.name", &p.name)?,
            max_depth_um: p.max_depth_um,
            rated_strokes: p.rated_strokes,
            max_active_s: p.max_active_s,
            shelf_life_days: p.shelf_life_days,
        };
        let stored = self
            .store
            .upsert_product(&product, &caller.actor())
            .await
            .map_err(status)?;
        Ok(Response::new(product_out(stored)))
    }

    async fn register_lot(
        &self,
        request: Request<pb::RegisterLotRequest>,
    ) -> Result<Response<pb::Lot>, Status> {
        let caller = self.admin(&request, "register lots").await?;
        let l = request
            .into_inner()
            .lot
            .ok_or_else(|| invalid("lot is missing"))?;
        refuse_recall_fields(&l)?;
        // The store keeps an earlier recall on re-registration.
        let lot = Lot {
            gtin: gtin("lot.gtin", &l.gtin)?,
            lot: required("lot.lot", &l.lot)?,
            expiry: convert::date("lot.expiry", &l.expiry).map_err(invalid)?,
            recalled_at: None,
            recall_reason: None,
        };
        let stored = self
            .store
            .upsert_lot(&lot, &caller.actor())
            .await
            .map_err(status)?;
        Ok(Response::new(lot_out(stored)))
    }

    async fn recall_lot(
        &self,
        request: Request<pb::RecallLotRequest>,
    ) -> Result<Response<pb::RecallLotResponse>, Status> {
        let caller = self.admin(&request, "recall lots").await?;
        let r = request.into_inner();
        let (gtin, lot) = (gtin("gtin", &r.gtin)?, required("lot", &r.lot)?);
        let why = reason("reason", &r.reason)?;
        if why.is_empty() {
            return Err(invalid("reason is required: say why the lot is recalled"));
        }
        let (lot, flags) = self
            .store
            .recall_lot(
                &gtin,
                &lot,
                &why,
                Utc::now(),
                recall_exposure,
                &caller.actor(),
            )
            .await
            .map_err(status)?;
        let raised = u32::try_from(flags.len()).unwrap_or(u32::MAX);
        tracing::info!(%gtin, lot = %lot.lot, exposure_flags = raised, "lot recalled");
        for flag in flags {
            let _ = self.flags.send(Arc::new(flag));
        }
        Ok(Response::new(pb::RecallLotResponse {
            lot: Some(lot_out(lot)),
            exposure_flags_raised: raised,
        }))
    }

    async fn list_clinics(
        &self,
        request: Request<pb::ListClinicsRequest>,
    ) -> Result<Response<pb::ListClinicsResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let mut clinics = self.store.list_clinics().await.map_err(status)?;
        clinics.retain(|c| caller.sees(&c.id));
        Ok(Response::new(pb::ListClinicsResponse {
            clinics: clinics.into_iter().map(clinic_out).collect(),
        }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        self.auth.caller(&request).await?;
        let products = self.store.list_products().await.map_err(status)?;
        Ok(Response::new(pb::ListProductsResponse {
            products: products.into_iter().map(product_out).collect(),
        }))
    }

    async fn list_lots(
        &self,
        request: Request<pb::ListLotsRequest>,
    ) -> Result<Response<pb::ListLotsResponse>, Status> {
        self.auth.caller(&request).await?;
        let gtin = request.into_inner().gtin;
        let filter = Some(gtin.as_str()).filter(|g| !g.is_empty());
        let lots = self.store.list_lots(filter).await.map_err(status)?;
        Ok(Response::new(pb::ListLotsResponse {
            lots: lots.into_iter().map(lot_out).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_reasons_are_bounded_and_printable() {
        assert_eq!(
            reason("reason", "  lost pen \n").ok().as_deref(),
            Some("lost pen")
        );
        assert!(reason("reason", "two\nlines").is_ok());
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        let refused = reason("reason", &long).expect_err("too long");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("at most 1000"));
        assert!(reason("reason", "bell\u{7}").is_err());
        // A 1 MiB signature reason (issue 13) is refused, not stored.
        assert!(reason("reason", &"y".repeat(1 << 20)).is_err());
    }

    #[test]
    fn a_lot_with_any_recall_field_set_is_refused_naming_it() {
        assert!(refuse_recall_fields(&pb::Lot::default()).is_ok());
        let set = [
            (
                pb::Lot {
                    recalled: true,
                    ..Default::default()
                },
                "lot.recalled ",
            ),
            (
                pb::Lot {
                    recalled_at: Some(prost_types::Timestamp::default()),
                    ..Default::default()
                },
                "lot.recalled_at ",
            ),
            (
                pb::Lot {
                    recall_reason: "breach".into(),
                    ..Default::default()
                },
                "lot.recall_reason ",
            ),
        ];
        for (lot, field) in set {
            let refused = refuse_recall_fields(&lot).expect_err("refused");
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert!(refused.message().starts_with(field), "{refused:?}");
            assert!(refused.message().contains("RecallLot"), "{refused:?}");
        }
    }

    #[test]
    fn time_zones_have_the_shape_of_iana_names() {
        for ok in [
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
            "UTC",
        ] {
            assert_eq!(time_zone(ok).ok().as_deref(), Some(ok));
        }
        assert_eq!(time_zone("").ok().as_deref(), Some("UTC"));
        for bad in ["Europe/Berlin\n", "<b>", "Mars Time", &"A".repeat(65)] {
            let refused = time_zone(bad).expect_err("refused");
            assert!(refused.message().starts_with("clinic.time_zone"));
        }
    }
}
