//! Stroke samples by multi-row INSERT inside the batch transaction.
//!
//! SQLite has no COPY. Each statement goes to the connection's worker
//! thread and back, so rows travel [`CHUNK_ROWS`] at a time in one
//! prepared `INSERT ... VALUES (...), (...), ...`; full chunks reuse one
//! cached statement.

use std::sync::LazyLock;

use sqlx::SqliteConnection;

use super::convert::{micros, to_int4, to_int8, uuid_text};
use crate::{SampleBlock, StoreError, StoreResult};

/// Columns per row, as in [`insert_sql`].
const COLUMNS: usize = 7;
/// Rows per statement. Measured on the 2-core CI machine (release build,
/// 200k samples in batches of 10k): 1 row per statement ~60k rows/s, 64
/// ~280k, 256 ~330k, 1024 ~330k; 256 keeps the statement small. SQLite
/// allows 32766 parameters, i.e. 4680 rows.
const CHUNK_ROWS: usize = 256;

/// The statement of a full chunk, built once.
static FULL_CHUNK_SQL: LazyLock<String> = LazyLock::new(|| insert_sql(CHUNK_ROWS));

fn insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; COLUMNS].join(", "));
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
        .map(|b| uuid_text(&b.session_id, "sample session id"))
        .collect::<StoreResult<Vec<_>>>()?;
    let mut chunk: Vec<Values<'_>> = Vec::with_capacity(CHUNK_ROWS);
    for (block, session_id) in blocks.iter().zip(&sessions) {
        for row in &block.rows {
            chunk.push(Values {
                time: micros(row.time),
                device_id: &block.device_id,
                session_id,
                seq: to_int8(row.seq, "sample seq")?,
                strokes: to_int4(row.strokes, "sample strokes")?,
                depth_um: to_int4(row.depth_um, "sample depth")?,
                speed_hz: to_int4(row.speed_hz, "sample speed")?,
            });
            if chunk.len() == CHUNK_ROWS {
                insert_chunk(conn, &chunk).await?;
                chunk.clear();
            }
        }
    }
    if !chunk.is_empty() {
        insert_chunk(conn, &chunk).await?;
    }
    Ok(())
}

async fn insert_chunk(conn: &mut SqliteConnection, rows: &[Values<'_>]) -> StoreResult<()> {
    let partial;
    let sql = if rows.len() == CHUNK_ROWS {
        FULL_CHUNK_SQL.as_str()
    } else {
        partial = insert_sql(rows.len());
        partial.as_str()
    };
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
        assert!(sql.ends_with("(?, ?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?, ?)"));
        assert!(CHUNK_ROWS * COLUMNS <= 32_766);
    }
}
