-- TimescaleDB, when the server has it (DESIGN §5). On plain PostgreSQL this
-- migration is a no-op and the schema of 0001 runs unchanged.
--
-- Everything sits in one DO block so nothing TimescaleDB-specific is even
-- planned unless the extension exists: PL/pgSQL resolves functions such as
-- create_hypertable only when a statement runs.
--
-- NEVER add a retention policy here or in a later migration: stroke samples
-- are the evidence behind DEPTH_EXCEEDED and CARTRIDGE_OVERUSED flags and
-- behind session reports, which medical-device record keeping requires for
-- years; audit tables must never lose rows at all. Old data is compressed,
-- not dropped.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        RAISE NOTICE 'timescaledb not available: stroke_samples stays a plain table';
        RETURN;
    END IF;

    -- Available is not usable: the library must also be in
    -- shared_preload_libraries, and the role may lack the privilege. Either
    -- way the plain schema works, so say why and carry on without it.
    BEGIN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'timescaledb is available but cannot be enabled (%): stroke_samples stays a plain table', SQLERRM;
        RETURN;
    END;

    -- One-day chunks: a day of a busy clinic chain's samples fits in memory,
    -- and backfill from a pen that was offline for days touches few chunks.
    -- The table has no unique index, so nothing has to include `time`.
    PERFORM create_hypertable('stroke_samples', 'time',
        chunk_time_interval => INTERVAL '1 day',
        migrate_data => true,
        if_not_exists => true);

    -- Compression and continuous aggregates are TimescaleDB community (TSL)
    -- features; the Apache-2 build refuses them. The hypertable alone is
    -- still worth having there.
    IF current_setting('timescaledb.license', true) IS DISTINCT FROM 'timescale' THEN
        RAISE NOTICE 'timescaledb license is %: no compression, no usage_hourly',
            current_setting('timescaledb.license', true);
        RETURN;
    END IF;

    -- Segment by device: a device's samples compress together and per-device
    -- reads decompress only their segments. Backfilled samples older than
    -- 7 days land in compressed chunks, which TimescaleDB >= 2.11 accepts.
    EXECUTE $sql$
        ALTER TABLE stroke_samples SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'device_id',
            timescaledb.compress_orderby = 'time')
    $sql$;
    PERFORM add_compression_policy('stroke_samples', INTERVAL '7 days', if_not_exists => true);

    -- Hourly usage per device for the fleet view. Created WITH NO DATA
    -- because a continuous aggregate cannot be materialized inside a
    -- transaction (every migration runs in one); the policy fills it. The
    -- refresh window matches the compression age: backfill older than a
    -- week needs a manual refresh_continuous_aggregate.
    EXECUTE $sql$
        CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly
        WITH (timescaledb.continuous) AS
        SELECT time_bucket(INTERVAL '1 hour', time) AS bucket,
               device_id,
               sum(strokes)::bigint AS strokes,
               count(*) AS samples,
               max(depth_um) AS max_depth_um
        FROM stroke_samples
        GROUP BY bucket, device_id
        WITH NO DATA
    $sql$;
    PERFORM add_continuous_aggregate_policy('usage_hourly',
        start_offset => INTERVAL '7 days',
        end_offset => INTERVAL '1 hour',
        schedule_interval => INTERVAL '1 hour',
        if_not_exists => true);
END
$$;
