//! Raising flags on SQLite: one insert a flag (a commit raises few).

use async_trait::async_trait;
use sqlx::SqliteConnection;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use crate::shared::columns::{int8, micros, opt_id};
use crate::shared::rows::{FLAG_COLUMNS, FlagRow};

use super::SqliteStore;
use crate::engine::flags::FlagSql;
use crate::shared::drafts::now_micros;
use crate::{FlagRecord, NewFlag, StoreResult};

#[async_trait]
impl FlagSql for SqliteStore {
    async fn insert_new_flags(
        c: &mut SqliteConnection,
        flags: &[&NewFlag],
    ) -> StoreResult<Vec<(String, FlagRecord)>> {
        // One time for all, as PostgreSQL's `now()` is one per transaction.
        let raised_at = micros(now_micros());
        let sql = format!(
            "INSERT INTO flags (id, dedupe_key, kind, severity, clinic_id, device_id, \
                                session_id, cartridge_id, seq, raised_at, detail, evidence) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
             ON CONFLICT (dedupe_key) DO NOTHING RETURNING {FLAG_COLUMNS}"
        );
        let mut raised = Vec::new();
        for flag in flags {
            let row: Option<FlagRow<SqliteStore>> = sqlx::query_as(&sql)
                .bind(Uuid::new_v4().to_string())
                .bind(&flag.dedupe_key)
                .bind(flag.kind.as_str())
                .bind(flag.severity.as_str())
                .bind(&flag.clinic_id)
                .bind(&flag.device_id)
                .bind(opt_id::<Hyphenated>(
                    flag.session_id.as_deref(),
                    "flag session id",
                )?)
                .bind(flag.cartridge_id.as_deref())
                .bind(int8(flag.seq, "flag seq")?)
                .bind(raised_at)
                .bind(&flag.detail)
                .bind(flag.evidence.to_string())
                .fetch_optional(&mut *c)
                .await?;
            if let Some(row) = row {
                raised.push((flag.dedupe_key.clone(), FlagRecord::try_from(row)?));
            }
        }
        Ok(raised)
    }
}
