-- Delivery (issue 12): the per-device stored watermark that acks are made
-- of, and the quarantine for messages that could not be processed.

-- Every seq of the device from 1 through stored_through is stored in
-- device_messages. Acks announce it, so a pen may forget everything at or
-- below it; it is kept here (not in a server's memory) so it survives
-- restarts and is the same for every server process. Only ever grows, and
-- only inside a commit that holds the device row's lock (see commit.rs).
ALTER TABLE devices ADD COLUMN IF NOT EXISTS stored_through bigint NOT NULL DEFAULT 0
    CHECK (stored_through >= 0);

-- Existing devices: the end of the run of stored seqs that starts at 1.
UPDATE devices d SET stored_through = COALESCE((
    SELECT min(m.seq) FROM device_messages m
    WHERE m.device_id = d.id
      AND NOT EXISTS (SELECT 1 FROM device_messages n
                      WHERE n.device_id = m.device_id AND n.seq = m.seq + 1)), 0)
WHERE EXISTS (SELECT 1 FROM device_messages m WHERE m.device_id = d.id AND m.seq = 1);

-- A message of a registered device that the pipeline could not process (the
-- store refused it, or judging it failed): kept with its raw bytes and the
-- error, its (device_id, seq) key stored in device_messages so it is
-- acknowledged and never loops. Admins list it with `pentrace quarantine`.
CREATE TABLE IF NOT EXISTS quarantine (
    id             uuid PRIMARY KEY,
    device_id      text NOT NULL REFERENCES devices (id),
    seq            bigint NOT NULL CHECK (seq >= 0),
    -- 'grpc' or 'mqtt'.
    transport      text NOT NULL,
    -- Server clock at receipt, and when it was quarantined.
    received_at    timestamptz NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    error          text NOT NULL,
    -- The protobuf DeviceMessage as received.
    payload        bytea NOT NULL,
    UNIQUE (device_id, seq)
);
CREATE INDEX IF NOT EXISTS quarantine_at_idx ON quarantine (quarantined_at, id);

-- 0010's default privileges cover tables created later by the same role;
-- granted explicitly too, for databases migrated by another role.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pentrace_app') THEN
        GRANT SELECT, INSERT ON quarantine TO pentrace_app;
    END IF;
END
$$;
