-- pentrace schema on SQLite, the embedded default (DESIGN §5). The same
-- tables, keys and checks as migrations/postgres/0001_schema.sql, in
-- SQLite's types:
--
-- - Times are INTEGER microseconds since 1970-01-01 UTC: PostgreSQL's
--   precision, exact to store and compare, and sortable as numbers (text
--   times sort correctly only if every writer formats them alike).
-- - UUIDs are TEXT in canonical lowercase form, so they compare and sort as
--   PostgreSQL's uuid type does (byte order = hex order).
-- - Dates are TEXT YYYY-MM-DD; JSON is TEXT.
-- - Every table is STRICT: a value of the wrong type is refused, not
--   silently stored, as PostgreSQL would refuse it.
--
-- The store arbitrates races with unique constraints and never decides a
-- rule: `device_messages` primary key = the (device_id, seq) dedupe,
-- `cartridges` primary key = bind-once, `flags.dedupe_key` = one flag per
-- thing it is about. SQLite has one writer at a time, and every write
-- transaction begins IMMEDIATE, so the constraints decide in commit order.

CREATE TABLE clinics (
    id         TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL,
    -- IANA zone name; validated by the caller.
    time_zone  TEXT NOT NULL DEFAULT 'UTC',
    created_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;

CREATE TABLE devices (
    id           TEXT NOT NULL PRIMARY KEY,
    clinic_id    TEXT NOT NULL REFERENCES clinics (id),
    model        TEXT NOT NULL DEFAULT 'unknown',
    -- 0 = the policy default.
    max_depth_um INTEGER NOT NULL DEFAULT 0 CHECK (max_depth_um >= 0),
    -- NULL until the first message.
    last_seen    INTEGER,
    -- Highest seq stored for the device; only ever grows.
    max_seq      INTEGER NOT NULL DEFAULT 0 CHECK (max_seq >= 0),
    -- As reported; not range-checked, so an odd reading never blocks a batch.
    battery_pct  INTEGER,
    firmware     TEXT,
    created_at   INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;
CREATE INDEX devices_clinic_idx ON devices (clinic_id);

-- The cartridge catalogue; 0 = no limit for each limit.
CREATE TABLE products (
    gtin            TEXT NOT NULL PRIMARY KEY,
    name            TEXT NOT NULL,
    max_depth_um    INTEGER NOT NULL DEFAULT 0 CHECK (max_depth_um >= 0),
    rated_strokes   INTEGER NOT NULL DEFAULT 0 CHECK (rated_strokes >= 0),
    max_active_s    INTEGER NOT NULL DEFAULT 0 CHECK (max_active_s >= 0),
    shelf_life_days INTEGER NOT NULL DEFAULT 0 CHECK (shelf_life_days >= 0)
) STRICT;

-- A lot belongs to a catalogued product: registering a lot of an unknown
-- GTIN is refused (NotFound), which keeps recalls from naming typos.
CREATE TABLE lots (
    gtin          TEXT NOT NULL REFERENCES products (gtin),
    lot           TEXT NOT NULL,
    expiry        TEXT CHECK (expiry IS NULL OR date(expiry) IS expiry),
    recalled_at   INTEGER,
    recall_reason TEXT,
    PRIMARY KEY (gtin, lot)
) STRICT;

-- Bind-once: the primary key is the arbiter. The first session whose claim
-- commits owns the cartridge forever; a later claim of the same id finds it
-- (ON CONFLICT DO NOTHING) and its batch is a conflict. No foreign key to
-- `sessions`: the claim is written before the session row in the same
-- transaction, and the binding is a fact of its own.
CREATE TABLE cartridges (
    cartridge_id     TEXT NOT NULL PRIMARY KEY,
    session_id       TEXT NOT NULL,
    device_id        TEXT NOT NULL REFERENCES devices (id),
    patient_ref      TEXT,
    bound_at         INTEGER NOT NULL,
    -- Latest device time of the owner or a resumed session; only moves
    -- forward.
    last_activity_at INTEGER NOT NULL
) STRICT;

CREATE TABLE sessions (
    session_id       TEXT NOT NULL PRIMARY KEY,
    device_id        TEXT NOT NULL REFERENCES devices (id),
    clinic_id        TEXT NOT NULL REFERENCES clinics (id),
    -- Decided once, by the session's first stored message, and never
    -- changed: NOT NULL so a session can never be stored undecided.
    relation         TEXT NOT NULL
        CHECK (relation IN ('owner', 'resumed', 'reused', 'unidentified')),
    owner_session_id TEXT,
    cartridge_id     TEXT,
    udi              TEXT NOT NULL,
    gtin             TEXT,
    lot              TEXT,
    expiry           TEXT CHECK (expiry IS NULL OR date(expiry) IS expiry),
    area             TEXT NOT NULL,
    patient_ref      TEXT,
    -- '' until a message names them; then the first value sticks.
    operator_ref     TEXT NOT NULL DEFAULT '',
    firmware         TEXT NOT NULL DEFAULT '',
    started_at       INTEGER NOT NULL,
    ended_at         INTEGER,
    strokes          INTEGER NOT NULL DEFAULT 0 CHECK (strokes >= 0),
    active_ms        INTEGER NOT NULL DEFAULT 0 CHECK (active_ms >= 0),
    samples          INTEGER NOT NULL DEFAULT 0 CHECK (samples >= 0),
    max_depth_um     INTEGER NOT NULL DEFAULT 0 CHECK (max_depth_um >= 0),
    created_at       INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    -- Resumed and reused sessions name the owner; the others do not.
    CHECK ((relation IN ('resumed', 'reused')) = (owner_session_id IS NOT NULL))
) STRICT;
-- Outbreak lookback: "which sessions used lot X" must be one index scan.
CREATE INDEX sessions_lot_idx ON sessions (gtin, lot, started_at);
-- Fleet view and per-device session lists, newest first.
CREATE INDEX sessions_device_started_idx ON sessions (device_id, started_at);
-- Cartridge history.
CREATE INDEX sessions_cartridge_idx ON sessions (cartridge_id) WHERE cartridge_id IS NOT NULL;
-- Reports: a clinic's sessions in a period.
CREATE INDEX sessions_clinic_started_idx ON sessions (clinic_id, started_at);

-- One row per stored device message: the (device_id, seq) primary key is
-- the idempotency key that makes redelivery harmless; it also records both
-- clocks and lets gaps in seq be found. WITHOUT ROWID: the key is the row,
-- so a dedupe lookup is one b-tree search.
CREATE TABLE device_messages (
    device_id   TEXT NOT NULL REFERENCES devices (id),
    seq         INTEGER NOT NULL CHECK (seq >= 0),
    kind        TEXT NOT NULL
        CHECK (kind IN ('session_start', 'stroke_batch', 'session_end', 'heartbeat')),
    session_id  TEXT,
    -- Device clock.
    sent_at     INTEGER NOT NULL,
    -- Server clock.
    received_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
) STRICT, WITHOUT ROWID;

-- The time series. Deliberately no primary key and no foreign keys, as on
-- PostgreSQL: duplicates are stopped one level up by `device_messages` (one
-- row per message, in the same transaction). Rows are appended in rowid
-- order, which is roughly time order.
CREATE TABLE stroke_samples (
    time       INTEGER NOT NULL,
    device_id  TEXT NOT NULL,
    session_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    strokes    INTEGER NOT NULL,
    depth_um   INTEGER NOT NULL,
    speed_hz   INTEGER NOT NULL
) STRICT;
-- Session reports and depth evidence read one session's samples: the one
-- per-row index worth its insert cost. SQLite has no BRIN, and a b-tree on
-- time would cost every insert while nothing in the store reads samples by
-- time range.
CREATE INDEX stroke_samples_session_idx ON stroke_samples (session_id);

CREATE TABLE flags (
    id           TEXT NOT NULL PRIMARY KEY,
    -- What the flag is about (e.g. one DEPTH_EXCEEDED per session): a
    -- repeated or redelivered observation never raises a second flag.
    dedupe_key   TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    severity     TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'major', 'critical')),
    state        TEXT NOT NULL DEFAULT 'open'
        CHECK (state IN ('open', 'acknowledged', 'resolved')),
    clinic_id    TEXT NOT NULL REFERENCES clinics (id),
    device_id    TEXT NOT NULL REFERENCES devices (id),
    session_id   TEXT,
    cartridge_id TEXT,
    -- Seq of the message that raised it; 0 = raised by the server.
    seq          INTEGER NOT NULL DEFAULT 0 CHECK (seq >= 0),
    -- Server time of the transaction that raised it.
    raised_at    INTEGER NOT NULL,
    detail       TEXT NOT NULL,
    evidence     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(evidence))
) STRICT;
-- Compliance lists page by (raised_at, id), per clinic or across clinics.
CREATE INDEX flags_clinic_raised_idx ON flags (clinic_id, raised_at, id);
CREATE INDEX flags_raised_idx ON flags (raised_at, id);
CREATE INDEX flags_session_idx ON flags (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX flags_device_idx ON flags (device_id, raised_at);
CREATE INDEX flags_cartridge_idx ON flags (cartridge_id) WHERE cartridge_id IS NOT NULL;

-- Open holes in a device's seq, until they are filled or flagged DATA_GAP.
CREATE TABLE seq_holes (
    device_id   TEXT NOT NULL REFERENCES devices (id),
    first_seq   INTEGER NOT NULL CHECK (first_seq >= 0),
    last_seq    INTEGER NOT NULL,
    -- Server time the hole was first seen.
    detected_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, first_seq),
    CHECK (last_seq >= first_seq)
) STRICT;
CREATE INDEX seq_holes_detected_idx ON seq_holes (detected_at);
