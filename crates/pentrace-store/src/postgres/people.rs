//! The statements of people, tokens and signatures on PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pentrace_domain::audit::ChainHash;
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use crate::engine::people::{PeopleSql, UserKey};
use crate::shared::corrupt;
use crate::shared::rows::{FLAG_COLUMNS, FlagRow};
use crate::{FlagAction, FlagActionRecord, FlagRecord, Role, StoreResult, User};

/// flag, action, signer, meaning, reason, at, bound hash.
type ActionRow = (Uuid, String, String, String, String, DateTime<Utc>, Vec<u8>);

#[async_trait]
impl PeopleSql for PgStore {
    async fn insert_user(c: &mut PgConnection, user: &User) -> StoreResult<()> {
        sqlx::query("INSERT INTO users (id, name, role) VALUES ($1, $2, $3)")
            .bind(user.id)
            .bind(&user.name)
            .bind(user.role.as_str())
            .execute(c)
            .await?;
        Ok(())
    }

    async fn add_clinics(c: &mut PgConnection, user: Uuid, clinics: &[String]) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO user_clinics (user_id, clinic_id) SELECT $1, c FROM UNNEST($2::text[]) c",
        )
        .bind(user)
        .bind(clinics)
        .execute(c)
        .await?;
        Ok(())
    }

    async fn user(c: &mut PgConnection, key: UserKey<'_>) -> StoreResult<Option<User>> {
        let filter = match key {
            UserKey::Id(_) => "u.id = $1",
            UserKey::Name(_) => "u.name = $1",
            UserKey::Token(_) => {
                "u.id IN (SELECT user_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL)"
            }
        };
        let sql = format!(
            "SELECT u.id, u.name, u.role, \
                    ARRAY(SELECT clinic_id FROM user_clinics WHERE user_id = u.id ORDER BY clinic_id) \
             FROM users u WHERE {filter}"
        );
        let query = sqlx::query_as(&sql);
        let query = match key {
            UserKey::Id(id) => query.bind(id),
            UserKey::Name(name) => query.bind(name),
            UserKey::Token(hash) => query.bind(hash.as_slice()),
        };
        let row: Option<(Uuid, String, String, Vec<String>)> = query.fetch_optional(c).await?;
        row.map(|(id, name, role, clinics)| {
            let role = Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role}")))?;
            Ok(User {
                id,
                name,
                role,
                clinics,
            })
        })
        .transpose()
    }

    async fn insert_token(
        c: &mut PgConnection,
        id: Uuid,
        user: Uuid,
        hash: &[u8; 32],
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO api_tokens (id, user_id, token_hash) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(user)
            .bind(hash.as_slice())
            .execute(c)
            .await?;
        Ok(())
    }

    async fn revoke_token(
        c: &mut PgConnection,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 \
             RETURNING user_id",
        )
        .bind(id)
        .bind(at)
        .fetch_optional(c)
        .await?)
    }

    async fn lock_flag(c: &mut PgConnection, id: Uuid) -> StoreResult<Option<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT state, clinic_id FROM flags WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(c)
                .await?,
        )
    }

    async fn flag_head(c: &mut PgConnection, id: Uuid) -> StoreResult<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(
            "SELECT hash FROM audit_events WHERE subject_type = 'flag' AND subject_id = $1 \
             ORDER BY at DESC, position DESC LIMIT 1",
        )
        .bind(id.to_string())
        .fetch_optional(c)
        .await?)
    }

    async fn record_signature(
        c: &mut PgConnection,
        a: &FlagAction,
        state: &str,
        at: DateTime<Utc>,
        bound: &[u8],
        event: &ChainHash,
    ) -> StoreResult<FlagRecord> {
        sqlx::query(
            "INSERT INTO flag_actions (flag_id, action, user_id, signer_name, meaning, reason, at, \
                                       bound_hash, event_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(a.flag_id)
        .bind(a.step.as_str())
        .bind(a.signer.id)
        .bind(&a.signer.name)
        .bind(a.meaning.as_str())
        .bind(&a.reason)
        .bind(at)
        .bind(bound)
        .bind(event.as_slice())
        .execute(&mut *c)
        .await?;
        let sql = format!("UPDATE flags SET state = $2 WHERE id = $1 RETURNING {FLAG_COLUMNS}");
        let row: FlagRow<PgStore> = sqlx::query_as(&sql)
            .bind(a.flag_id)
            .bind(state)
            .fetch_one(c)
            .await?;
        FlagRecord::try_from(row)
    }

    async fn flag_actions(
        c: &mut PgConnection,
        ids: &[Uuid],
    ) -> StoreResult<Vec<FlagActionRecord>> {
        let rows: Vec<ActionRow> = sqlx::query_as(
            "SELECT flag_id, action, signer_name, meaning, reason, at, bound_hash FROM flag_actions \
             WHERE flag_id = ANY($1) ORDER BY at, flag_id",
        )
        .bind(ids)
        .fetch_all(c)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(flag_id, step, signer_name, meaning, reason, at, bound)| FlagActionRecord {
                    flag_id,
                    step,
                    signer_name,
                    meaning,
                    reason,
                    at,
                    bound_hash: hex::encode(bound),
                },
            )
            .collect())
    }
}
