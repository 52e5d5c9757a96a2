//! Raising flags: one row per dedupe key, shared by commit, recall and gaps.

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

use super::convert::{FLAG_COLUMNS, FlagRow, flag_records, parse_opt_uuid, to_i64};
use crate::{FlagRecord, NewFlag, StoreResult};

/// Inserts the flags whose dedupe key is new and returns them, in the order
/// given. Within `flags` the first flag of a key wins; a key already stored
/// (by this or any other process) raises nothing. `raised_at` is the
/// transaction's `now()`, so every flag of a commit shares it.
pub(super) async fn insert(
    conn: &mut PgConnection,
    flags: &[NewFlag],
) -> StoreResult<Vec<FlagRecord>> {
    let mut order: HashMap<&str, usize> = HashMap::new();
    let mut unique: Vec<&NewFlag> = Vec::new();
    for flag in flags {
        if !order.contains_key(flag.dedupe_key.as_str()) {
            order.insert(&flag.dedupe_key, unique.len());
            unique.push(flag);
        }
    }
    if unique.is_empty() {
        return Ok(Vec::new());
    }
    // Inserting in key order makes concurrent writers wait on each other's
    // unique-index entries in the same order, so they cannot deadlock.
    unique.sort_by(|a, b| a.dedupe_key.cmp(&b.dedupe_key));
    let rows = insert_rows(conn, &unique).await?;
    let mut raised: Vec<(usize, FlagRow)> = rows
        .into_iter()
        .map(|(key, row)| (order.get(key.as_str()).copied().unwrap_or(usize::MAX), row))
        .collect();
    raised.sort_by_key(|(i, _)| *i);
    flag_records(raised.into_iter().map(|(_, row)| row).collect())
}

/// A `RETURNING` row: the dedupe key (to restore the caller's order) and the
/// flag.
#[derive(Debug, sqlx::FromRow)]
struct Raised {
    dedupe_key: String,
    #[sqlx(flatten)]
    flag: FlagRow,
}

async fn insert_rows(
    conn: &mut PgConnection,
    flags: &[&NewFlag],
) -> StoreResult<Vec<(String, FlagRow)>> {
    let mut c = Columns::default();
    for flag in flags {
        c.push(flag)?;
    }
    let sql = format!(
        "INSERT INTO flags (id, dedupe_key, kind, severity, clinic_id, device_id, session_id, \
                            cartridge_id, seq, detail, evidence) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                              $6::text[], $7::uuid[], $8::text[], $9::int8[], $10::text[], \
                              $11::jsonb[]) \
         ON CONFLICT (dedupe_key) DO NOTHING \
         RETURNING dedupe_key, {FLAG_COLUMNS}"
    );
    let rows: Vec<Raised> = sqlx::query_as(&sql)
        .bind(c.id)
        .bind(c.dedupe_key)
        .bind(c.kind)
        .bind(c.severity)
        .bind(c.clinic_id)
        .bind(c.device_id)
        .bind(c.session_id)
        .bind(c.cartridge_id)
        .bind(c.seq)
        .bind(c.detail)
        .bind(c.evidence)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.dedupe_key, r.flag)).collect())
}

/// The flags as one array per column.
#[derive(Debug, Default)]
struct Columns<'a> {
    id: Vec<Uuid>,
    dedupe_key: Vec<&'a str>,
    kind: Vec<&'static str>,
    severity: Vec<&'static str>,
    clinic_id: Vec<&'a str>,
    device_id: Vec<&'a str>,
    session_id: Vec<Option<Uuid>>,
    cartridge_id: Vec<Option<&'a str>>,
    seq: Vec<i64>,
    detail: Vec<&'a str>,
    evidence: Vec<&'a serde_json::Value>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, flag: &'a NewFlag) -> StoreResult<()> {
        self.id.push(Uuid::new_v4());
        self.dedupe_key.push(&flag.dedupe_key);
        self.kind.push(flag.kind.as_str());
        self.severity.push(flag.severity.as_str());
        self.clinic_id.push(&flag.clinic_id);
        self.device_id.push(&flag.device_id);
        self.session_id.push(parse_opt_uuid(
            flag.session_id.as_deref(),
            "flag session id",
        )?);
        self.cartridge_id.push(flag.cartridge_id.as_deref());
        self.seq.push(to_i64(flag.seq, "flag seq")?);
        self.detail.push(&flag.detail);
        self.evidence.push(&flag.evidence);
        Ok(())
    }
}
