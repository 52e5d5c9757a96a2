//! `--setup`: registers the clinic, its pens, the product catalogue and the
//! lots, and recalls the recalled lot, all through the Registry API. Every
//! call is an upsert on the server, so setting up twice is harmless (a lot
//! recalled earlier keeps its first recall time).

use std::collections::HashMap;

use chrono::NaiveDate;
use pentrace_proto::v1 as pb;

use crate::api::Api;
use crate::catalogue::{
    OK_LOT, PRODUCTS, RATED_PRODUCT, RATED_STROKES, RECALLED_LOT, SHELF_LIFE_DAYS, lot_expiry,
};
use crate::config::SimConfig;
use crate::error::SimError;

/// Model name of the simulated pens.
pub const PEN_MODEL: &str = "SIM-PEN";

/// Registers everything the scenario needs; `today` dates the lots.
pub async fn register(api: &Api, config: &SimConfig, today: NaiveDate) -> Result<(), SimError> {
    let mut registry = api.registry();
    registry
        .register_clinic(pb::RegisterClinicRequest {
            clinic: Some(pb::Clinic {
                clinic_id: config.clinic.clone(),
                name: format!("Simulated clinic {}", config.clinic),
                time_zone: "UTC".into(),
            }),
        })
        .await
        .map_err(|s| SimError::rpc("Registry.RegisterClinic", s))?;
    for i in 0..config.devices {
        registry
            .register_device(pb::RegisterDeviceRequest {
                device: Some(pb::Device {
                    device_id: config.device_id(i),
                    clinic_id: config.clinic.clone(),
                    model: PEN_MODEL.into(),
                    // 0: the default limit (2000 µm) applies.
                    max_depth_um: 0,
                }),
            })
            .await
            .map_err(|s| SimError::rpc("Registry.RegisterDevice", s))?;
    }
    for (gtin, name) in PRODUCTS {
        register_product(api, gtin, name, 0, today).await?;
    }
    let (gtin, name) = RATED_PRODUCT;
    register_product(api, gtin, name, RATED_STROKES, today).await
}

/// Issues a secret for every pen (a new one each setup: earlier ones stay
/// valid, so two runs on the same clinic do not lock each other out).
pub async fn issue_secrets(
    api: &Api,
    config: &SimConfig,
) -> Result<HashMap<String, String>, SimError> {
    let mut registry = api.registry();
    let mut secrets = HashMap::new();
    for i in 0..config.devices {
        let device_id = config.device_id(i);
        let issued = registry
            .issue_device_credential(pb::IssueDeviceCredentialRequest {
                kind: pb::CredentialKind::PenSecret as i32,
                principal: device_id.clone(),
                clinic_id: String::new(),
                replace: false,
            })
            .await
            .map_err(|s| SimError::rpc("Registry.IssueDeviceCredential", s))?
            .into_inner();
        secrets.insert(device_id, issued.secret);
    }
    Ok(secrets)
}

/// `device_id secret` lines, readable by the owner only.
pub fn write_credentials(
    path: &std::path::Path,
    secrets: &HashMap<String, String>,
) -> Result<(), SimError> {
    use std::io::Write;
    let mut lines: Vec<_> = secrets.iter().map(|(d, s)| format!("{d} {s}\n")).collect();
    lines.sort();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let fail =
        |e: std::io::Error| SimError::Config(format!("cannot write {}: {e}", path.display()));
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(lines.concat().as_bytes()).map_err(fail)
}

pub fn read_credentials(path: &std::path::Path) -> Result<HashMap<String, String>, SimError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SimError::Config(format!("cannot read {}: {e}", path.display())))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [device, secret] => Ok((device.to_owned(), secret.to_owned())),
            _ => Err(SimError::Config(format!(
                "{}: expected `device_id secret` lines",
                path.display()
            ))),
        })
        .collect()
}

/// A product with its good lot and its recalled lot; `rated_strokes` 0
/// for no rating.
async fn register_product(
    api: &Api,
    gtin: &str,
    name: &str,
    rated_strokes: u64,
    today: NaiveDate,
) -> Result<(), SimError> {
    let mut registry = api.registry();
    registry
        .register_product(pb::RegisterProductRequest {
            product: Some(pb::Product {
                gtin: gtin.into(),
                name: name.into(),
                // No depth or time limit of its own beyond the device's;
                // only the rated product (`resume_overuse`) counts strokes.
                max_depth_um: 0,
                rated_strokes,
                max_active_s: 0,
                shelf_life_days: u32::try_from(SHELF_LIFE_DAYS).unwrap_or(730),
            }),
        })
        .await
        .map_err(|s| SimError::rpc("Registry.RegisterProduct", s))?;
    for lot in [OK_LOT, RECALLED_LOT] {
        registry
            .register_lot(pb::RegisterLotRequest {
                lot: Some(pb::Lot {
                    gtin: gtin.into(),
                    lot: lot.into(),
                    expiry: lot_expiry(today).to_string(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| SimError::rpc("Registry.RegisterLot", s))?;
    }
    // Recalled now, before any simulated session starts: its sessions are
    // CARTRIDGE_RECALLED, never RECALL_EXPOSURE.
    registry
        .recall_lot(pb::RecallLotRequest {
            gtin: gtin.into(),
            lot: RECALLED_LOT.into(),
            reason: "simulated recall: sterility breach reported by the manufacturer".into(),
        })
        .await
        .map_err(|s| SimError::rpc("Registry.RecallLot", s))?;
    Ok(())
}

/// The last seq the server has of each pen (0 for a pen it never heard
/// from): a pen persists its seq, so a second run continues after it.
pub async fn seq_bases(api: &Api, config: &SimConfig) -> Result<Vec<u64>, SimError> {
    let devices = api
        .fleet()
        .list_devices(pb::ListDevicesRequest {
            clinic_id: config.clinic.clone(),
        })
        .await
        .map_err(|s| SimError::rpc("Fleet.ListDevices", s))?
        .into_inner()
        .devices;
    let last: HashMap<String, u64> = devices
        .into_iter()
        .filter_map(|d| Some((d.device?.device_id, d.last_seq)))
        .collect();
    Ok((0..config.devices)
        .map(|i| last.get(&config.device_id(i)).copied().unwrap_or(0))
        .collect())
}
