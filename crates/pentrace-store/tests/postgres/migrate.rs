//! Migrations: idempotent, safe to run from several replicas at once, and a
//! no-op TimescaleDB step on plain PostgreSQL.

use pentrace_store::Store;

use crate::helpers::{count, with_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_concurrently_and_twice() {
    with_db(false, |store| async move {
        // Two replicas starting together: the advisory lock serializes them.
        let (a, b) = (store.clone(), store.clone());
        let first = tokio::spawn(async move { a.migrate().await });
        let second = tokio::spawn(async move { b.migrate().await });
        first.await.expect("join").expect("first migrate");
        second.await.expect("join").expect("second migrate");
        // And again, on an up-to-date database.
        store.migrate().await.expect("third migrate");

        let applied = count(
            &store,
            "SELECT count(*) FROM _sqlx_migrations WHERE success",
        )
        .await;
        let files = std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../migrations/postgres"
        ))
        .expect("migrations dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
        assert_eq!(applied, i64::try_from(files).expect("few files"));
        store.ping().await.expect("ping");
        let tables = count(
            &store,
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename IN \
             ('clinics','devices','products','lots','cartridges','sessions','device_messages', \
              'stroke_samples','flags','seq_holes')",
        )
        .await;
        assert_eq!(tables, 10);
    })
    .await;
}

#[tokio::test]
async fn timescaledb_step_is_a_no_op_without_the_extension() {
    with_db(true, |store| async move {
        let available = count(
            &store,
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'",
        )
        .await;
        let installed = count(
            &store,
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'",
        )
        .await;
        let aggregate = count(
            &store,
            "SELECT count(*) FROM pg_class WHERE relname = 'usage_hourly'",
        )
        .await;
        if available == 0 {
            assert_eq!((installed, aggregate), (0, 0));
        }
        // With or without it, samples are a table the store can write.
        let samples = count(&store, "SELECT count(*) FROM stroke_samples").await;
        assert_eq!(samples, 0);
    })
    .await;
}
