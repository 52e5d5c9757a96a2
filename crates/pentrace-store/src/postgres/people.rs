//! The statements of people, tokens and signatures on PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use crate::engine::people::{PeopleSql, UserKey};
use crate::shared::corrupt;
use crate::{FlagActionRecord, Role, StoreResult, User};

/// flag, action, signer, meaning, reason, at, bound hash.
type ActionRow = (Uuid, String, String, String, String, DateTime<Utc>, Vec<u8>);

#[async_trait]
impl PeopleSql for PgStore {
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

    async fn lock_flag(c: &mut PgConnection, id: Uuid) -> StoreResult<Option<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT state, clinic_id FROM flags WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(c)
                .await?,
        )
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
