//! SQLite's result codes sorted into the [`StoreError`] kinds callers act
//! on, as [`crate::classify`] sorts PostgreSQL's SQLSTATEs.
//!
//! sqlx reports SQLite's extended result code as the error's code, in
//! decimal; the primary code is its low byte
//! (<https://www.sqlite.org/rescode.html>).

use crate::StoreError;

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

/// The kind of a database error that SQLite raised.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
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
