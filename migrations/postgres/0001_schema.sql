-- pentrace schema on plain PostgreSQL (DESIGN §5).
--
-- The store arbitrates races with unique constraints and never decides a
-- rule: `device_messages` primary key = the (device_id, seq) dedupe,
-- `cartridges` primary key = bind-once, `flags.dedupe_key` = one flag per
-- thing it is about. Everything else is plain facts.
--
-- Unsigned domain values (seq, strokes, µm, ...) are stored in signed
-- columns with `>= 0` checks, so a negative value can never be read back.
--
-- Tables of the audit trail and of users (audit_events, audit_checkpoints,
-- flag_actions, users, api_tokens) come in later numbered migrations.

CREATE TABLE clinics (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    -- IANA zone name; validated by the caller, not by PostgreSQL.
    time_zone  text NOT NULL DEFAULT 'UTC',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id           text PRIMARY KEY,
    clinic_id    text NOT NULL REFERENCES clinics (id),
    model        text NOT NULL DEFAULT 'unknown',
    -- 0 = the policy default.
    max_depth_um integer NOT NULL DEFAULT 0 CHECK (max_depth_um >= 0),
    -- NULL until the first message.
    last_seen    timestamptz,
    -- Highest seq stored for the device; only ever grows.
    max_seq      bigint NOT NULL DEFAULT 0 CHECK (max_seq >= 0),
    -- As reported; not range-checked, so an odd reading never blocks a batch.
    battery_pct  integer,
    firmware     text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_clinic_idx ON devices (clinic_id);

-- The cartridge catalogue; 0 = no limit for each limit.
CREATE TABLE products (
    gtin            text PRIMARY KEY,
    name            text NOT NULL,
    max_depth_um    integer NOT NULL DEFAULT 0 CHECK (max_depth_um >= 0),
    rated_strokes   bigint NOT NULL DEFAULT 0 CHECK (rated_strokes >= 0),
    max_active_s    integer NOT NULL DEFAULT 0 CHECK (max_active_s >= 0),
    shelf_life_days integer NOT NULL DEFAULT 0 CHECK (shelf_life_days >= 0)
);

-- A lot belongs to a catalogued product: registering a lot of an unknown
-- GTIN is refused (NotFound), which keeps recalls from naming typos.
CREATE TABLE lots (
    gtin          text NOT NULL REFERENCES products (gtin),
    lot           text NOT NULL,
    expiry        date,
    recalled_at   timestamptz,
    recall_reason text,
    PRIMARY KEY (gtin, lot)
);

-- Bind-once: the primary key is the arbiter. The first session whose claim
-- commits owns the cartridge forever; a concurrent claim of the same id waits
-- on the unique index and then loses (ON CONFLICT DO NOTHING), so two ingest
-- processes can never both win. No foreign key to `sessions`: the claim is
-- written before the session row in the same transaction, and the binding is
-- a fact of its own.
CREATE TABLE cartridges (
    cartridge_id     text PRIMARY KEY,
    session_id       uuid NOT NULL,
    device_id        text NOT NULL REFERENCES devices (id),
    patient_ref      text,
    bound_at         timestamptz NOT NULL,
    -- Latest device time of the owner or a resumed session; only moves
    -- forward (GREATEST on update).
    last_activity_at timestamptz NOT NULL
);

CREATE TABLE sessions (
    session_id       uuid PRIMARY KEY,
    device_id        text NOT NULL REFERENCES devices (id),
    clinic_id        text NOT NULL REFERENCES clinics (id),
    -- Decided once, by the session's first stored message, and never
    -- changed: NOT NULL so a session can never be stored undecided.
    relation         text NOT NULL
        CHECK (relation IN ('owner', 'resumed', 'reused', 'unidentified')),
    owner_session_id uuid,
    cartridge_id     text,
    udi              text NOT NULL,
    gtin             text,
    lot              text,
    expiry           date,
    area             text NOT NULL,
    patient_ref      text,
    -- '' until a message names them; then the first value sticks.
    operator_ref     text NOT NULL DEFAULT '',
    firmware         text NOT NULL DEFAULT '',
    started_at       timestamptz NOT NULL,
    ended_at         timestamptz,
    strokes          bigint NOT NULL DEFAULT 0 CHECK (strokes >= 0),
    active_ms        bigint NOT NULL DEFAULT 0 CHECK (active_ms >= 0),
    samples          bigint NOT NULL DEFAULT 0 CHECK (samples >= 0),
    max_depth_um     integer NOT NULL DEFAULT 0 CHECK (max_depth_um >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Resumed and reused sessions name the owner; the others do not.
    CHECK ((relation IN ('resumed', 'reused')) = (owner_session_id IS NOT NULL))
);
-- Outbreak lookback: "which sessions used lot X" must be one index scan.
CREATE INDEX sessions_lot_idx ON sessions (gtin, lot, started_at);
-- Fleet view and per-device session lists, newest first.
CREATE INDEX sessions_device_started_idx ON sessions (device_id, started_at);
-- Cartridge history.
CREATE INDEX sessions_cartridge_idx ON sessions (cartridge_id) WHERE cartridge_id IS NOT NULL;

-- One row per stored device message: the (device_id, seq) primary key is
-- the idempotency key that makes redelivery harmless; it also records both
-- clocks and lets gaps in seq be found.
CREATE TABLE device_messages (
    device_id   text NOT NULL REFERENCES devices (id),
    seq         bigint NOT NULL CHECK (seq >= 0),
    kind        text NOT NULL
        CHECK (kind IN ('session_start', 'stroke_batch', 'session_end', 'heartbeat')),
    session_id  uuid,
    -- Device clock.
    sent_at     timestamptz NOT NULL,
    -- Server clock.
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, seq)
);

-- The time series, written with binary COPY. Deliberately no primary key and
-- no foreign keys: duplicates are stopped one level up by `device_messages`
-- (one row per message, in the same transaction), and a (device_id, time,
-- seq) key would cost ~4x in COPY throughput (DESIGN §5). Becomes a
-- TimescaleDB hypertable in 0002 when the extension is present.
CREATE TABLE stroke_samples (
    time       timestamptz NOT NULL,
    device_id  text NOT NULL,
    session_id uuid NOT NULL,
    seq        bigint NOT NULL,
    strokes    integer NOT NULL,
    depth_um   integer NOT NULL,
    speed_hz   integer NOT NULL
);
-- Samples arrive roughly in time order, so a BRIN index serves time-range
-- scans at a tiny fraction of a btree's size and insert cost.
CREATE INDEX stroke_samples_time_brin ON stroke_samples USING brin (time);
-- Session reports and depth evidence read one session's samples; a session
-- spans minutes inside months of data, so BRIN on time cannot find them and
-- a sequential scan would be unbounded. A btree on session_id is the one
-- per-row index worth its insert cost.
CREATE INDEX stroke_samples_session_idx ON stroke_samples (session_id);

CREATE TABLE flags (
    id           uuid PRIMARY KEY,
    -- What the flag is about (e.g. one DEPTH_EXCEEDED per session): a
    -- repeated or redelivered observation never raises a second flag.
    dedupe_key   text NOT NULL UNIQUE,
    kind         text NOT NULL,
    severity     text NOT NULL CHECK (severity IN ('info', 'warning', 'major', 'critical')),
    state        text NOT NULL DEFAULT 'open'
        CHECK (state IN ('open', 'acknowledged', 'resolved')),
    clinic_id    text NOT NULL REFERENCES clinics (id),
    device_id    text NOT NULL REFERENCES devices (id),
    session_id   uuid,
    cartridge_id text,
    -- Seq of the message that raised it; 0 = raised by the server.
    seq          bigint NOT NULL DEFAULT 0 CHECK (seq >= 0),
    -- Server time of the transaction that raised it.
    raised_at    timestamptz NOT NULL DEFAULT now(),
    detail       text NOT NULL,
    evidence     jsonb NOT NULL DEFAULT '{}'
);
-- Compliance lists page by (raised_at, id), per clinic or across clinics.
CREATE INDEX flags_clinic_raised_idx ON flags (clinic_id, raised_at, id);
CREATE INDEX flags_raised_idx ON flags (raised_at, id);
CREATE INDEX flags_session_idx ON flags (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX flags_device_idx ON flags (device_id, raised_at);
CREATE INDEX flags_cartridge_idx ON flags (cartridge_id) WHERE cartridge_id IS NOT NULL;

-- Open holes in a device's seq, until they are filled or flagged DATA_GAP.
CREATE TABLE seq_holes (
    device_id   text NOT NULL REFERENCES devices (id),
    first_seq   bigint NOT NULL CHECK (first_seq >= 0),
    last_seq    bigint NOT NULL,
    -- Server time the hole was first seen.
    detected_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, first_seq),
    CHECK (last_seq >= first_seq)
);
CREATE INDEX seq_holes_detected_idx ON seq_holes (detected_at);
