-- See migrations/postgres/0015_cartridge_usage.sql. total() is a float and
-- never overflows; a CAST of a float beyond the integer range gives the
-- largest integer.
ALTER TABLE cartridges ADD COLUMN strokes INTEGER NOT NULL DEFAULT 0 CHECK (strokes >= 0);
ALTER TABLE cartridges ADD COLUMN active_ms INTEGER NOT NULL DEFAULT 0 CHECK (active_ms >= 0);

UPDATE cartridges
SET strokes = (
        SELECT CAST(min(total(s.strokes), 9223372036854775807) AS INTEGER) FROM sessions s
        WHERE s.cartridge_id = cartridges.cartridge_id AND s.relation IN ('owner', 'resumed')),
    active_ms = (
        SELECT CAST(min(total(s.active_ms), 9223372036854775807) AS INTEGER) FROM sessions s
        WHERE s.cartridge_id = cartridges.cartridge_id AND s.relation IN ('owner', 'resumed'));
