//! `pentrace status` against plain PostgreSQL: TimescaleDB inactive, and the
//! schema version before and after `pentrace migrate`. (Against TimescaleDB,
//! `tests/timescaledb/run-tests.sh` checks that it reports it active.)

use std::process::{Command, Output};

use sqlx::{Connection, Executor, PgConnection};

/// The tests' PostgreSQL server (databases are created per test).
fn admin_url() -> String {
    std::env::var("PENTRACE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn url_for(db: &str) -> String {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{db}")
}

async fn admin(sql: &str) {
    let mut conn = PgConnection::connect(&admin_url())
        .await
        .unwrap_or_else(|e| panic!("connect to the test PostgreSQL: {e}"));
    conn.execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

/// Runs pentrace with `envs` and expects success; returns stdout.
fn pentrace(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_pentrace"))
        .args(args)
        // Only what the test gives: a DATABASE_URL of the caller's would
        // otherwise stand in for a missing one.
        .env_remove("DATABASE_URL")
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run pentrace: {e}"));
    assert!(
        out.status.success(),
        "pentrace {args:?}: exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number of the newest migration file.
fn latest_migration() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/postgres");
    let newest = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".sql"))
        .max()
        .unwrap_or_else(|| panic!("no migrations in {dir}"));
    let number = newest.split('_').next().unwrap_or_default();
    number.trim_start_matches('0').to_owned()
}

#[tokio::test]
async fn status_on_plain_postgres_says_timescaledb_is_inactive() {
    let name = format!("pentrace_cli_{}", uuid::Uuid::new_v4().simple());
    admin(&format!("CREATE DATABASE {name}")).await;
    let url = url_for(&name);
    // The body runs on a thread of its own (the commands block), and the
    // database is dropped whatever it did.
    let checks = tokio::task::spawn_blocking(move || {
        // URL from the environment, as `pentrace migrate` takes it.
        let before = pentrace(&["status"], &[("DATABASE_URL", &url)]);
        assert!(before.contains("store: postgres\n"), "{before}");
        assert!(before.contains("\nserver: PostgreSQL "), "{before}");
        assert!(
            before.contains("\ntimescaledb: inactive (extension not installed)\n"),
            "{before}"
        );
        assert!(
            before.contains("\nschema version: none (no migration applied)\n"),
            "{before}"
        );
        assert!(before.contains("\nmigrations: pending: 1, 2, "), "{before}");

        pentrace(&["migrate", "--database-url", &url], &[]);
        let after = pentrace(&["status", "--database-url", &url], &[]);
        assert!(after.contains("\ntimescaledb: inactive"), "{after}");
        let version = format!("\nschema version: {} (", latest_migration());
        assert!(after.contains(&version), "{version:?} in {after}");
        assert!(after.ends_with("\nmigrations: all applied\n"), "{after}");
    })
    .await;
    admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    if let Err(e) = checks {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("checks did not finish: {e}"),
        }
    }
}

#[test]
fn status_without_a_server_fails_with_the_reason() {
    // Port 1 on localhost: nothing listens there.
    let out = Command::new(env!("CARGO_BIN_EXE_pentrace"))
        .args([
            "status",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/none",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run pentrace: {e}"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot connect to the database"),
        "{stderr}"
    );
}
