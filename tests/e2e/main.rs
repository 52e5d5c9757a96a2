//! End-to-end tests: the real `pentrace` binary on both of its stores, each
//! test with a store of its own: a database on the real PostgreSQL on
//! 127.0.0.1:5432 (`PENTRACE_TEST_DATABASE_URL`), or the embedded SQLite
//! file in a fresh data directory. A test body is written once and runs on
//! both, as `<file>::postgres::<test>` and `<file>::sqlite::<test>`
//! ([`both_stores!`]); the few that need what only PostgreSQL has (a private
//! cluster to stop, row locks, roles, several servers on one database) are
//! plain `#[tokio::test]`s saying why, and so are those that run no server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Instantiates test bodies (`async fn(Backend)`) once per store:
/// `postgres::<test>` and `sqlite::<test>` in the invoking module.
#[macro_export]
macro_rules! both_stores {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::helpers::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
    };
}

mod access;
mod attacks;
mod audit;
mod broker;
mod delivery;
mod embedded;
mod faults;
mod fields;
mod fleet_checks;
mod fuzz;
mod helpers;
mod identity;
mod ingest;
mod mosquitto_identity;
mod mqtt;
mod mqtt_faults;
mod pgcluster;
mod poison;
mod rejects;
mod report;
mod rss;
mod rules;
mod sim;
