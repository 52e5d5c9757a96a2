-- Reports list a clinic's sessions for a period (sterility report,
-- `sessions_in_period`): without this index that query scans every session.
CREATE INDEX IF NOT EXISTS sessions_clinic_started_idx ON sessions (clinic_id, started_at);
