//! Users, bearer tokens (stored only as hashes) and signed flag actions.

use pentrace_domain::audit::Actor;
use serde_json::json;
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::convert::{FLAG_COLUMNS, FlagRow, corrupt, flag_records, micros, stored_uuid, time};
use super::{audit, begin};
use crate::shared::drafts::{now_micros, user_draft};
use crate::shared::next_state;
use crate::{
    AuditDraft, FlagAction, FlagActionRecord, FlagRecord, Role, StoreError, StoreResult, User,
};

pub(super) async fn create_user(
    pool: &SqlitePool,
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
    let mut tx = begin(pool).await?;
    sqlx::query("INSERT INTO users (id, name, role) VALUES (?1, ?2, ?3)")
        .bind(user.id.to_string())
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
    for clinic in clinics {
        sqlx::query("INSERT INTO user_clinics (user_id, clinic_id) VALUES (?1, ?2)")
            .bind(user.id.to_string())
            .bind(clinic)
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                    StoreError::NotFound(format!("clinic among {clinics:?}"))
                }
                _ => e.into(),
            })?;
    }
    audit::append(
        &mut tx,
        &[user_draft("user.created", &user, actor, json!(null))],
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

/// A `users` row; its clinics come from a second statement.
type UserRow = (String, String, String);

/// The user with the row's clinics, in clinic order.
async fn user_from(conn: &mut SqliteConnection, (id, name, role): UserRow) -> StoreResult<User> {
    let role = Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role}")))?;
    let clinics: Vec<String> = sqlx::query_scalar(
        "SELECT clinic_id FROM user_clinics WHERE user_id = ?1 ORDER BY clinic_id",
    )
    .bind(&id)
    .fetch_all(conn)
    .await?;
    Ok(User {
        id: stored_uuid(&id, "user id")?,
        name,
        role,
        clinics,
    })
}

pub(super) async fn user_by_name(pool: &SqlitePool, name: &str) -> StoreResult<Option<User>> {
    let mut conn = pool.acquire().await?;
    let row: Option<UserRow> = sqlx::query_as("SELECT id, name, role FROM users WHERE name = ?1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(Some(user_from(&mut conn, row).await?)),
        None => Ok(None),
    }
}

pub(super) async fn user_by_token(pool: &SqlitePool, hash: &[u8; 32]) -> StoreResult<Option<User>> {
    let mut conn = pool.acquire().await?;
    let row: Option<UserRow> = sqlx::query_as(
        "SELECT u.id, u.name, u.role FROM users u JOIN api_tokens t ON t.user_id = u.id \
         WHERE t.token_hash = ?1 AND t.revoked_at IS NULL",
    )
    .bind(hash.as_slice())
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(Some(user_from(&mut conn, row).await?)),
        None => Ok(None),
    }
}

async fn user_by_id(conn: &mut SqliteConnection, id: Uuid) -> StoreResult<User> {
    let row: Option<UserRow> = sqlx::query_as("SELECT id, name, role FROM users WHERE id = ?1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let row = row.ok_or_else(|| StoreError::NotFound(format!("user {id}")))?;
    user_from(conn, row).await
}

pub(super) async fn issue_token(
    pool: &SqlitePool,
    user_id: Uuid,
    hash: &[u8; 32],
    actor: &Actor,
) -> StoreResult<Uuid> {
    let mut tx = begin(pool).await?;
    let user = user_by_id(&mut tx, user_id).await?;
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO api_tokens (id, user_id, token_hash) VALUES (?1, ?2, ?3)")
        .bind(id.to_string())
        .bind(user_id.to_string())
        .bind(hash.as_slice())
        .execute(&mut *tx)
        .await?;
    let draft = user_draft("token.issued", &user, actor, json!({ "token_id": id }));
    audit::append(&mut tx, &[draft]).await?;
    tx.commit().await?;
    Ok(id)
}

pub(super) async fn revoke_token(
    pool: &SqlitePool,
    token_id: Uuid,
    actor: &Actor,
) -> StoreResult<()> {
    let mut tx = begin(pool).await?;
    let user_id: Option<String> = sqlx::query_scalar(
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1 \
         RETURNING user_id",
    )
    .bind(token_id.to_string())
    .bind(micros(now_micros()))
    .fetch_optional(&mut *tx)
    .await?;
    let user_id = user_id.ok_or_else(|| StoreError::NotFound(format!("token {token_id}")))?;
    let user = user_by_id(&mut tx, stored_uuid(&user_id, "user id")?).await?;
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

pub(super) async fn sign_flag(pool: &SqlitePool, a: &FlagAction) -> StoreResult<FlagRecord> {
    if a.reason.trim().is_empty() {
        return Err(StoreError::Invalid("a signed action needs a reason".into()));
    }
    let flag_id = a.flag_id.to_string();
    let mut tx = begin(pool).await?;
    let (state, clinic_id) = flag_for_signer(&mut tx, a).await?;
    let next = next_state(&state, a.step)?;
    // The signature covers the flag as it stands: its latest audit event.
    let bound: Vec<u8> = sqlx::query_scalar(
        "SELECT hash FROM audit_events WHERE subject_type = 'flag' AND subject_id = ?1 \
         ORDER BY at DESC, position DESC LIMIT 1",
    )
    .bind(&flag_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| corrupt(format!("flag {flag_id} has no audit event")))?;
    let at = now_micros();
    let draft = signed_draft(a, clinic_id, &state, next, &bound);
    let hashes = audit::append(&mut tx, &[draft]).await?;
    let event_hash = hashes.first().copied().unwrap_or_default();
    sqlx::query(
        "INSERT INTO flag_actions (flag_id, action, user_id, signer_name, meaning, reason, at, \
                                   bound_hash, event_hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(&flag_id)
    .bind(a.step.as_str())
    .bind(a.signer.id.to_string())
    .bind(&a.signer.name)
    .bind(a.meaning.as_str())
    .bind(&a.reason)
    .bind(micros(at))
    .bind(&bound)
    .bind(event_hash.as_slice())
    .execute(&mut *tx)
    .await?;
    let sql = format!("UPDATE flags SET state = ?2 WHERE id = ?1 RETURNING {FLAG_COLUMNS}");
    let row: FlagRow = sqlx::query_as(&sql)
        .bind(&flag_id)
        .bind(next)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    flag_records(vec![row])?
        .pop()
        .ok_or_else(|| corrupt("flag vanished".into()))
}

/// The flag's state and clinic. A flag of a clinic the signer does not act
/// for does not exist for them. No row lock is needed: the transaction holds
/// SQLite's write lock.
async fn flag_for_signer(
    conn: &mut SqliteConnection,
    a: &FlagAction,
) -> StoreResult<(String, String)> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT state, clinic_id FROM flags WHERE id = ?1")
            .bind(a.flag_id.to_string())
            .fetch_optional(conn)
            .await?;
    match row {
        Some((state, clinic_id))
            if a.signer.role == Role::Admin || a.signer.clinics.contains(&clinic_id) =>
        {
            Ok((state, clinic_id))
        }
        _ => Err(StoreError::NotFound(format!("flag {}", a.flag_id))),
    }
}

/// `flag.<state>`: the signer, the meaning and the audit hash the signature
/// is bound to, with the mandatory reason.
fn signed_draft(
    a: &FlagAction,
    clinic_id: String,
    state: &str,
    next: &str,
    bound: &[u8],
) -> AuditDraft {
    AuditDraft {
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
            "bound_to": hex::encode(bound),
        })),
        reason: Some(a.reason.clone()),
    }
}

/// flag, action, signer, meaning, reason, at, bound hash.
type ActionRow = (String, String, String, String, String, i64, Vec<u8>);

pub(super) async fn flag_actions(
    pool: &SqlitePool,
    ids: &[Uuid],
) -> StoreResult<Vec<FlagActionRecord>> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let rows: Vec<ActionRow> = sqlx::query_as(
        "SELECT flag_id, action, signer_name, meaning, reason, at, bound_hash FROM flag_actions \
         WHERE flag_id IN (SELECT value FROM json_each(?1)) ORDER BY at, flag_id",
    )
    .bind(json!(ids).to_string())
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(flag_id, step, signer_name, meaning, reason, at, bound)| {
            Ok(FlagActionRecord {
                flag_id: stored_uuid(&flag_id, "flag id")?,
                step,
                signer_name,
                meaning,
                reason,
                at: time(at, "flag action time")?,
                bound_hash: hex::encode(bound),
            })
        })
        .collect()
}
