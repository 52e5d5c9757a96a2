//! The stored watermark's rule of storage, written once for both stores:
//! the end of the run of stored seqs above a device's watermark.

/// SQL for the new watermark of the rows of `cur(id, w)` (a device id and
/// its stored watermark): the first stored seq above `w` whose successor is
/// not stored, when the seq right above `w` is stored; `w` otherwise. The
/// CASE runs the run-end search only where the watermark can move, so
/// behind a permanent hole it costs one index probe. Both dialects read it
/// the same way (PostgreSQL inside its UPDATE, SQLite one device at a time).
macro_rules! run_end_sql {
    () => {
        "CASE WHEN EXISTS (SELECT 1 FROM device_messages m \
                          WHERE m.device_id = cur.id AND m.seq = cur.w + 1) \
         THEN (SELECT m.seq FROM device_messages m \
               WHERE m.device_id = cur.id AND m.seq > cur.w \
                 AND NOT EXISTS (SELECT 1 FROM device_messages n \
                                 WHERE n.device_id = cur.id AND n.seq = m.seq + 1) \
               ORDER BY m.seq LIMIT 1) \
         ELSE cur.w END"
    };
}

pub(crate) use run_end_sql;
