-- The tamper-evident audit trail (DESIGN §7), people and tokens, signed flag
-- actions and checkpoints.
--
-- audit_events is append-only twice over: the application role has no
-- UPDATE, DELETE or TRUNCATE on it, and a trigger refuses UPDATE, DELETE and
-- TRUNCATE for every role (the owner and superusers included; an attacker
-- with superuser rights can drop the trigger, which is what the hash chain
-- and the exported signed checkpoints are for).

-- One chain per clinic; the head row is locked by the transaction that
-- appends, so clinics never wait on each other.
-- Chains are keyed by clinic id; events about no single clinic (the
-- product catalogue, lots and recalls, users and tokens) go to the chain
-- named '*'. No foreign key: a chain outlives anything it records.
CREATE TABLE audit_heads (
    clinic_id text PRIMARY KEY,
    position  bigint NOT NULL CHECK (position >= 0),
    hash      bytea NOT NULL CHECK (length(hash) = 32)
);

CREATE TABLE audit_events (
    clinic_id    text NOT NULL,
    -- 1, 2, 3, ... without holes within a clinic.
    position     bigint NOT NULL CHECK (position >= 1),
    -- Server UTC time, microseconds (the precision the hash encodes).
    at           timestamptz NOT NULL,
    actor_kind   text NOT NULL CHECK (actor_kind IN ('user', 'device', 'system')),
    actor_id     text NOT NULL,
    action       text NOT NULL,
    subject_type text NOT NULL,
    subject_id   text NOT NULL,
    -- Canonical JSON text exactly as hashed (not jsonb, which would
    -- re-encode it).
    old_value    text,
    new_value    text,
    reason       text,
    prev_hash    bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash         bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (clinic_id, position)
);
CREATE INDEX audit_events_subject_idx ON audit_events (subject_type, subject_id);
CREATE INDEX audit_events_at_idx ON audit_events (clinic_id, at);

CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- Signed chain heads (Ed25519), also append-only.
CREATE TABLE audit_checkpoints (
    clinic_id  text NOT NULL,
    position   bigint NOT NULL CHECK (position >= 0),
    hash       bytea NOT NULL,
    at         timestamptz NOT NULL,
    public_key bytea NOT NULL,
    signature  bytea NOT NULL,
    PRIMARY KEY (clinic_id, position, at)
);
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- People. Roles: admin (every clinic), clinic_owner, compliance_officer.
CREATE TABLE users (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    role       text NOT NULL CHECK (role IN ('admin', 'clinic_owner', 'compliance_officer')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE user_clinics (
    user_id   uuid NOT NULL REFERENCES users (id),
    clinic_id text NOT NULL REFERENCES clinics (id),
    PRIMARY KEY (user_id, clinic_id)
);

-- Bearer tokens, stored only as SHA-256 hashes.
CREATE TABLE api_tokens (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id),
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Signed flag actions (21 CFR 11.50/11.70: signer, time, meaning, bound to
-- the record through the flag's audit hash). Append-only.
CREATE TABLE flag_actions (
    flag_id     uuid NOT NULL REFERENCES flags (id),
    action      text NOT NULL CHECK (action IN ('acknowledge', 'resolve')),
    user_id     uuid NOT NULL REFERENCES users (id),
    signer_name text NOT NULL,
    meaning     text NOT NULL CHECK (meaning IN ('reviewed', 'approved', 'responsible')),
    reason      text NOT NULL CHECK (length(reason) > 0),
    at          timestamptz NOT NULL,
    -- Hash of the flag's latest audit event before this action.
    bound_hash  bytea NOT NULL,
    -- Hash of the audit event recording this action.
    event_hash  bytea NOT NULL,
    PRIMARY KEY (flag_id, action)
);
CREATE TRIGGER flag_actions_append_only BEFORE UPDATE OR DELETE ON flag_actions
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();

-- The application role `pentrace serve` can run as (config
-- `database_role`). Roles are cluster-wide, so create it only once.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pentrace_app') THEN
        CREATE ROLE pentrace_app NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO pentrace_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO pentrace_app;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_checkpoints, flag_actions FROM pentrace_app;
-- Tables of later migrations are usable by the role too; audit tables of
-- later migrations must revoke again, as above.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO pentrace_app;
