//! Scratch PostgreSQL databases, one per run, dropped afterwards.

use anyhow::Context;
use sqlx::{Connection, PgConnection};

/// A database created for one run; call [`ScratchDb::drop_now`] when done.
#[derive(Debug)]
pub struct ScratchDb {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl ScratchDb {
    /// Creates `pentrace_bench_<random>` on the server of `admin_url`.
    pub async fn create(admin_url: &str) -> anyhow::Result<ScratchDb> {
        let name = format!("pentrace_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin_url)
            .await
            .context("cannot connect to PostgreSQL (--database-url)")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        conn.close().await.ok();
        Ok(ScratchDb {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        })
    }

    /// Drops the database, closing whatever connections are left.
    pub async fn drop_now(self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .with_context(|| format!("dropping database {}", self.name))?;
        conn.close().await.ok();
        Ok(())
    }
}

/// `url` with its database (the path) replaced by `name`; the query string
/// is kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base
        .get(authority_start..)
        .and_then(|rest| rest.find('/'))
        .map_or(base.len(), |i| authority_start + i);
    let head = base.get(..path_start).unwrap_or(base);
    match query {
        Some(q) => format!("{head}/{name}?{q}"),
        None => format!("{head}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_only_the_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
