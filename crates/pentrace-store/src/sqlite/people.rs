//! The statements of people, tokens and signatures on SQLite: ids as text,
//! times as microseconds, a user's clinics as a JSON array.

use async_trait::async_trait;
use serde_json::json;
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::SqliteStore;
use crate::engine::people::{PeopleSql, UserKey};
use crate::shared::columns::{StoredTime, stored_uuid};
use crate::shared::corrupt;
use crate::{FlagActionRecord, Role, StoreResult, User};

/// flag, action, signer, meaning, reason, at, bound hash.
type ActionRow = (String, String, String, String, String, i64, Vec<u8>);

#[async_trait]
impl PeopleSql for SqliteStore {
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
