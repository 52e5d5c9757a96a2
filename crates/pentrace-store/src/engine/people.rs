//! Users, their bearer tokens (stored only as hashes) and the signed
//! actions that move a flag through its lifecycle, every change audited.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pentrace_domain::audit::{Actor, ChainHash};
use serde_json::json;
use uuid::Uuid;

use super::audit::AuditSql;
use crate::classify::{duplicate, missing_parent};
use crate::dialect::{Conn, Dialect, for_both_stores};
use crate::shared::columns::StoredId;
use crate::shared::drafts::{now_micros, user_draft};
use crate::shared::next_state;
use crate::shared::rows::{FLAG_COLUMNS, FlagRow};
use crate::{
    AuditDraft, FlagAction, FlagActionRecord, FlagRecord, Role, StoreError, StoreResult, User,
};

/// How a user is looked up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UserKey<'a> {
    Id(Uuid),
    Name(&'a str),
    /// The hash of one of the user's tokens that is not revoked.
    Token(&'a [u8; 32]),
}

/// The statements of people and signatures whose SQL differs between the
/// dialects.
#[async_trait]
pub(crate) trait PeopleSql: Dialect {
    /// A missing clinic is a foreign-key violation.
    async fn add_clinics(c: &mut Conn<Self>, user: Uuid, clinics: &[String]) -> StoreResult<()>;
    /// The user with their clinics in clinic order.
    async fn user(c: &mut Conn<Self>, key: UserKey<'_>) -> StoreResult<Option<User>>;
    /// The flag's state and clinic, locked against other signers until the
    /// transaction ends (on SQLite the write transaction holds the lock).
    async fn lock_flag(c: &mut Conn<Self>, id: Uuid) -> StoreResult<Option<(String, String)>>;
    /// The flags' signed actions by time, then flag.
    async fn flag_actions(c: &mut Conn<Self>, ids: &[Uuid]) -> StoreResult<Vec<FlagActionRecord>>;
}

/// The statements of people, tokens and signatures both dialects spell
/// alike.
#[async_trait]
pub(crate) trait PeopleCommonSql: Dialect {
    /// The `users` row; a taken name is a unique violation.
    async fn insert_user(c: &mut Conn<Self>, user: &User) -> StoreResult<()>;
    /// A hash in use is a unique violation.
    async fn insert_token(
        c: &mut Conn<Self>,
        id: Uuid,
        user: Uuid,
        hash: &[u8; 32],
    ) -> StoreResult<()>;
    /// Sets the token's revocation time unless it has one; the token's user,
    /// None when there is no such token.
    async fn revoke_token(
        c: &mut Conn<Self>,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Uuid>>;
    /// The hash of the flag's latest audit event.
    async fn flag_head(c: &mut Conn<Self>, id: Uuid) -> StoreResult<Option<Vec<u8>>>;
    /// Stores the signed action and moves the flag to `state`; the flag.
    async fn record_signature(
        c: &mut Conn<Self>,
        a: &FlagAction,
        state: &str,
        at: DateTime<Utc>,
        bound: &[u8],
        event: &ChainHash,
    ) -> StoreResult<FlagRecord>;
}

for_both_stores! {
    impl PeopleCommonSql {
        async fn insert_user(c: &mut Conn<Self>, user: &User) -> StoreResult<()> {
            sqlx::query("INSERT INTO users (id, name, role) VALUES ($1, $2, $3)")
                .bind(Self::uuid(user.id))
                .bind(&user.name)
                .bind(user.role.as_str())
                .execute(c)
                .await?;
            Ok(())
        }

        async fn insert_token(
            c: &mut Conn<Self>,
            id: Uuid,
            user: Uuid,
            hash: &[u8; 32],
        ) -> StoreResult<()> {
            sqlx::query("INSERT INTO api_tokens (id, user_id, token_hash) VALUES ($1, $2, $3)")
                .bind(Self::uuid(id))
                .bind(Self::uuid(user))
                .bind(hash.as_slice())
                .execute(c)
                .await?;
            Ok(())
        }

        async fn revoke_token(
            c: &mut Conn<Self>,
            id: Uuid,
            at: DateTime<Utc>,
        ) -> StoreResult<Option<Uuid>> {
            let user: Option<<Self as Dialect>::Id> = sqlx::query_scalar(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 \
                 RETURNING user_id",
            )
            .bind(Self::uuid(id))
            .bind(Self::time(at))
            .fetch_optional(c)
            .await?;
            Ok(user.map(StoredId::into_uuid))
        }

        async fn flag_head(c: &mut Conn<Self>, id: Uuid) -> StoreResult<Option<Vec<u8>>> {
            Ok(sqlx::query_scalar(
                "SELECT hash FROM audit_events WHERE subject_type = 'flag' AND subject_id = $1 \
                 ORDER BY at DESC, position DESC LIMIT 1",
            )
            .bind(id.to_string())
            .fetch_optional(c)
            .await?)
        }

        async fn record_signature(
            c: &mut Conn<Self>,
            a: &FlagAction,
            state: &str,
            at: DateTime<Utc>,
            bound: &[u8],
            event: &ChainHash,
        ) -> StoreResult<FlagRecord> {
            sqlx::query(
                "INSERT INTO flag_actions (flag_id, action, user_id, signer_name, meaning, \
                                           reason, at, bound_hash, event_hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(Self::uuid(a.flag_id))
            .bind(a.step.as_str())
            .bind(Self::uuid(a.signer.id))
            .bind(&a.signer.name)
            .bind(a.meaning.as_str())
            .bind(&a.reason)
            .bind(Self::time(at))
            .bind(bound)
            .bind(event.as_slice())
            .execute(&mut *c)
            .await?;
            let sql = format!("UPDATE flags SET state = $2 WHERE id = $1 RETURNING {FLAG_COLUMNS}");
            let row: FlagRow<Self> = sqlx::query_as(&sql)
                .bind(Self::uuid(a.flag_id))
                .bind(state)
                .fetch_one(c)
                .await?;
            FlagRecord::try_from(row)
        }
    }
}

/// `NotFound` when a clinic does not exist, `Invalid` when the name is taken.
pub(crate) async fn create_user<D: PeopleSql + PeopleCommonSql + AuditSql>(
    d: &D,
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
    let mut tx = d.write().await?;
    D::insert_user(&mut tx, &user)
        .await
        .map_err(|e| duplicate(e, || format!("a user named {name:?} exists already")))?;
    D::add_clinics(&mut tx, user.id, clinics)
        .await
        .map_err(|e| missing_parent(e, || format!("clinic among {clinics:?}")))?;
    let draft = user_draft("user.created", &user, actor, json!(null));
    D::append(&mut tx, &[draft]).await?;
    tx.commit().await?;
    Ok(user)
}

pub(crate) async fn user_by_name<D: PeopleSql>(d: &D, name: &str) -> StoreResult<Option<User>> {
    D::user(&mut *d.read().await?, UserKey::Name(name)).await
}

pub(crate) async fn user_by_token<D: PeopleSql>(
    d: &D,
    hash: &[u8; 32],
) -> StoreResult<Option<User>> {
    D::user(&mut *d.read().await?, UserKey::Token(hash)).await
}

async fn user_by_id<D: PeopleSql>(c: &mut Conn<D>, id: Uuid) -> StoreResult<User> {
    D::user(c, UserKey::Id(id))
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("user {id}")))
}

/// The token's id; `NotFound` when there is no such user.
pub(crate) async fn issue_token<D: PeopleSql + PeopleCommonSql + AuditSql>(
    d: &D,
    user_id: Uuid,
    hash: &[u8; 32],
    actor: &Actor,
) -> StoreResult<Uuid> {
    let mut tx = d.write().await?;
    let user = user_by_id::<D>(&mut tx, user_id).await?;
    let id = Uuid::new_v4();
    D::insert_token(&mut tx, id, user_id, hash).await?;
    let draft = user_draft("token.issued", &user, actor, json!({ "token_id": id }));
    D::append(&mut tx, &[draft]).await?;
    tx.commit().await?;
    Ok(id)
}

/// Revoking twice keeps the first time and is audited again.
pub(crate) async fn revoke_token<D: PeopleSql + PeopleCommonSql + AuditSql>(
    d: &D,
    id: Uuid,
    actor: &Actor,
) -> StoreResult<()> {
    let mut tx = d.write().await?;
    let user_id = D::revoke_token(&mut tx, id, now_micros())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
    let user = user_by_id::<D>(&mut tx, user_id).await?;
    let draft = user_draft("token.revoked", &user, actor, json!({ "token_id": id }));
    D::append(&mut tx, &[draft]).await?;
    tx.commit().await?;
    Ok(())
}

/// Moves the flag on by one signed step, bound to the flag's latest audit
/// event. A flag of a clinic the signer does not act for does not exist
/// for them.
pub(crate) async fn sign_flag<D: PeopleSql + PeopleCommonSql + AuditSql>(
    d: &D,
    a: &FlagAction,
) -> StoreResult<FlagRecord> {
    if a.reason.trim().is_empty() {
        return Err(StoreError::Invalid("a signed action needs a reason".into()));
    }
    let not_found = || StoreError::NotFound(format!("flag {}", a.flag_id));
    let mut tx = d.write().await?;
    let (state, clinic_id) = D::lock_flag(&mut tx, a.flag_id)
        .await?
        .ok_or_else(not_found)?;
    if a.signer.role != Role::Admin && !a.signer.clinics.contains(&clinic_id) {
        return Err(not_found());
    }
    let next = next_state(&state, a.step)?;
    // The signature covers the flag as it stands: its latest audit event.
    let bound = D::flag_head(&mut tx, a.flag_id).await?.ok_or_else(|| {
        let message = format!("flag {} has no audit event", a.flag_id);
        StoreError::Other(sqlx::Error::Decode(message.into()))
    })?;
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
    let hashes = D::append(&mut tx, &[draft]).await?;
    let event = hashes.first().copied().unwrap_or_default();
    let flag = D::record_signature(&mut tx, a, next, at, &bound, &event).await?;
    tx.commit().await?;
    Ok(flag)
}

pub(crate) async fn flag_actions<D: PeopleSql>(
    d: &D,
    ids: &[Uuid],
) -> StoreResult<Vec<FlagActionRecord>> {
    D::flag_actions(&mut *d.read().await?, ids).await
}
