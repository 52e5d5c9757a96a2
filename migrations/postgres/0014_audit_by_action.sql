-- Reports over the trail ask for the events of a few actions since a time
-- (the fleet checks: refused devices, shared credentials); without this
-- index they would read every chain.
CREATE INDEX IF NOT EXISTS audit_events_action_idx ON audit_events (action, at);
