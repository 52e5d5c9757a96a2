-- Overuse counts per cartridge (issue 14): a resume continues the owner's
-- procedure, so rated strokes and active time add up over the owner and
-- its resumes. The cartridge row keeps that sum; existing rows take it
-- from their sessions (saturating at bigint's maximum, as the pipeline
-- does).
ALTER TABLE cartridges
    ADD COLUMN IF NOT EXISTS strokes bigint NOT NULL DEFAULT 0 CHECK (strokes >= 0),
    ADD COLUMN IF NOT EXISTS active_ms bigint NOT NULL DEFAULT 0 CHECK (active_ms >= 0);

UPDATE cartridges c
SET strokes = u.strokes, active_ms = u.active_ms
FROM (
    SELECT cartridge_id,
           LEAST(sum(strokes), 9223372036854775807)::bigint AS strokes,
           LEAST(sum(active_ms), 9223372036854775807)::bigint AS active_ms
    FROM sessions
    WHERE relation IN ('owner', 'resumed') AND cartridge_id IS NOT NULL
    GROUP BY cartridge_id
) u
WHERE c.cartridge_id = u.cartridge_id;
