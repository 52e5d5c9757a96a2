-- Device identity (issue 13): see migrations/postgres/0013_device_credentials.sql.
CREATE TABLE device_credentials (
    id          TEXT NOT NULL PRIMARY KEY,
    kind        TEXT NOT NULL
                CHECK (kind IN ('pen_secret', 'pen_certificate', 'gateway_secret')),
    principal   TEXT NOT NULL,
    device_id   TEXT REFERENCES devices (id),
    clinic_id   TEXT NOT NULL REFERENCES clinics (id),
    fingerprint BLOB NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
    not_after   INTEGER,
    created_at  INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    revoked_at  INTEGER,
    CHECK ((kind = 'gateway_secret') = (device_id IS NULL)),
    CHECK (device_id IS NULL OR device_id = principal)
) STRICT;
CREATE INDEX device_credentials_principal_idx ON device_credentials (principal);
CREATE INDEX device_credentials_clinic_idx ON device_credentials (clinic_id);
