//! Stroke samples by multi-row INSERT inside the batch transaction.
//!
//! SQLite has no COPY, and each statement is a round trip to the
//! connection's worker thread, so rows go [`CHUNK_SIZES`]`[0]` at a time in
//! one prepared `INSERT ... VALUES (...), (...), ...`. The rest of a batch
//! goes in smaller chunks of the other sizes, so a handful of cached
//! statements serve every batch size (a statement per remainder size would
//! be prepared anew for almost every batch).

use std::sync::LazyLock;

use sqlx::SqliteConnection;

use crate::shared::columns::{id_text, int4, int8, micros};
use crate::{SampleBlock, StoreError, StoreResult};

/// Columns per row, as in [`insert_sql`].
const COLUMNS: usize = 7;
/// Rows per statement, largest first. Measured on the shared 2-core
/// machine (release build, 200k rows, 10k per transaction, with the session
/// index): 1 row per statement 14k-130k rows/s (the worker-thread round
/// trip, at the mercy of the scheduler), 16 150k-500k, 64 330k-700k, 256
/// 670k-800k, 1024 620k-830k, 4096 630k-820k; one `json_each` statement per
/// 10k rows 350k.
const CHUNK_SIZES: [usize; 6] = [1024, 256, 64, 16, 4, 1];

// SQLite refuses a statement with more than 32766 parameters.
const _: () = assert!(CHUNK_SIZES[0] * COLUMNS <= 32_766);

/// The statement of each chunk size, built once.
static STATEMENTS: LazyLock<[String; 6]> = LazyLock::new(|| CHUNK_SIZES.map(insert_sql));

fn insert_sql(rows: usize) -> String {
    let row = format!("({})", ["?"; COLUMNS].join(", "));
    format!(
        "INSERT INTO stroke_samples \
         (time, device_id, session_id, seq, strokes, depth_um, speed_hz) VALUES {}",
        vec![row; rows].join(", ")
    )
}

/// One row's values, checked against PostgreSQL's column ranges.
struct Values<'a> {
    time: i64,
    device_id: &'a str,
    session_id: &'a str,
    seq: i64,
    strokes: i64,
    depth_um: i64,
    speed_hz: i64,
}

/// Inserts every sample of the blocks and checks SQLite stored exactly as
/// many rows as were sent. No samples, no statement.
pub(super) async fn insert(conn: &mut SqliteConnection, blocks: &[SampleBlock]) -> StoreResult<()> {
    let sessions = blocks
        .iter()
        .map(|b| id_text(&b.session_id, "sample session id"))
        .collect::<StoreResult<Vec<_>>>()?;
    let full = CHUNK_SIZES[0];
    let mut pending: Vec<Values<'_>> = Vec::with_capacity(full);
    for (block, session_id) in blocks.iter().zip(&sessions) {
        for row in &block.rows {
            pending.push(Values {
                time: micros(row.time),
                device_id: &block.device_id,
                session_id,
                seq: int8(row.seq, "sample seq")?,
                strokes: i64::from(int4(row.strokes, "sample strokes")?),
                depth_um: i64::from(int4(row.depth_um, "sample depth")?),
                speed_hz: i64::from(int4(row.speed_hz, "sample speed")?),
            });
            if pending.len() == full {
                insert_chunk(conn, &STATEMENTS[0], &pending).await?;
                pending.clear();
            }
        }
    }
    insert_rest(conn, &pending).await
}

/// Fewer rows than a full chunk, in chunks of the smaller sizes.
async fn insert_rest(conn: &mut SqliteConnection, mut rest: &[Values<'_>]) -> StoreResult<()> {
    for (size, sql) in CHUNK_SIZES.iter().zip(STATEMENTS.iter()).skip(1) {
        while rest.len() >= *size {
            let (chunk, tail) = rest.split_at(*size);
            insert_chunk(conn, sql, chunk).await?;
            rest = tail;
        }
    }
    Ok(())
}

async fn insert_chunk(
    conn: &mut SqliteConnection,
    sql: &str,
    rows: &[Values<'_>],
) -> StoreResult<()> {
    let mut query = sqlx::query(sql);
    for v in rows {
        query = query
            .bind(v.time)
            .bind(v.device_id)
            .bind(v.session_id)
            .bind(v.seq)
            .bind(v.strokes)
            .bind(v.depth_um)
            .bind(v.speed_hz);
    }
    let stored = query.execute(conn).await?.rows_affected();
    if stored != rows.len() as u64 {
        return Err(StoreError::Other(sqlx::Error::Protocol(format!(
            "SQLite stored {stored} stroke samples, {} were sent",
            rows.len()
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_has_seven_placeholders_per_row() {
        let sql = insert_sql(3);
        assert_eq!(sql.matches('?').count(), 21);
        assert!(
            sql.ends_with("(?, ?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?, ?)")
        );
    }

    #[test]
    fn every_remainder_is_a_sum_of_chunk_sizes() {
        // The last size is 1, so `insert_rest` leaves nothing behind.
        assert_eq!(CHUNK_SIZES.last(), Some(&1));
        assert!(CHUNK_SIZES.windows(2).all(|w| w[0] > w[1]));
    }
}
