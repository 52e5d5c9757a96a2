//! What the migrations make of TimescaleDB (docs/architecture.md, "Storage"),
//! on the TimescaleDB test server (`tests/timescaledb/run-tests.sh`): the
//! hypertable, the compression policy, the hourly continuous aggregate, never
//! a retention policy; and that the aggregate and the compression really work
//! on samples written with plain INSERT (the server has no COPY).
//!
//! `Store::status` is checked on every store: TimescaleDB active with those
//! features on the TimescaleDB server, inactive on plain PostgreSQL, absent
//! on SQLite.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use pentrace_store::postgres::PgStore;
use uuid::Uuid;

use crate::fixture::{Backend, TestStore, on_timescaledb};
use crate::helpers::t;

crate::conformance!(
    migrations_create_the_hypertable_compression_and_usage_hourly,
    status_reports_timescaledb_and_the_schema_version,
    usage_hourly_refreshes_to_the_hourly_sums,
    a_chunk_compresses_and_stays_readable_and_writable,
);

/// Names of a query's one text column, in order.
async fn names(store: &PgStore, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql)
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// One stroke sample: device, time, strokes, depth.
type Sample = (&'static str, DateTime<Utc>, i32, i32);

/// Writes samples with a plain multi-row INSERT (this server has no COPY).
async fn insert_samples(store: &PgStore, samples: &[Sample]) {
    let session = Uuid::new_v4();
    let devices: Vec<&str> = samples.iter().map(|s| s.0).collect();
    let times: Vec<DateTime<Utc>> = samples.iter().map(|s| s.1).collect();
    let strokes: Vec<i32> = samples.iter().map(|s| s.2).collect();
    let depths: Vec<i32> = samples.iter().map(|s| s.3).collect();
    sqlx::query(
        "INSERT INTO stroke_samples (time, device_id, session_id, seq, strokes, depth_um, speed_hz) \
         SELECT time, device_id, $5, 1, strokes, depth_um, 120 \
         FROM UNNEST($1::timestamptz[], $2::text[], $3::int4[], $4::int4[]) \
              AS s(time, device_id, strokes, depth_um)",
    )
    .bind(&times)
    .bind(&devices)
    .bind(&strokes)
    .bind(&depths)
    .bind(session)
    .execute(store.pool())
    .await
    .expect("insert samples");
}

async fn migrations_create_the_hypertable_compression_and_usage_hourly(store: TestStore) {
    if store
        .skip_without_timescaledb("migrations_create_the_hypertable_compression_and_usage_hourly")
    {
        return;
    }
    let pg = store.pg().expect("TimescaleDB runs on PostgreSQL");
    let hypertables = names(
        pg,
        "SELECT hypertable_name::text FROM timescaledb_information.hypertables \
         WHERE hypertable_schema = current_schema() ORDER BY 1",
    )
    .await;
    assert_eq!(hypertables, ["stroke_samples"], "hypertables");
    let compression = names(
        pg,
        "SELECT hypertable_name::text FROM timescaledb_information.jobs \
         WHERE proc_name = 'policy_compression' AND hypertable_schema = current_schema()",
    )
    .await;
    assert_eq!(compression, ["stroke_samples"], "compression policies");
    let segment_by = names(
        pg,
        "SELECT attname::text FROM timescaledb_information.compression_settings \
         WHERE hypertable_schema = current_schema() AND segmentby_column_index IS NOT NULL",
    )
    .await;
    assert_eq!(segment_by, ["device_id"], "compression segments");
    let aggregates = names(
        pg,
        "SELECT view_name::text FROM timescaledb_information.continuous_aggregates \
         WHERE view_schema = current_schema()",
    )
    .await;
    assert_eq!(aggregates, ["usage_hourly"], "continuous aggregates");
    let refresh = names(
        pg,
        "SELECT hypertable_name::text FROM timescaledb_information.jobs \
         WHERE proc_name = 'policy_refresh_continuous_aggregate' \
           AND hypertable_schema = current_schema()",
    )
    .await;
    assert_eq!(refresh, ["usage_hourly"], "refresh policies");

    // Never a retention policy (docs/architecture.md, "Storage"): none on any
    // table of any schema, so in particular none on audit or flag tables.
    let retention = names(
        pg,
        "SELECT coalesce(hypertable_schema || '.' || hypertable_name, job_id::text) \
         FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'",
    )
    .await;
    assert_eq!(retention, Vec::<String>::new(), "retention policies");
    // And the audit and flag tables stay plain tables: nothing of
    // TimescaleDB's (chunk drops, compression) can touch their rows.
    let audit_hypertables = store
        .count(
            "SELECT count(*) FROM timescaledb_information.hypertables \
         WHERE hypertable_name IN ('audit_events', 'audit_checkpoints', 'audit_heads', \
                                   'flags', 'flag_actions')",
        )
        .await;
    assert_eq!(audit_hypertables, 0);
}

async fn status_reports_timescaledb_and_the_schema_version(store: TestStore) {
    let status = store.status().await.expect("status");
    assert_eq!(status.kind, store.kind());
    let kind = match store.backend() {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    assert_eq!(status.kind, kind);
    assert!(!status.server_version.is_empty());
    assert!(status.schema_is_current(), "{status:?}");
    let files = std::fs::read_dir(store.migrations_dir())
        .expect("migrations dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".sql"))
        .max()
        .expect("a migration");
    let latest: i64 = files
        .split('_')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("numbered migration");
    assert_eq!(
        status.schema_version.as_ref().map(|v| v.version),
        Some(latest)
    );

    if store.backend() == Backend::Sqlite || !on_timescaledb() {
        assert_eq!(status.timescaledb, None, "plain PostgreSQL or SQLite");
        let line = pentrace_store::summary_line(&status);
        assert!(line.starts_with(&format!("store={kind} ")), "{line}");
        assert!(line.contains("timescaledb=inactive"), "{line}");
        return;
    }
    let ts = status.timescaledb.clone().expect("TimescaleDB active");
    assert!(ts.version.starts_with('2'), "{ts:?}");
    assert_eq!(ts.hypertables, ["stroke_samples"]);
    assert_eq!(ts.compression_policies, ["stroke_samples"]);
    assert_eq!(ts.continuous_aggregates, ["usage_hourly"]);
    assert!(ts.retention_policies.is_empty());
    let line = pentrace_store::summary_line(&status);
    assert!(
        line.contains("hypertables=stroke_samples compression=stroke_samples caggs=usage_hourly"),
        "{line}"
    );
}

async fn usage_hourly_refreshes_to_the_hourly_sums(store: TestStore) {
    if store.skip_without_timescaledb("usage_hourly_refreshes_to_the_hourly_sums") {
        return;
    }
    let pg = store.pg().expect("TimescaleDB runs on PostgreSQL");
    // t(0) is 09:00 UTC. Two devices over three hours, out of order,
    // with hour boundaries exactly on a sample.
    let mut samples: Vec<Sample> = Vec::new();
    for i in 0..180i32 {
        let at = t(i64::from(i) * 60); // one a minute, 09:00-11:59
        samples.push(("pen-a", at, 10 + i % 7, 400 + (i * 13) % 900));
        if i % 3 == 0 {
            samples.push(("pen-b", at + Duration::seconds(20), 5, 300 + i));
        }
    }
    samples.push(("pen-b", t(3600), 1000, 2500)); // 10:00:00 belongs to 10:00
    samples.reverse();
    insert_samples(pg, &samples).await;

    // bucket, device -> (strokes, samples, max depth), computed here.
    let mut expected: BTreeMap<(DateTime<Utc>, String), (i64, i64, i32)> = BTreeMap::new();
    for (device, at, strokes, depth) in &samples {
        let hour = t(0) + Duration::hours((*at - t(0)).num_seconds() / 3600);
        let entry = expected
            .entry((hour, (*device).to_owned()))
            .or_insert((0, 0, 0));
        entry.0 += i64::from(*strokes);
        entry.1 += 1;
        entry.2 = entry.2.max(*depth);
    }
    assert_eq!(expected.len(), 6);

    // Materialized only: nothing shows before a refresh.
    assert_eq!(store.count("SELECT count(*) FROM usage_hourly").await, 0);
    sqlx::query("CALL refresh_continuous_aggregate('usage_hourly', NULL, NULL)")
        .execute(pg.pool())
        .await
        .expect("refresh usage_hourly");
    let rows: Vec<(DateTime<Utc>, String, i64, i64, i32)> = sqlx::query_as(
        "SELECT bucket, device_id, strokes, samples, max_depth_um FROM usage_hourly \
         ORDER BY bucket, device_id",
    )
    .fetch_all(pg.pool())
    .await
    .expect("usage_hourly");
    let got: BTreeMap<_, _> = rows
        .into_iter()
        .map(|(bucket, device, strokes, n, depth)| ((bucket, device), (strokes, n, depth)))
        .collect();
    assert_eq!(got, expected);
}

async fn a_chunk_compresses_and_stays_readable_and_writable(store: TestStore) {
    if store.skip_without_timescaledb("a_chunk_compresses_and_stays_readable_and_writable") {
        return;
    }
    let pg = store.pg().expect("TimescaleDB runs on PostgreSQL");
    // Three days of samples: one-day chunks, so three chunks.
    let samples: Vec<Sample> = (0..72i64)
        .map(|h| ("pen-a", t(h * 3600), 10, 500))
        .collect();
    insert_samples(pg, &samples).await;
    // Oldest first (day 1 is 09:00-24:00, so four chunks).
    let chunks = names(
        pg,
        "SELECT chunk_schema || '.' || chunk_name FROM timescaledb_information.chunks \
         WHERE hypertable_schema = current_schema() AND hypertable_name = 'stroke_samples' \
         ORDER BY range_start",
    )
    .await;
    assert_eq!(chunks.len(), 4, "{chunks:?}");

    let compressed: String = sqlx::query_scalar("SELECT compress_chunk($1::regclass)::text")
        .bind(&chunks[0])
        .fetch_one(pg.pool())
        .await
        .expect("compress_chunk");
    assert_eq!(compressed, chunks[0]);
    let states: Vec<(String, bool)> = sqlx::query_as(
        "SELECT chunk_schema || '.' || chunk_name, is_compressed \
         FROM timescaledb_information.chunks \
         WHERE hypertable_schema = current_schema() AND hypertable_name = 'stroke_samples' \
         ORDER BY 1",
    )
    .fetch_all(pg.pool())
    .await
    .expect("chunks");
    let compressed: Vec<&str> = states
        .iter()
        .filter(|(_, c)| *c)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(compressed, [chunks[0].as_str()], "{states:?}");
    let stats: i64 = store
        .count(
            "SELECT count(*) FROM chunk_compression_stats('stroke_samples') \
         WHERE compression_status = 'Compressed'",
        )
        .await;
    assert_eq!(stats, 1);

    // Reads see every row through the compressed chunk.
    assert_eq!(store.count("SELECT count(*) FROM stroke_samples").await, 72);
    assert_eq!(
        store.count("SELECT sum(strokes) FROM stroke_samples").await,
        720
    );
    // A pen's backfill into the compressed range is accepted (0002 relies
    // on it: samples older than the compression age still arrive).
    insert_samples(pg, &[("pen-a", t(1800), 3, 600)]).await;
    let first_hour: i64 = sqlx::query_scalar("SELECT count(*) FROM stroke_samples WHERE time < $1")
        .bind(t(3600))
        .fetch_one(pg.pool())
        .await
        .expect("first hour");
    assert_eq!(first_hour, 2);
}
