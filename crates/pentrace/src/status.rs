//! `pentrace status`: which store, its server, whether TimescaleDB's
//! features are active, and the schema version against this build's
//! migrations. Reads only; never migrates.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pentrace_server::Config;
use pentrace_server::config::Overrides;
use pentrace_store::postgres::PgStore;
use pentrace_store::sqlite::SqliteStore;
use pentrace_store::{Store, StoreStatus, TimescaleStatus};
use secrecy::ExposeSecret;

/// How long to keep trying to reach the database.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `pentrace status` (the database options of `pentrace migrate`).
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// TOML configuration file (optional; defaults, then this file, then
    /// PENTRACE_* variables, then flags).
    #[arg(long, env = "PENTRACE_CONFIG")]
    config: Option<PathBuf>,
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// Connects, reads the status and prints it.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        database_url: args.database_url,
        ..Overrides::default()
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let status = runtime.block_on(async {
        // One connection is all it needs, and all that a one-connection
        // server (the PGlite TimescaleDB test server) gives. sqlx retries a
        // refused connection for 30 s: a status check should say sooner
        // that the database is not there.
        let Some(url) = config.database_url.as_ref() else {
            // The embedded store: read its file as it is (no migration).
            let store = SqliteStore::open(&config.sqlite_path())
                .await
                .with_context(|| format!("cannot open {}", config.sqlite_path().display()))?;
            return store.status().await.context("cannot read the status");
        };
        let connect = PgStore::connect(url.expose_secret(), 1);
        let store = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "cannot connect to the database: no connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )
            })?
            .context("cannot connect to the database")?;
        let status = store.status().await.context("cannot read the status");
        store.pool().close().await;
        status
    })?;
    print!("{}", render(&status));
    Ok(())
}

/// The report, one `key: value` per line.
fn render(status: &StoreStatus) -> String {
    let server = if status.kind == "sqlite" {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    let mut out = format!(
        "store: {}\nserver: {server} {}\n",
        status.kind, status.server_version
    );
    match &status.timescaledb {
        None => out.push_str("timescaledb: inactive (extension not installed)\n"),
        Some(ts) => out.push_str(&timescaledb(ts)),
    }
    let version = status.schema_version.as_ref().map_or_else(
        || "none (no migration applied)".to_owned(),
        |v| format!("{} ({})", v.version, v.description),
    );
    out.push_str(&format!("schema version: {version}\n"));
    let migrations = if !status.unknown_migrations.is_empty() {
        format!(
            "database is newer than this build (unknown: {})",
            join(&status.unknown_migrations)
        )
    } else if !status.pending_migrations.is_empty() {
        format!(
            "pending: {} (run `pentrace migrate`)",
            join(&status.pending_migrations)
        )
    } else {
        "all applied".to_owned()
    };
    out.push_str(&format!("migrations: {migrations}\n"));
    out
}

fn timescaledb(ts: &TimescaleStatus) -> String {
    let compression = if ts.compression_policies.is_empty() {
        "no".to_owned()
    } else {
        format!("yes ({})", ts.compression_policies.join(", "))
    };
    let retention = if ts.retention_policies.is_empty() {
        "none".to_owned()
    } else {
        // pentrace never creates one (docs/architecture.md, "Storage"); say
        // loudly that it is there.
        format!(
            "{} (WARNING: deletes evidence; pentrace never creates one)",
            ts.retention_policies.join(", ")
        )
    };
    format!(
        "timescaledb: active ({})\n  hypertables: {}\n  compression policy: {compression}\n  \
         continuous aggregates: {}\n  retention policies: {retention}\n",
        ts.version,
        names(&ts.hypertables),
        names(&ts.continuous_aggregates),
    )
}

fn names(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn join(versions: &[i64]) -> String {
    let text: Vec<String> = versions.iter().map(i64::to_string).collect();
    text.join(", ")
}

#[cfg(test)]
mod tests {
    use pentrace_store::SchemaVersion;

    use super::*;

    #[test]
    fn reports_timescaledb_features_and_pending_migrations() {
        let status = StoreStatus {
            kind: "postgres",
            server_version: "17.5".into(),
            schema_version: Some(SchemaVersion {
                version: 2,
                description: "timescaledb".into(),
            }),
            pending_migrations: vec![10],
            unknown_migrations: Vec::new(),
            timescaledb: Some(TimescaleStatus {
                version: "2.23.0".into(),
                hypertables: vec!["stroke_samples".into()],
                compression_policies: vec!["stroke_samples".into()],
                continuous_aggregates: vec!["usage_hourly".into()],
                retention_policies: Vec::new(),
            }),
        };
        assert_eq!(
            render(&status),
            "store: postgres\nserver: PostgreSQL 17.5\n\
             timescaledb: active (2.23.0)\n  hypertables: stroke_samples\n  \
             compression policy: yes (stroke_samples)\n  continuous aggregates: usage_hourly\n  \
             retention policies: none\n\
             schema version: 2 (timescaledb)\nmigrations: pending: 10 (run `pentrace migrate`)\n"
        );
    }
}
