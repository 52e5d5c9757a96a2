-- A session's start and end as the pen's clock read them (issue 14):
-- started_at/ended_at are corrected by the measured skew when the pen's
-- clock is off by more than the window, which is what the rules judge;
-- these keep the pen's own readings beside them. NULL for sessions stored
-- before.
ALTER TABLE sessions
    ADD COLUMN IF NOT EXISTS device_started_at timestamptz,
    ADD COLUMN IF NOT EXISTS device_ended_at timestamptz;
