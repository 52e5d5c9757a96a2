//! Stroke samples by binary `COPY` inside the batch transaction.
//!
//! The PGCOPY binary format is written by hand (it is small): a header, then
//! per row a field count and, per field, a length and the value in network
//! byte order, then a trailer. See
//! <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::postgres::PgCopyIn;
use uuid::Uuid;

use crate::shared::columns::{StoredId, int4, int8};
use crate::{SampleBlock, SampleRow, StoreError, StoreResult};

const COPY_SAMPLES: &str = "COPY stroke_samples \
     (time, device_id, session_id, seq, strokes, depth_um, speed_hz) FROM STDIN (FORMAT binary)";

/// Signature, flags field (no OIDs), header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Field count -1 ends the data.
const TRAILER: [u8; 2] = (-1i16).to_be_bytes();
/// Columns per row, as in `COPY_SAMPLES`.
const FIELDS: i16 = 7;
/// Data is sent whenever the buffer reaches this size: large enough to
/// amortize messages, small enough to keep memory flat for huge batches.
const CHUNK: usize = 64 * 1024;
/// 2000-01-01T00:00:00Z, PostgreSQL's epoch, in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Copies every sample of the blocks and checks PostgreSQL stored exactly
/// as many rows as were sent. No samples, no COPY.
pub(super) async fn copy_samples(
    conn: &mut PgConnection,
    blocks: &[SampleBlock],
) -> StoreResult<()> {
    if blocks.iter().all(|b| b.rows.is_empty()) {
        return Ok(());
    }
    let mut copy = conn.copy_in_raw(COPY_SAMPLES).await?;
    let sent = match send_all(&mut copy, blocks).await {
        Ok(sent) => sent,
        Err(e) => {
            // Leave the connection usable (the transaction still rolls back);
            // the abort's own failure says nothing new.
            if let Err(abort) = copy.abort(e.to_string()).await {
                tracing::debug!(error = %abort, "aborting COPY failed");
            }
            return Err(e);
        }
    };
    let stored = copy.finish().await?;
    if stored != sent {
        return Err(StoreError::Other(sqlx::Error::Protocol(format!(
            "COPY stored {stored} stroke samples, {sent} were sent"
        ))));
    }
    Ok(())
}

/// Encodes and sends the rows in chunks; returns how many were sent.
async fn send_all(
    copy: &mut PgCopyIn<&mut PgConnection>,
    blocks: &[SampleBlock],
) -> StoreResult<u64> {
    let mut buf = Vec::with_capacity(CHUNK + 256);
    buf.extend_from_slice(HEADER);
    let mut sent = 0u64;
    for block in blocks {
        let fixed = BlockFields::new(block)?;
        for row in &block.rows {
            encode_row(&mut buf, &fixed, row)?;
            sent += 1;
            if buf.len() >= CHUNK {
                copy.send(buf.as_slice()).await?;
                buf.clear();
            }
        }
    }
    buf.extend_from_slice(&TRAILER);
    copy.send(buf.as_slice()).await?;
    Ok(sent)
}

/// The fields every row of a block shares, validated once.
struct BlockFields<'a> {
    device_id: &'a [u8],
    session_id: [u8; 16],
}

impl<'a> BlockFields<'a> {
    fn new(block: &'a SampleBlock) -> StoreResult<Self> {
        Ok(BlockFields {
            device_id: block.device_id.as_bytes(),
            session_id: *Uuid::from_id(&block.session_id, "sample session id")?.as_bytes(),
        })
    }
}

fn encode_row(buf: &mut Vec<u8>, fixed: &BlockFields<'_>, row: &SampleRow) -> StoreResult<()> {
    buf.extend_from_slice(&FIELDS.to_be_bytes());
    field(buf, &pg_micros(row.time)?.to_be_bytes())?;
    field(buf, fixed.device_id)?;
    field(buf, &fixed.session_id)?;
    field(buf, &int8(row.seq, "sample seq")?.to_be_bytes())?;
    field(buf, &int4(row.strokes, "sample strokes")?.to_be_bytes())?;
    field(buf, &int4(row.depth_um, "sample depth")?.to_be_bytes())?;
    field(buf, &int4(row.speed_hz, "sample speed")?.to_be_bytes())?;
    Ok(())
}

/// One field: its length as int32, then its bytes.
fn field(buf: &mut Vec<u8>, bytes: &[u8]) -> StoreResult<()> {
    let len = i32::try_from(bytes.len())
        .map_err(|_| StoreError::Invalid(format!("a {}-byte sample field", bytes.len())))?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
    Ok(())
}

/// `timestamptz` on the wire: microseconds since 2000-01-01 UTC.
fn pg_micros(time: DateTime<Utc>) -> StoreResult<i64> {
    time.timestamp_micros()
        .checked_sub(PG_EPOCH_UNIX_MICROS)
        .ok_or_else(|| StoreError::Invalid(format!("sample time {time} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_postgres_epoch_is_zero() {
        let epoch = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
        assert_eq!(epoch.map(pg_micros).and_then(Result::ok), Some(0));
    }

    #[test]
    fn a_row_has_seven_length_prefixed_fields() {
        let block = SampleBlock {
            device_id: "pen-1".into(),
            session_id: "6f1c1f9e-3c1b-4a53-9d53-0e8a3f0f7a11".into(),
            rows: Vec::new(),
        };
        let row = SampleRow {
            time: DateTime::<Utc>::UNIX_EPOCH,
            seq: 7,
            strokes: 3,
            depth_um: 500,
            speed_hz: 120,
        };
        let mut buf = Vec::new();
        let encoded = BlockFields::new(&block).and_then(|f| encode_row(&mut buf, &f, &row));
        assert!(encoded.is_ok());
        // count + (4+8) + (4+5) + (4+16) + (4+8) + 3×(4+4)
        assert_eq!(buf.len(), 2 + 12 + 9 + 20 + 12 + 24);
        assert_eq!(&buf[..2], &7i16.to_be_bytes());
        assert_eq!(&buf[2..6], &8i32.to_be_bytes());
        assert_eq!(&buf[6..14], &(-PG_EPOCH_UNIX_MICROS).to_be_bytes());
    }

    #[test]
    fn oversized_values_are_refused_not_wrapped() {
        let block = SampleBlock {
            device_id: "pen-1".into(),
            session_id: "6f1c1f9e-3c1b-4a53-9d53-0e8a3f0f7a11".into(),
            rows: Vec::new(),
        };
        let row = SampleRow {
            time: DateTime::<Utc>::UNIX_EPOCH,
            seq: u64::MAX,
            strokes: 1,
            depth_um: 1,
            speed_hz: 1,
        };
        let mut buf = Vec::new();
        let encoded = BlockFields::new(&block).and_then(|f| encode_row(&mut buf, &f, &row));
        assert!(matches!(encoded, Err(StoreError::Invalid(_))));
    }
}
