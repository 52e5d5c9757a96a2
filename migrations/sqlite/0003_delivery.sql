-- Delivery (issue 12); as migrations/postgres/0012_delivery.sql.

-- Every seq of the device from 1 through stored_through is stored in
-- device_messages; acks announce it. Only ever grows.
ALTER TABLE devices ADD COLUMN stored_through INTEGER NOT NULL DEFAULT 0
    CHECK (stored_through >= 0);

UPDATE devices SET stored_through = COALESCE((
    SELECT min(m.seq) FROM device_messages m
    WHERE m.device_id = devices.id
      AND NOT EXISTS (SELECT 1 FROM device_messages n
                      WHERE n.device_id = m.device_id AND n.seq = m.seq + 1)), 0)
WHERE EXISTS (SELECT 1 FROM device_messages m WHERE m.device_id = devices.id AND m.seq = 1);

-- Messages that could not be processed, with their raw bytes and the error.
CREATE TABLE quarantine (
    id             TEXT NOT NULL PRIMARY KEY,
    device_id      TEXT NOT NULL REFERENCES devices (id),
    seq            INTEGER NOT NULL CHECK (seq >= 0),
    transport      TEXT NOT NULL,
    -- Microseconds since the epoch, UTC.
    received_at    INTEGER NOT NULL,
    quarantined_at INTEGER NOT NULL,
    error          TEXT NOT NULL,
    payload        BLOB NOT NULL,
    UNIQUE (device_id, seq)
) STRICT;
CREATE INDEX quarantine_at_idx ON quarantine (quarantined_at, id);
