//! Migrations: idempotent, safe to run several at once, the same tables on
//! both stores, and a no-op TimescaleDB step on plain PostgreSQL.

use crate::fixture::TestStore;

crate::conformance!(
    migrations_apply_concurrently_and_twice: Empty,
    timescaledb_step_is_a_no_op_without_the_extension,
);

/// Every table of pentrace's schema, on either store.
const TABLES: [&str; 19] = [
    "api_tokens",
    "audit_checkpoints",
    "audit_events",
    "audit_heads",
    "cartridges",
    "clinics",
    "device_credentials",
    "device_messages",
    "devices",
    "flag_actions",
    "flags",
    "lots",
    "products",
    "quarantine",
    "seq_holes",
    "sessions",
    "stroke_samples",
    "user_clinics",
    "users",
];

async fn migrations_apply_concurrently_and_twice(store: TestStore) {
    // Two replicas (or two tasks) starting together: PostgreSQL's advisory
    // lock, SQLite's single writer connection serializes them.
    let (a, b) = (store.clone(), store.clone());
    let first = tokio::spawn(async move { a.migrate().await });
    let second = tokio::spawn(async move { b.migrate().await });
    first.await.expect("join").expect("first migrate");
    second.await.expect("join").expect("second migrate");
    // And again, on an up-to-date database.
    store.migrate().await.expect("third migrate");

    let applied = store
        .count("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .await;
    let files = std::fs::read_dir(store.migrations_dir())
        .expect("migrations dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert_eq!(applied, i64::try_from(files).expect("few files"));
    store.ping().await.expect("ping");
    assert_eq!(store.tables().await, TABLES);
}

async fn timescaledb_step_is_a_no_op_without_the_extension(store: TestStore) {
    if store.skip_on_sqlite(
        "timescaledb_step_is_a_no_op_without_the_extension",
        "SQLite has no extensions step: TimescaleDB is a PostgreSQL extension",
    ) {
        return;
    }
    let available = store
        .count("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
        .await;
    let installed = store
        .count("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
        .await;
    let aggregate = store
        .count("SELECT count(*) FROM pg_class WHERE relname = 'usage_hourly'")
        .await;
    if available == 0 {
        assert_eq!((installed, aggregate), (0, 0));
    }
    // With or without it, samples are a table the store can write.
    let samples = store.count("SELECT count(*) FROM stroke_samples").await;
    assert_eq!(samples, 0);
}
