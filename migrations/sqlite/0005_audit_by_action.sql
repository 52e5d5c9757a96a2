-- See migrations/postgres/0014_audit_by_action.sql.
CREATE INDEX IF NOT EXISTS audit_events_action_idx ON audit_events (action, at);
