//! The read side: the fleet view, sessions, flags, cartridge and lot
//! history, compliance reports, and the data-gap holes.
//!
//! The filters of the session and flag listings are written once, here:
//! SQLite reads PostgreSQL's `$n` placeholders too (sqlx binds `$n` to the
//! n-th value on both), so what differs is how each dialect binds a value
//! ([`Arg`]) and matches a list ([`Dialect::in_list`]).
//!
//! A report covers at most months of one clinic, which fits in memory, so
//! its rows are fetched whole rather than paged.

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveTime, Utc};
use pentrace_domain::rules::SeqHole;
use uuid::Uuid;

use super::StoreSql;
use crate::dialect::{Conn, Dialect, for_both_stores};
use crate::shared::drafts::flag_raised;
use crate::shared::rows::{
    self, BindingRow, FLAG_COLUMNS, HoleRow, SESSION_COLUMNS, flag_records, session_records,
};
use crate::{
    CartridgeHistory, DeviceStatus, FlagQuery, FlagRecord, NewFlag, SessionQuery, SessionRecord,
    StoreError, StoreResult,
};

/// A device counts as online when it was heard from this recently.
const ONLINE_WINDOW: Duration = Duration::minutes(2);
/// Rows of `list_sessions` when the query sets no limit.
const DEFAULT_SESSION_LIMIT: u32 = 100;
/// Rows of `list_flags` when the query sets no limit.
const DEFAULT_FLAG_LIMIT: u32 = 1000;

/// A value bound to a placeholder, in the column type the dialect stores
/// it as.
#[derive(Debug)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    /// A list of texts, matched with [`Dialect::in_list`].
    List(Vec<&'a str>),
    Id(Uuid),
    Time(DateTime<Utc>),
    Int(i64),
}

/// The rest of a statement after `FROM <table>` (its filter, order and
/// limit), with `$n` placeholders, and the values bound to them.
#[derive(Debug)]
pub(crate) struct Sql<'a> {
    pub text: String,
    pub args: Vec<Arg<'a>>,
}

impl<'a> Sql<'a> {
    pub(crate) fn new(text: &str, args: Vec<Arg<'a>>) -> Sql<'a> {
        Sql {
            text: text.to_owned(),
            args,
        }
    }

    /// Appends `text`, then the placeholder of `arg`.
    fn bind(&mut self, text: &str, arg: Arg<'a>) -> &mut Self {
        self.args.push(arg);
        self.text += &format!("{text}${}", self.args.len());
        self
    }

    /// ` AND <column>` is one of `list`.
    fn any<D: Dialect>(&mut self, column: &str, list: Vec<&'a str>) -> &mut Self {
        self.args.push(Arg::List(list));
        self.text += &format!(" AND {}", D::in_list(column, self.args.len()));
        self
    }
}

/// The read side's statements whose SQL differs between the dialects.
#[async_trait]
pub(crate) trait QuerySql: Dialect {
    /// The clinic's devices (every clinic's when None), by clinic and id,
    /// with their sessions and strokes started in `[day_start, day_end)`
    /// and their open flags; `online` is left false.
    async fn device_statuses(
        c: &mut Conn<Self>,
        clinic_id: Option<&str>,
        day_start: DateTime<Utc>,
        day_end: DateTime<Utc>,
    ) -> StoreResult<Vec<DeviceStatus>>;
    /// Deletes the holes of these `(device_id, first_seq)` keys.
    async fn delete_holes(c: &mut Conn<Self>, keys: &[(&str, u64)]) -> StoreResult<()>;
}

/// The read side's statements both dialects spell alike.
#[async_trait]
pub(crate) trait QueryCommonSql: Dialect {
    /// `SELECT <columns> FROM <from> <sql>`, the values bound in this
    /// dialect's column types.
    async fn select<O>(
        c: &mut Conn<Self>,
        columns: &str,
        from: &str,
        sql: &Sql<'_>,
    ) -> StoreResult<Vec<O>>
    where
        O: for<'r> sqlx::FromRow<'r, <Self::Db as sqlx::Database>::Row> + Send + Unpin;
    /// `SELECT` of session records `FROM sessions <sql>`.
    async fn sessions(c: &mut Conn<Self>, sql: &Sql<'_>) -> StoreResult<Vec<SessionRecord>>;
    /// `SELECT` of flag records `FROM flags <sql>`.
    async fn flags(c: &mut Conn<Self>, sql: &Sql<'_>) -> StoreResult<Vec<FlagRecord>>;
    /// `(session_id, device_id, bound_at)` of the cartridge's owner.
    async fn binding(
        c: &mut Conn<Self>,
        cartridge_id: &str,
    ) -> StoreResult<Option<(String, String, DateTime<Utc>)>>;
    /// Open holes detected before `before` with their device's clinic, by
    /// detection time, device and first seq.
    async fn holes_before(
        c: &mut Conn<Self>,
        before: DateTime<Utc>,
    ) -> StoreResult<Vec<(SeqHole, String)>>;
}

for_both_stores! {
    impl QueryCommonSql {
        async fn select<O>(
            c: &mut Conn<Self>,
            columns: &str,
            from: &str,
            sql: &Sql<'_>,
        ) -> StoreResult<Vec<O>>
        where
            O: for<'r> sqlx::FromRow<'r, <Self::Db as sqlx::Database>::Row> + Send + Unpin,
        {
            let text = format!("SELECT {columns} FROM {from} {}", sql.text);
            let query = sql.args.iter().fold(sqlx::query_as(&text), |q, arg| match arg {
                Arg::Text(s) => q.bind(*s),
                Arg::List(list) => q.bind(Self::list(list)),
                Arg::Id(id) => q.bind(Self::uuid(*id)),
                Arg::Time(t) => q.bind(Self::time(*t)),
                Arg::Int(i) => q.bind(*i),
            });
            Ok(query.fetch_all(c).await?)
        }

        async fn sessions(c: &mut Conn<Self>, sql: &Sql<'_>) -> StoreResult<Vec<SessionRecord>> {
            session_records::<Self>(Self::select(c, SESSION_COLUMNS, "sessions", sql).await?)
        }

        async fn flags(c: &mut Conn<Self>, sql: &Sql<'_>) -> StoreResult<Vec<FlagRecord>> {
            flag_records::<Self>(Self::select(c, FLAG_COLUMNS, "flags", sql).await?)
        }

        async fn binding(
            c: &mut Conn<Self>,
            cartridge_id: &str,
        ) -> StoreResult<Option<(String, String, DateTime<Utc>)>> {
            let row: Option<BindingRow<Self>> = sqlx::query_as(
                "SELECT session_id, device_id, bound_at FROM cartridges WHERE cartridge_id = $1",
            )
            .bind(cartridge_id)
            .fetch_optional(c)
            .await?;
            row.map(rows::binding::<Self>).transpose()
        }

        async fn holes_before(
            c: &mut Conn<Self>,
            before: DateTime<Utc>,
        ) -> StoreResult<Vec<(SeqHole, String)>> {
            let holes: Vec<HoleRow<Self>> = sqlx::query_as(
                "SELECT h.device_id, h.first_seq, h.last_seq, h.detected_at, d.clinic_id \
                 FROM seq_holes h JOIN devices d ON d.id = h.device_id \
                 WHERE h.detected_at < $1 ORDER BY h.detected_at, h.device_id, h.first_seq",
            )
            .bind(Self::time(before))
            .fetch_all(c)
            .await?;
            holes.into_iter().map(rows::hole::<Self>).collect()
        }
    }
}

fn limit(limit: u32, default: u32) -> Arg<'static> {
    Arg::Int(i64::from(if limit == 0 { default } else { limit }))
}

/// Devices with their status; "today" is `now`'s UTC day.
pub(crate) async fn list_devices<D: StoreSql>(
    d: &D,
    clinic_id: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Vec<DeviceStatus>> {
    let day = now.date_naive().and_time(NaiveTime::MIN).and_utc();
    let mut c = d.read().await?;
    let mut devices = D::device_statuses(&mut c, clinic_id, day, day + Duration::days(1)).await?;
    for s in &mut devices {
        s.online = s.last_seen.is_some_and(|seen| seen > now - ONLINE_WINDOW);
    }
    Ok(devices)
}

/// A device's sessions started in `[from, to)`, newest first.
pub(crate) async fn list_sessions<D: StoreSql>(
    d: &D,
    q: &SessionQuery,
) -> StoreResult<Vec<SessionRecord>> {
    let mut sql = Sql::new("WHERE device_id = $1", vec![Arg::Text(&q.device_id)]);
    if let Some(from) = q.from {
        sql.bind(" AND started_at >= ", Arg::Time(from));
    }
    if let Some(to) = q.to {
        sql.bind(" AND started_at < ", Arg::Time(to));
    }
    let limit = limit(q.limit, DEFAULT_SESSION_LIMIT);
    sql.bind(" ORDER BY started_at DESC, session_id DESC LIMIT ", limit);
    D::sessions(&mut *d.read().await?, &sql).await
}

/// Flags matching every filter given, oldest first by `(raised_at, id)`;
/// `after` continues a previous page. `from`/`to` bound `raised_at` as
/// `[from, to)`.
pub(crate) async fn list_flags<D: StoreSql>(d: &D, q: &FlagQuery) -> StoreResult<Vec<FlagRecord>> {
    // Only the filters that are set become SQL, so each combination gets a
    // plan that can use its index (an `$n IS NULL OR ...` chain would not).
    let mut sql = Sql::new("WHERE true", Vec::new());
    if let Some(clinics) = &q.clinic_ids {
        sql.any::<D>("clinic_id", clinics.iter().map(String::as_str).collect());
    }
    if let Some(device) = &q.device_id {
        sql.bind(" AND device_id = ", Arg::Text(device));
    }
    if let Some(session) = &q.session_id {
        let id = Uuid::parse_str(session)
            .map_err(|e| StoreError::Invalid(format!("session id {session:?}: {e}")))?;
        sql.bind(" AND session_id = ", Arg::Id(id));
    }
    if !q.kinds.is_empty() {
        sql.any::<D>("kind", q.kinds.iter().map(|k| k.as_str()).collect());
    }
    if !q.states.is_empty() {
        sql.any::<D>("state", q.states.iter().map(|s| s.as_str()).collect());
    }
    if let Some(from) = q.from {
        sql.bind(" AND raised_at >= ", Arg::Time(from));
    }
    if let Some(to) = q.to {
        sql.bind(" AND raised_at < ", Arg::Time(to));
    }
    if let Some((raised_at, id)) = q.after {
        sql.bind(" AND (raised_at, id) > (", Arg::Time(raised_at))
            .bind(", ", Arg::Id(id));
        sql.text.push(')');
    }
    sql.bind(
        " ORDER BY raised_at, id LIMIT ",
        limit(q.limit, DEFAULT_FLAG_LIMIT),
    );
    D::flags(&mut *d.read().await?, &sql).await
}

/// The binding, sessions (oldest first) and flags of one cartridge.
pub(crate) async fn cartridge_history<D: StoreSql>(
    d: &D,
    cartridge_id: &str,
) -> StoreResult<CartridgeHistory> {
    let mut c = d.read().await?;
    let of = |order| {
        Sql::new(
            &format!("WHERE cartridge_id = $1 ORDER BY {order}"),
            vec![Arg::Text(cartridge_id)],
        )
    };
    Ok(CartridgeHistory {
        cartridge_id: cartridge_id.to_owned(),
        binding: D::binding(&mut c, cartridge_id).await?,
        sessions: D::sessions(&mut c, &of("started_at, session_id")).await?,
        flags: D::flags(&mut c, &of("raised_at, id")).await?,
    })
}

/// Every session that used the lot, oldest first.
pub(crate) async fn lot_lookback<D: StoreSql>(
    d: &D,
    gtin: &str,
    lot: &str,
) -> StoreResult<Vec<SessionRecord>> {
    let sql = Sql::new(
        "WHERE gtin = $1 AND lot = $2 ORDER BY started_at, session_id",
        vec![Arg::Text(gtin), Arg::Text(lot)],
    );
    D::sessions(&mut *d.read().await?, &sql).await
}

/// The clinic's sessions started in `[from, to)`, oldest first.
pub(crate) async fn sessions_in_period<D: StoreSql>(
    d: &D,
    clinic_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> StoreResult<Vec<SessionRecord>> {
    // `sessions.clinic_id` is the clinic at the time of the session, so a
    // device that later moved to another clinic still counts where it was
    // used (a join through `devices` would follow the move).
    let sql = Sql::new(
        "WHERE clinic_id = $1 AND started_at >= $2 AND started_at < $3 \
         ORDER BY started_at, session_id",
        vec![Arg::Text(clinic_id), Arg::Time(from), Arg::Time(to)],
    );
    D::sessions(&mut *d.read().await?, &sql).await
}

/// The clinic's flags that were raised in `[from, to)` or belong to one of
/// its sessions started in `[from, to)`, oldest first.
pub(crate) async fn flags_in_period<D: StoreSql>(
    d: &D,
    clinic_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> StoreResult<Vec<FlagRecord>> {
    // Both halves matter: a backfilled session is judged when it arrives,
    // so its flags are raised after the period it belongs to, and a flag
    // raised in the period may be about an older session or none (DATA_GAP).
    let sql = Sql::new(
        "WHERE clinic_id = $1 \
           AND ((raised_at >= $2 AND raised_at < $3) \
                OR session_id IN (SELECT s.session_id FROM sessions s \
                                  WHERE s.clinic_id = $1 \
                                    AND s.started_at >= $2 AND s.started_at < $3)) \
         ORDER BY raised_at, id",
        vec![Arg::Text(clinic_id), Arg::Time(from), Arg::Time(to)],
    );
    D::flags(&mut *d.read().await?, &sql).await
}

/// Open holes detected before `before`, with the device's clinic.
pub(crate) async fn due_holes<D: StoreSql>(
    d: &D,
    before: DateTime<Utc>,
) -> StoreResult<Vec<(SeqHole, String)>> {
    D::holes_before(&mut *d.read().await?, before).await
}

/// Raises the gap flags (audited) and closes their holes in one
/// transaction.
pub(crate) async fn flag_holes<D: StoreSql>(
    d: &D,
    holes: &[(SeqHole, NewFlag)],
) -> StoreResult<Vec<FlagRecord>> {
    if holes.is_empty() {
        return Ok(Vec::new());
    }
    let flags: Vec<NewFlag> = holes.iter().map(|(_, f)| f.clone()).collect();
    let keys: Vec<(&str, u64)> = holes
        .iter()
        .map(|(h, _)| (h.device_id.as_str(), h.first))
        .collect();
    let mut tx = d.write().await?;
    let raised = D::insert_flags(&mut tx, &flags).await?;
    let drafts: Vec<_> = raised.iter().map(flag_raised).collect();
    D::append(&mut tx, &drafts).await?;
    D::delete_holes(&mut tx, &keys).await?;
    tx.commit().await?;
    Ok(raised)
}
