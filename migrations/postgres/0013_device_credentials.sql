-- Device identity (issue 13): per-pen and per-gateway credentials, issued
-- by pentrace and stored only as the SHA-256 fingerprint of the secret or
-- of the certificate (DER). A pen credential names its device; a gateway
-- credential speaks for every pen of its clinic.
CREATE TABLE IF NOT EXISTS device_credentials (
    id          uuid PRIMARY KEY,
    -- 'pen_secret', 'pen_certificate' or 'gateway_secret'.
    kind        text NOT NULL
                CHECK (kind IN ('pen_secret', 'pen_certificate', 'gateway_secret')),
    -- The device id of a pen credential, the gateway's name otherwise: the
    -- MQTT username and client id.
    principal   text NOT NULL,
    device_id   text REFERENCES devices (id),
    clinic_id   text NOT NULL REFERENCES clinics (id),
    fingerprint bytea NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
    -- Certificates only.
    not_after   timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((kind = 'gateway_secret') = (device_id IS NULL)),
    CHECK (device_id IS NULL OR device_id = principal)
);
CREATE INDEX IF NOT EXISTS device_credentials_principal_idx ON device_credentials (principal);
CREATE INDEX IF NOT EXISTS device_credentials_clinic_idx ON device_credentials (clinic_id);
