//! Users, bearer tokens (stored only as hashes) and signed flag actions.

use chrono::{DateTime, Utc};
use pentrace_domain::audit::Actor;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::audit;
use super::convert::{FLAG_COLUMNS, FlagRow, corrupt, flag_records};
use crate::shared::drafts::{now_micros, user_draft};
use crate::shared::next_state;
use crate::{
    AuditDraft, FlagAction, FlagActionRecord, FlagRecord, Role, StoreError, StoreResult, User,
};

pub(super) async fn create_user(
    pool: &PgPool,
    name: &str,
    role: Role,
    clinics: &[String],
    actor: &Actor,
) -> StoreResult<User> {
    let user = User {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        role,
        clinics: clinics.to_vec(),
    };
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO users (id, name, role) VALUES ($1, $2, $3)")
        .bind(user.id)
        .bind(name)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Invalid(format!("a user named {name:?} exists already"))
            }
            _ => e.into(),
        })?;
    sqlx::query(
        "INSERT INTO user_clinics (user_id, clinic_id) SELECT $1, c FROM UNNEST($2::text[]) c",
    )
    .bind(user.id)
    .bind(clinics)
    .execute(&mut *tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::NotFound(format!("clinic among {clinics:?}"))
        }
        _ => e.into(),
    })?;
    audit::append(
        &mut tx,
        &[user_draft("user.created", &user, actor, json!(null))],
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

type UserRow = (Uuid, String, String, Vec<String>);

const USER_SELECT: &str = "SELECT u.id, u.name, u.role, \
     COALESCE(array_agg(uc.clinic_id ORDER BY uc.clinic_id) FILTER (WHERE uc.clinic_id IS NOT NULL), '{}') \
     FROM users u LEFT JOIN user_clinics uc ON uc.user_id = u.id";

fn user_from((id, name, role, clinics): UserRow) -> StoreResult<User> {
    let role = Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role}")))?;
    Ok(User {
        id,
        name,
        role,
        clinics,
    })
}

pub(super) async fn user_by_name(pool: &PgPool, name: &str) -> StoreResult<Option<User>> {
    let sql = format!("{USER_SELECT} WHERE u.name = $1 GROUP BY u.id");
    let row: Option<UserRow> = sqlx::query_as(&sql).bind(name).fetch_optional(pool).await?;
    row.map(user_from).transpose()
}

pub(super) async fn user_by_token(pool: &PgPool, hash: &[u8; 32]) -> StoreResult<Option<User>> {
    let sql = format!(
        "{USER_SELECT} JOIN api_tokens t ON t.user_id = u.id \
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL GROUP BY u.id"
    );
    let row: Option<UserRow> = sqlx::query_as(&sql)
        .bind(hash.as_slice())
        .fetch_optional(pool)
        .await?;
    row.map(user_from).transpose()
}

async fn user_by_id(conn: &mut PgConnection, id: Uuid) -> StoreResult<User> {
    let sql = format!("{USER_SELECT} WHERE u.id = $1 GROUP BY u.id");
    let row: Option<UserRow> = sqlx::query_as(&sql).bind(id).fetch_optional(conn).await?;
    row.map(user_from)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("user {id}")))
}

pub(super) async fn issue_token(
    pool: &PgPool,
    user_id: Uuid,
    hash: &[u8; 32],
    actor: &Actor,
) -> StoreResult<Uuid> {
    let mut tx = pool.begin().await?;
    let user = user_by_id(&mut tx, user_id).await?;
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO api_tokens (id, user_id, token_hash) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(user_id)
        .bind(hash.as_slice())
        .execute(&mut *tx)
        .await?;
    let draft = user_draft("token.issued", &user, actor, json!({ "token_id": id }));
    audit::append(&mut tx, &[draft]).await?;
    tx.commit().await?;
    Ok(id)
}

pub(super) async fn revoke_token(pool: &PgPool, token_id: Uuid, actor: &Actor) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    let user_id: Option<Uuid> = sqlx::query_scalar(
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 RETURNING user_id",
    )
    .bind(token_id)
    .fetch_optional(&mut *tx)
    .await?;
    let user_id = user_id.ok_or_else(|| StoreError::NotFound(format!("token {token_id}")))?;
    let user = user_by_id(&mut tx, user_id).await?;
    let draft = user_draft(
        "token.revoked",
        &user,
        actor,
        json!({ "token_id": token_id }),
    );
    audit::append(&mut tx, &[draft]).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn sign_flag(pool: &PgPool, a: &FlagAction) -> StoreResult<FlagRecord> {
    if a.reason.trim().is_empty() {
        return Err(StoreError::Invalid("a signed action needs a reason".into()));
    }
    let mut tx = pool.begin().await?;
    let (state, clinic_id): (String, String) =
        sqlx::query_as("SELECT state, clinic_id FROM flags WHERE id = $1 FOR UPDATE")
            .bind(a.flag_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("flag {}", a.flag_id)))?;
    // A flag of a clinic the signer does not act for does not exist for them.
    if a.signer.role != Role::Admin && !a.signer.clinics.contains(&clinic_id) {
        return Err(StoreError::NotFound(format!("flag {}", a.flag_id)));
    }
    let next = next_state(&state, a.step)?;
    // The signature covers the flag as it stands: its latest audit event.
    let bound: Vec<u8> = sqlx::query_scalar(
        "SELECT hash FROM audit_events WHERE subject_type = 'flag' AND subject_id = $1 \
         ORDER BY at DESC, position DESC LIMIT 1",
    )
    .bind(a.flag_id.to_string())
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| corrupt(format!("flag {} has no audit event", a.flag_id)))?;
    let at = now_micros();
    let draft = AuditDraft {
        clinic_id,
        actor: Actor::User(a.signer.id.to_string()),
        action: format!("flag.{next}"),
        subject_type: "flag".into(),
        subject_id: a.flag_id.to_string(),
        old_value: Some(json!({ "state": state })),
        new_value: Some(json!({
            "state": next,
            "signer_id": a.signer.id,
            "signer_name": a.signer.name,
            "meaning": a.meaning.as_str(),
            "bound_to": hex::encode(&bound),
        })),
        reason: Some(a.reason.clone()),
    };
    let hashes = audit::append(&mut tx, &[draft]).await?;
    let event_hash = hashes.first().copied().unwrap_or_default();
    sqlx::query(
        "INSERT INTO flag_actions (flag_id, action, user_id, signer_name, meaning, reason, at, \
                                   bound_hash, event_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(a.flag_id)
    .bind(a.step.as_str())
    .bind(a.signer.id)
    .bind(&a.signer.name)
    .bind(a.meaning.as_str())
    .bind(&a.reason)
    .bind(at)
    .bind(&bound)
    .bind(event_hash.as_slice())
    .execute(&mut *tx)
    .await?;
    let sql = format!("UPDATE flags SET state = $2 WHERE id = $1 RETURNING {FLAG_COLUMNS}");
    let row: FlagRow = sqlx::query_as(&sql)
        .bind(a.flag_id)
        .bind(next)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    flag_records(vec![row])?
        .pop()
        .ok_or_else(|| corrupt("flag vanished".into()))
}

/// flag, action, signer, meaning, reason, at, bound hash.
type ActionRow = (Uuid, String, String, String, String, DateTime<Utc>, Vec<u8>);

pub(super) async fn flag_actions(
    pool: &PgPool,
    ids: &[Uuid],
) -> StoreResult<Vec<FlagActionRecord>> {
    let rows: Vec<ActionRow> = sqlx::query_as(
        "SELECT flag_id, action, signer_name, meaning, reason, at, bound_hash FROM flag_actions \
         WHERE flag_id = ANY($1) ORDER BY at, flag_id",
    )
    .bind(ids)
    .fetch_all(pool)
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
