-- See migrations/postgres/0016_session_device_clock.sql.
ALTER TABLE sessions ADD COLUMN device_started_at INTEGER;
ALTER TABLE sessions ADD COLUMN device_ended_at INTEGER;
