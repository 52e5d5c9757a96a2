//! The statements of people, tokens and signatures on SQLite: ids as text,
//! times as microseconds, a user's clinics as a JSON array.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pentrace_domain::audit::ChainHash;
use serde_json::json;
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::SqliteStore;
use crate::engine::people::{PeopleSql, UserKey};
use crate::shared::columns::{StoredTime, micros, stored_uuid};
use crate::shared::corrupt;
use crate::shared::rows::{FLAG_COLUMNS, FlagRow};
use crate::{FlagAction, FlagActionRecord, FlagRecord, Role, StoreResult, User};

/// flag, action, signer, meaning, reason, at, bound hash.
type ActionRow = (String, String, String, String, String, i64, Vec<u8>);

#[async_trait]
impl PeopleSql for SqliteStore {
    async fn insert_user(c: &mut SqliteConnection, user: &User) -> StoreResult<()> {
        sqlx::query("INSERT INTO users (id, name, role) VALUES (?1, ?2, ?3)")
            .bind(user.id.to_string())
            .bind(&user.name)
            .bind(user.role.as_str())
            .execute(c)
            .await?;
        Ok(())
    }

    async fn add_clinics(
        c: &mut SqliteConnection,
        user: Uuid,
        clinics: &[String],
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO user_clinics (user_id, clinic_id) SELECT ?1, value FROM json_each(?2)",
        )
        .bind(user.to_string())
        .bind(json!(clinics).to_string())
        .execute(c)
        .await?;
        Ok(())
    }

    async fn user(c: &mut SqliteConnection, key: UserKey<'_>) -> StoreResult<Option<User>> {
        let filter = match key {
            UserKey::Id(_) => "u.id = ?1",
            UserKey::Name(_) => "u.name = ?1",
            UserKey::Token(_) => {
                "u.id IN (SELECT user_id FROM api_tokens WHERE token_hash = ?1 AND revoked_at IS NULL)"
            }
        };
        let sql = format!(
            "SELECT u.id, u.name, u.role, (SELECT json_group_array(clinic_id ORDER BY clinic_id) \
                                           FROM user_clinics WHERE user_id = u.id) \
             FROM users u WHERE {filter}"
        );
        let query = sqlx::query_as(&sql);
        let query = match key {
            UserKey::Id(id) => query.bind(id.to_string()),
            UserKey::Name(name) => query.bind(name),
            UserKey::Token(hash) => query.bind(hash.as_slice()),
        };
        let row: Option<(String, String, String, String)> = query.fetch_optional(c).await?;
        row.map(|(id, name, role, clinics)| {
            Ok(User {
                id: stored_uuid(&id, "user id")?,
                name,
                role: Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role}")))?,
                clinics: serde_json::from_str(&clinics)
                    .map_err(|e| corrupt(format!("clinics of user {id}: {e}")))?,
            })
        })
        .transpose()
    }

    async fn insert_token(
        c: &mut SqliteConnection,
        id: Uuid,
        user: Uuid,
        hash: &[u8; 32],
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO api_tokens (id, user_id, token_hash) VALUES (?1, ?2, ?3)")
            .bind(id.to_string())
            .bind(user.to_string())
            .bind(hash.as_slice())
            .execute(c)
            .await?;
        Ok(())
    }

    async fn revoke_token(
        c: &mut SqliteConnection,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Uuid>> {
        let user: Option<String> = sqlx::query_scalar(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1 \
             RETURNING user_id",
        )
        .bind(id.to_string())
        .bind(micros(at))
        .fetch_optional(c)
        .await?;
        user.map(|u| stored_uuid(&u, "user id")).transpose()
    }

    async fn lock_flag(
        c: &mut SqliteConnection,
        id: Uuid,
    ) -> StoreResult<Option<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT state, clinic_id FROM flags WHERE id = ?1")
                .bind(id.to_string())
                .fetch_optional(c)
                .await?,
        )
    }

    async fn flag_head(c: &mut SqliteConnection, id: Uuid) -> StoreResult<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(
            "SELECT hash FROM audit_events WHERE subject_type = 'flag' AND subject_id = ?1 \
             ORDER BY at DESC, position DESC LIMIT 1",
        )
        .bind(id.to_string())
        .fetch_optional(c)
        .await?)
    }

    async fn record_signature(
        c: &mut SqliteConnection,
        a: &FlagAction,
        state: &str,
        at: DateTime<Utc>,
        bound: &[u8],
        event: &ChainHash,
    ) -> StoreResult<FlagRecord> {
        sqlx::query(
            "INSERT INTO flag_actions (flag_id, action, user_id, signer_name, meaning, reason, at, \
                                       bound_hash, event_hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(a.flag_id.to_string())
        .bind(a.step.as_str())
        .bind(a.signer.id.to_string())
        .bind(&a.signer.name)
        .bind(a.meaning.as_str())
        .bind(&a.reason)
        .bind(micros(at))
        .bind(bound)
        .bind(event.as_slice())
        .execute(&mut *c)
        .await?;
        let sql = format!("UPDATE flags SET state = ?2 WHERE id = ?1 RETURNING {FLAG_COLUMNS}");
        let row: FlagRow<SqliteStore> = sqlx::query_as(&sql)
            .bind(a.flag_id.to_string())
            .bind(state)
            .fetch_one(c)
            .await?;
        FlagRecord::try_from(row)
    }

    async fn flag_actions(
        c: &mut SqliteConnection,
        ids: &[Uuid],
    ) -> StoreResult<Vec<FlagActionRecord>> {
        let rows: Vec<ActionRow> = sqlx::query_as(
            "SELECT flag_id, action, signer_name, meaning, reason, at, bound_hash FROM flag_actions \
             WHERE flag_id IN (SELECT value FROM json_each(?1)) ORDER BY at, flag_id",
        )
        .bind(json!(ids).to_string())
        .fetch_all(c)
        .await?;
        rows.into_iter()
            .map(|(flag_id, step, signer_name, meaning, reason, at, bound)| {
                Ok(FlagActionRecord {
                    flag_id: stored_uuid(&flag_id, "flag id")?,
                    step,
                    signer_name,
                    meaning,
                    reason,
                    at: StoredTime::into_time(at, "flag action time")?,
                    bound_hash: hex::encode(bound),
                })
            })
            .collect()
    }
}
