//! Database errors of both dialects sorted into the [`StoreError`] kinds
//! callers act on (transient, rejected data, not found, other), in one
//! place: PostgreSQL's SQLSTATEs and SQLite's result codes.

use crate::StoreError;

/// Sorts a database error into the kinds callers act on.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Tls(_) => {
            StoreError::Unavailable(e)
        }
        // SQLite's codes are numbers, not SQLSTATEs.
        E::Database(db) if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() => {
            sqlite(e)
        }
        E::Database(db) => match db.code().as_deref() {
            // serialization_failure, deadlock_detected, admin shutdown,
            // cannot_connect_now, connection exceptions (class 08).
            Some("40001" | "40P01" | "57P01" | "57P02" | "57P03") => StoreError::Unavailable(e),
            Some(code) if code.starts_with("08") => StoreError::Unavailable(e),
            // Data exceptions (22) and integrity violations (23).
            Some(code) if code.starts_with("22") || code.starts_with("23") => {
                StoreError::Rejected(e)
            }
            _ => StoreError::Other(e),
        },
        E::RowNotFound => StoreError::NotFound("row".into()),
        _ => StoreError::Other(e),
    }
}

// SQLite's primary result codes.
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_NOMEM: i32 = 7;
const SQLITE_READONLY: i32 = 8;
const SQLITE_INTERRUPT: i32 = 9;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_PROTOCOL: i32 = 15;
const SQLITE_TOOBIG: i32 = 18;
const SQLITE_CONSTRAINT: i32 = 19;
const SQLITE_MISMATCH: i32 = 20;
/// `RAISE(ABORT, ...)` in a trigger: the append-only audit tables.
const SQLITE_CONSTRAINT_TRIGGER: i32 = SQLITE_CONSTRAINT | (7 << 8);

/// The kind of a database error that SQLite raised. sqlx reports SQLite's
/// extended result code as the error's code, in decimal; the primary code
/// is its low byte (<https://www.sqlite.org/rescode.html>).
fn sqlite(e: sqlx::Error) -> StoreError {
    let code = match &e {
        sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i32>().ok()),
        _ => None,
    };
    let Some(code) = code else {
        return StoreError::Other(e);
    };
    match code & 0xff {
        // Another writer holds the lock past the busy timeout, or the file
        // cannot be read or written just now: the same call may succeed later.
        SQLITE_BUSY | SQLITE_LOCKED | SQLITE_NOMEM | SQLITE_READONLY | SQLITE_INTERRUPT
        | SQLITE_IOERR | SQLITE_FULL | SQLITE_CANTOPEN | SQLITE_PROTOCOL => {
            StoreError::Unavailable(e)
        }
        // An append-only table refused a change: PostgreSQL's trigger raises
        // insufficient_privilege there, which is neither transient nor bad
        // data.
        SQLITE_CONSTRAINT if code == SQLITE_CONSTRAINT_TRIGGER => StoreError::Other(e),
        // Integrity violations and values the column cannot hold.
        SQLITE_CONSTRAINT | SQLITE_TOOBIG | SQLITE_MISMATCH => StoreError::Rejected(e),
        _ => StoreError::Other(e),
    }
}

/// `NotFound(what)` when the statement broke a foreign key (the row it
/// refers to is missing); any other error unchanged.
pub(crate) fn missing_parent(e: StoreError, what: impl FnOnce() -> String) -> StoreError {
    match &e {
        StoreError::Rejected(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
            StoreError::NotFound(what())
        }
        _ => e,
    }
}

/// `Invalid(what)` when the statement broke a unique constraint (the row
/// exists already); any other error unchanged.
pub(crate) fn duplicate(e: StoreError, what: impl FnOnce() -> String) -> StoreError {
    match &e {
        StoreError::Rejected(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            StoreError::Invalid(what())
        }
        _ => e,
    }
}
