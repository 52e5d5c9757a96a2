-- The tamper-evident audit trail (DESIGN §7), people and tokens, signed flag
-- actions and checkpoints; as migrations/postgres/0010_audit.sql.
--
-- audit_events, audit_checkpoints and flag_actions are append-only: triggers
-- refuse UPDATE and DELETE (SQLite has no TRUNCATE; `DELETE FROM t` without
-- WHERE fires the trigger too). SQLite has no roles, so whoever can write
-- the file can drop a trigger; that is what the hash chain and the exported
-- signed checkpoints are for.
--
-- Hashes, keys and signatures are BLOBs; JSON values are TEXT holding the
-- canonical JSON exactly as hashed.

-- One chain per clinic; events about no single clinic (the product
-- catalogue, lots and recalls, users and tokens) go to the chain named '*'.
-- No foreign key: a chain outlives anything it records.
CREATE TABLE audit_heads (
    clinic_id TEXT NOT NULL PRIMARY KEY,
    position  INTEGER NOT NULL CHECK (position >= 0),
    hash      BLOB NOT NULL CHECK (length(hash) = 32)
) STRICT;

CREATE TABLE audit_events (
    clinic_id    TEXT NOT NULL,
    -- 1, 2, 3, ... without holes within a clinic.
    position     INTEGER NOT NULL CHECK (position >= 1),
    -- Server UTC time in microseconds, the precision the hash encodes.
    at           INTEGER NOT NULL,
    actor_kind   TEXT NOT NULL CHECK (actor_kind IN ('user', 'device', 'system')),
    actor_id     TEXT NOT NULL,
    action       TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    old_value    TEXT,
    new_value    TEXT,
    reason       TEXT,
    prev_hash    BLOB NOT NULL CHECK (length(prev_hash) = 32),
    hash         BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (clinic_id, position)
) STRICT;
CREATE INDEX audit_events_subject_idx ON audit_events (subject_type, subject_id);
CREATE INDEX audit_events_at_idx ON audit_events (clinic_id, at);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused');
END;

-- Signed chain heads (Ed25519), also append-only.
CREATE TABLE audit_checkpoints (
    clinic_id  TEXT NOT NULL,
    position   INTEGER NOT NULL CHECK (position >= 0),
    hash       BLOB NOT NULL,
    at         INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    signature  BLOB NOT NULL,
    PRIMARY KEY (clinic_id, position, at)
) STRICT;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only: DELETE refused');
END;

-- People. Roles: admin (every clinic), clinic_owner, compliance_officer.
CREATE TABLE users (
    id         TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'clinic_owner', 'compliance_officer')),
    created_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE TABLE user_clinics (
    user_id   TEXT NOT NULL REFERENCES users (id),
    clinic_id TEXT NOT NULL REFERENCES clinics (id),
    PRIMARY KEY (user_id, clinic_id)
) STRICT;

-- Bearer tokens, stored only as SHA-256 hashes.
CREATE TABLE api_tokens (
    id         TEXT NOT NULL PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id),
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    revoked_at INTEGER
) STRICT;

-- Signed flag actions (21 CFR 11.50/11.70: signer, time, meaning, bound to
-- the record through the flag's audit hash). Append-only.
CREATE TABLE flag_actions (
    flag_id     TEXT NOT NULL REFERENCES flags (id),
    action      TEXT NOT NULL CHECK (action IN ('acknowledge', 'resolve')),
    user_id     TEXT NOT NULL REFERENCES users (id),
    signer_name TEXT NOT NULL,
    meaning     TEXT NOT NULL CHECK (meaning IN ('reviewed', 'approved', 'responsible')),
    reason      TEXT NOT NULL CHECK (length(reason) > 0),
    at          INTEGER NOT NULL,
    -- Hash of the flag's latest audit event before this action.
    bound_hash  BLOB NOT NULL,
    -- Hash of the audit event recording this action.
    event_hash  BLOB NOT NULL,
    PRIMARY KEY (flag_id, action)
) STRICT;
CREATE TRIGGER flag_actions_no_update BEFORE UPDATE ON flag_actions
BEGIN
    SELECT RAISE(ABORT, 'flag_actions is append-only: UPDATE refused');
END;
CREATE TRIGGER flag_actions_no_delete BEFORE DELETE ON flag_actions
BEGIN
    SELECT RAISE(ABORT, 'flag_actions is append-only: DELETE refused');
END;
