//! Raising flags on PostgreSQL: one multi-row insert of arrays.

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use crate::engine::flags::FlagSql;
use crate::shared::columns::{int8, opt_id};
use crate::shared::rows::{FLAG_COLUMNS, FlagRow};
use crate::{FlagRecord, NewFlag, StoreResult};

#[async_trait]
impl FlagSql for PgStore {
    async fn insert_new_flags(
        c: &mut PgConnection,
        flags: &[&NewFlag],
    ) -> StoreResult<Vec<(String, FlagRecord)>> {
        insert_rows(c, flags)
            .await?
            .into_iter()
            .map(|(key, row)| Ok((key, FlagRecord::try_from(row)?)))
            .collect()
    }
}

/// A `RETURNING` row: the dedupe key (to restore the caller's order) and the
/// flag.
#[derive(Debug, sqlx::FromRow)]
struct Raised {
    dedupe_key: String,
    #[sqlx(flatten)]
    flag: FlagRow<PgStore>,
}

async fn insert_rows(
    conn: &mut PgConnection,
    flags: &[&NewFlag],
) -> StoreResult<Vec<(String, FlagRow<PgStore>)>> {
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
        self.session_id.push(opt_id::<Uuid>(
            flag.session_id.as_deref(),
            "flag session id",
        )?);
        self.cartridge_id.push(flag.cartridge_id.as_deref());
        self.seq.push(int8(flag.seq, "flag seq")?);
        self.detail.push(&flag.detail);
        self.evidence.push(&flag.evidence);
        Ok(())
    }
}
