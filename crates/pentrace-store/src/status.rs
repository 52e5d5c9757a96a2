//! What a store reports about itself: `pentrace status` and the line
//! `pentrace serve` logs at start-up.

use std::fmt::Write as _;

/// Which store, which server, which schema, and which TimescaleDB features
/// are in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// The store's name, as [`crate::Store::kind`] ("postgres").
    pub kind: &'static str,
    /// The database server's version (PostgreSQL's `server_version`).
    pub server_version: String,
    /// The latest migration applied, None on an empty database.
    pub schema_version: Option<SchemaVersion>,
    /// Versions of this build's migrations not applied yet, in order.
    pub pending_migrations: Vec<i64>,
    /// Versions applied to the database that this build does not know: the
    /// database was migrated by a newer pentrace.
    pub unknown_migrations: Vec<i64>,
    /// TimescaleDB's state; None when the extension is not installed in the
    /// database (plain PostgreSQL).
    pub timescaledb: Option<TimescaleStatus>,
}

/// One applied migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaVersion {
    /// The migration's number (`0002_timescaledb.sql` is 2).
    pub version: i64,
    /// Its description (`timescaledb`).
    pub description: String,
}

/// The TimescaleDB features pentrace's schema uses, as installed.
///
/// Names are those of the store's own schema (`current_schema()`), so other
/// schemas of the same database do not show up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimescaleStatus {
    /// The installed extension version.
    pub version: String,
    /// Tables that are hypertables.
    pub hypertables: Vec<String>,
    /// Hypertables with a compression policy.
    pub compression_policies: Vec<String>,
    /// Continuous aggregates (views).
    pub continuous_aggregates: Vec<String>,
    /// Hypertables with a retention policy: pentrace never creates one
    /// (docs/architecture.md, "Storage"), so anything here was added by hand and deletes evidence.
    pub retention_policies: Vec<String>,
}

impl StoreStatus {
    /// Whether this build's migrations are all applied and the database has
    /// none this build does not know.
    pub fn schema_is_current(&self) -> bool {
        self.pending_migrations.is_empty() && self.unknown_migrations.is_empty()
    }
}

/// One line for logs: the store, TimescaleDB's state and the schema version,
/// e.g. `store=postgres server=17.5 timescaledb=2.23.0 hypertables=stroke_samples
/// compression=stroke_samples caggs=usage_hourly schema=10 (current)`.
pub fn summary_line(status: &StoreStatus) -> String {
    let mut line = format!(
        "store={} server={} timescaledb=",
        status.kind,
        status
            .server_version
            .split_whitespace()
            .next()
            .unwrap_or("?")
    );
    match &status.timescaledb {
        None => line.push_str("inactive"),
        Some(ts) => {
            let _ = write!(
                line,
                "{} hypertables={} compression={} caggs={}",
                ts.version,
                list(&ts.hypertables),
                list(&ts.compression_policies),
                list(&ts.continuous_aggregates)
            );
            if !ts.retention_policies.is_empty() {
                let _ = write!(line, " RETENTION={}", list(&ts.retention_policies));
            }
        }
    }
    let _ = write!(line, " schema={}", schema(status));
    line
}

/// The schema version and whether it matches this build.
fn schema(status: &StoreStatus) -> String {
    let version = status
        .schema_version
        .as_ref()
        .map_or_else(|| "none".to_owned(), |v| v.version.to_string());
    if !status.unknown_migrations.is_empty() {
        format!(
            "{version} (newer than this build: unknown {})",
            versions(&status.unknown_migrations)
        )
    } else if !status.pending_migrations.is_empty() {
        format!(
            "{version} (pending {})",
            versions(&status.pending_migrations)
        )
    } else {
        format!("{version} (current)")
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(",")
    }
}

fn versions(versions: &[i64]) -> String {
    let text: Vec<String> = versions.iter().map(i64::to_string).collect();
    text.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> StoreStatus {
        StoreStatus {
            kind: "postgres",
            server_version: "17.6 (Debian 17.6-0+deb13u1)".into(),
            schema_version: Some(SchemaVersion {
                version: 10,
                description: "audit".into(),
            }),
            pending_migrations: Vec::new(),
            unknown_migrations: Vec::new(),
            timescaledb: None,
        }
    }

    #[test]
    fn plain_postgres_says_inactive() {
        assert_eq!(
            summary_line(&plain()),
            "store=postgres server=17.6 timescaledb=inactive schema=10 (current)"
        );
    }

    #[test]
    fn timescaledb_features_and_schema_state_are_listed() {
        let status = StoreStatus {
            schema_version: None,
            pending_migrations: vec![1, 2],
            timescaledb: Some(TimescaleStatus {
                version: "2.23.0".into(),
                hypertables: vec!["stroke_samples".into()],
                compression_policies: vec!["stroke_samples".into()],
                continuous_aggregates: Vec::new(),
                retention_policies: vec!["stroke_samples".into()],
            }),
            ..plain()
        };
        assert!(!status.schema_is_current());
        assert_eq!(
            summary_line(&status),
            "store=postgres server=17.6 timescaledb=2.23.0 hypertables=stroke_samples \
             compression=stroke_samples caggs=none RETENTION=stroke_samples \
             schema=none (pending 1,2)"
        );
        let ahead = StoreStatus {
            unknown_migrations: vec![11],
            ..plain()
        };
        assert_eq!(
            summary_line(&ahead),
            "store=postgres server=17.6 timescaledb=inactive \
             schema=10 (newer than this build: unknown 11)"
        );
    }
}
