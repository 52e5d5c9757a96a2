//! `load_facts`: one statement per table, on one read connection without a
//! transaction: the commit, not the read, arbitrates races (a fact that
//! changed meanwhile shows up there as a conflict on a message key or a
//! binding). Empty sets cost no statement.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::NaiveDate;
use pentrace_domain::rules::{Binding, LotFacts, ProductFacts, SeqHole};

use super::commit::canonical_id;
use crate::dialect::{Conn, Dialect};
use crate::shared::columns::{StoredId, StoredInt, StoredTime, opt_time};
use crate::shared::relation_from;
use crate::{DeviceState, FactsQuery, SessionState, StoreResult, StoredFacts};

/// Row types of the lookups, in the dialect's column types.
pub(crate) type DeviceRow = (String, String, i32, i64, i64);
pub(crate) type ProductRow = (String, i32, i64, i32, i32);
pub(crate) type LotRow<D> = (
    String,
    String,
    Option<NaiveDate>,
    Option<<D as Dialect>::Time>,
);
pub(crate) type BindingRow<D> = (
    String,
    <D as Dialect>::Id,
    String,
    String,
    Option<String>,
    <D as Dialect>::Time,
    i64,
    i64,
);
pub(crate) type SessionStateRow<D> = (
    <D as Dialect>::Id,
    String,
    String,
    Option<<D as Dialect>::Id>,
    Option<String>,
    i64,
    i64,
    Option<<D as Dialect>::Time>,
);
pub(crate) type HoleRow<D> = (String, i64, i64, <D as Dialect>::Time);

/// The lookups' statements; each takes a non-empty set of keys.
#[async_trait]
pub(crate) trait FactsSql: Dialect {
    /// `(device_id, seq)` of the keys that are stored.
    async fn seen(c: &mut Conn<Self>, keys: &[(String, u64)]) -> StoreResult<Vec<(String, i64)>>;
    /// id, clinic, max depth, max seq, stored watermark.
    async fn devices(c: &mut Conn<Self>, ids: &[&str]) -> StoreResult<Vec<DeviceRow>>;
    /// gtin, max depth, rated strokes, max active s, shelf life days.
    async fn products(c: &mut Conn<Self>, gtins: &[&str]) -> StoreResult<Vec<ProductRow>>;
    /// gtin, lot, expiry, recalled at.
    async fn lots(c: &mut Conn<Self>, keys: &[&(String, String)])
    -> StoreResult<Vec<LotRow<Self>>>;
    /// cartridge, session, device, clinic, patient, last activity, strokes,
    /// active ms.
    async fn bindings(c: &mut Conn<Self>, ids: &[&str]) -> StoreResult<Vec<BindingRow<Self>>>;
    /// Sessions by canonical id: id, device, relation, owner, cartridge,
    /// strokes, active ms, device start.
    async fn session_states(
        c: &mut Conn<Self>,
        ids: &[String],
    ) -> StoreResult<Vec<SessionStateRow<Self>>>;
    /// Open holes of the devices: device, first, last, detected at.
    async fn holes(c: &mut Conn<Self>, device_ids: &[&str]) -> StoreResult<Vec<HoleRow<Self>>>;
}

/// Loads everything the query asks for.
pub(crate) async fn load<D: FactsSql>(d: &D, query: &FactsQuery) -> StoreResult<StoredFacts> {
    let mut conn = d.read().await?;
    let c = &mut *conn;
    let device_ids = strs(&query.device_ids);
    let mut facts = StoredFacts::default();
    if !query.keys.is_empty() {
        for (device, seq) in D::seen(c, &query.keys).await? {
            facts.seen.insert((device, seq.into_u64("seq")?));
        }
    }
    if !device_ids.is_empty() {
        for (id, clinic_id, depth, max_seq, through) in D::devices(c, &device_ids).await? {
            let state = DeviceState {
                clinic_id,
                max_depth_um: depth.into_u32("device max depth")?,
                max_seq: max_seq.into_u64("device max seq")?,
                stored_through: through.into_u64("device stored watermark")?,
            };
            facts.devices.insert(id, state);
        }
        for (device_id, first, last, detected_at) in D::holes(c, &device_ids).await? {
            let hole = SeqHole {
                device_id: device_id.clone(),
                first: first.into_u64("hole first seq")?,
                last: last.into_u64("hole last seq")?,
                detected_at: detected_at.into_time("hole detected_at")?,
            };
            facts.holes.entry(device_id).or_default().push(hole);
        }
    }
    if !query.gtins.is_empty() {
        for (gtin, depth, strokes, active_s, shelf_life) in
            D::products(c, &strs(&query.gtins)).await?
        {
            let product = ProductFacts {
                max_depth_um: depth.into_u32("product max depth")?,
                rated_strokes: strokes.into_u64("product rated strokes")?,
                // u32 seconds × 1000 always fits in u64.
                max_active_ms: u64::from(active_s.into_u32("product max active s")?) * 1000,
                shelf_life_days: shelf_life.into_u32("product shelf life")?,
            };
            facts.products.insert(gtin, product);
        }
    }
    if !query.lots.is_empty() {
        let keys: Vec<&(String, String)> = query.lots.iter().collect();
        for (gtin, lot, expiry, recalled_at) in D::lots(c, &keys).await? {
            let lot_facts = LotFacts {
                expiry,
                recalled_at: opt_time(recalled_at, "lot recalled_at")?,
            };
            facts.lots.insert((gtin, lot), lot_facts);
        }
    }
    if !query.cartridge_ids.is_empty() {
        for row in D::bindings(c, &strs(&query.cartridge_ids)).await? {
            let (id, session_id, device_id, clinic_id, patient_ref, last, strokes, ms) = row;
            let binding = Binding {
                session_id: session_id.into_id(),
                device_id,
                clinic_id,
                patient_ref,
                last_activity_at: last.into_time("cartridge last activity")?,
                strokes: strokes.into_u64("cartridge strokes")?,
                active_ms: ms.into_u64("cartridge active ms")?,
            };
            facts.bindings.insert(id, binding);
        }
    }
    facts.sessions = sessions::<D>(c, &query.session_ids).await?;
    Ok(facts)
}

/// Stored sessions, keyed by the id strings exactly as asked for (ids are
/// stored in canonical lowercase form, which need not match the caller's
/// spelling).
async fn sessions<D: FactsSql>(
    c: &mut Conn<D>,
    ids: &HashSet<String>,
) -> StoreResult<HashMap<String, SessionState>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let asked = ids
        .iter()
        .map(|s| Ok((canonical_id(s, "session id")?, s)))
        .collect::<StoreResult<Vec<_>>>()?;
    let canonical: Vec<String> = asked.iter().map(|(id, _)| id.clone()).collect();
    let mut stored = HashMap::with_capacity(asked.len());
    for row in D::session_states(c, &canonical).await? {
        let (id, device_id, relation, owner, cartridge_id, strokes, active_ms, started) = row;
        let state = SessionState {
            device_id,
            relation: relation_from(&relation, owner.map(StoredId::into_id))?,
            cartridge_id,
            device_started_at: opt_time(started, "session device_started_at")?,
            strokes: strokes.into_u64("session strokes")?,
            active_ms: active_ms.into_u64("session active ms")?,
        };
        stored.insert(id.into_id(), state);
    }
    Ok(asked
        .into_iter()
        .filter_map(|(canonical, asked)| stored.get(&canonical).map(|s| (asked.clone(), s.clone())))
        .collect())
}

fn strs(set: &HashSet<String>) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}
