//! The seam between the engine and a database: the little that truly
//! differs between PostgreSQL and SQLite.
//!
//! The engine (`crate::engine`) owns every piece of orchestration and is
//! written once, generic over a [`Dialect`]. A dialect owns its pools, how a
//! write transaction begins (`BEGIN IMMEDIATE` on SQLite's one writer
//! connection), its column encodings of a time and an id, how a list is
//! bound, and, through the per-area traits next to the orchestration that
//! calls them (`engine::commit::CommitSql`, ...), the statements whose SQL
//! differs: arrays with `UNNEST` or JSON with `json_each`, `COPY` or
//! multi-row inserts, row locks. A statement takes domain values and returns
//! rows or domain values; it decides nothing. Statements both databases
//! spell alike are written once, in the engine, with [`for_both_stores!`].
//!
//! Statements are trait methods rather than generic sqlx code, so the engine
//! needs no sqlx type bounds.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{Database, Transaction};

use crate::StoreResult;
use crate::shared::columns::{StoredId, StoredTime};

/// A connection of the dialect's database: inside a write transaction
/// (`&mut *tx`) or taken from the pool for reads.
pub(crate) type Conn<D> = <<D as Dialect>::Db as Database>::Connection;

/// A write transaction of the dialect's database.
pub(crate) type WriteTx<D> = Transaction<'static, <D as Dialect>::Db>;

/// A database pentrace stores in.
#[async_trait]
pub(crate) trait Dialect: Clone + std::fmt::Debug + Send + Sync + 'static {
    type Db: Database;
    /// How the database stores a time and an id (`shared::columns`).
    type Time: StoredTime;
    type Id: StoredId;
    /// The store's name in logs and `pentrace status`.
    const KIND: &'static str;
    /// Begins a write transaction; the engine commits or rolls it back.
    async fn write(&self) -> StoreResult<WriteTx<Self>>;
    /// A connection for reads (SQLite: from the reader pool, so reads run
    /// while a batch commits).
    async fn read(&self) -> StoreResult<PoolConnection<Self::Db>>;
    /// Cheap liveness check.
    async fn select_one(&self) -> StoreResult<()>;

    /// What a list of strings binds as: an array, or a JSON array.
    type List: Send;
    fn list<S: AsRef<str>>(items: &[S]) -> Self::List;
    /// `column` is one of the list bound as `$n`.
    fn in_list(column: &str, n: usize) -> String;

    /// An id as this database stores it.
    fn uuid(id: uuid::Uuid) -> Self::Id {
        Self::Id::from_uuid(id)
    }
    /// A time as this database stores it.
    fn time(at: DateTime<Utc>) -> Self::Time {
        Self::Time::from_time(at)
    }
}

/// Implements a leaf trait for both stores from one body, the way
/// vaultwarden's `db_run!` runs one body on each backend: the body's SQL
/// runs unchanged on both (`$n` placeholders, which sqlx-sqlite binds by
/// their number too) and its values go through the dialect's encodings
/// (`Self::time`, `Self::uuid`, `Self::list`). Each expansion is concrete
/// code, so no sqlx trait bounds are needed. Statements whose SQL differs
/// are written per dialect instead.
macro_rules! for_both_stores {
    (impl $leaves:path { $($body:tt)* }) => {
        #[async_trait::async_trait]
        impl $leaves for crate::postgres::PgStore {
            $($body)*
        }

        #[async_trait::async_trait]
        impl $leaves for crate::sqlite::SqliteStore {
            $($body)*
        }
    };
}
pub(crate) use for_both_stores;
