//! The store conformance suite: every test body is written once against the
//! `Store` trait and runs on both implementations, as
//! `<area>::postgres::<test>` (PostgreSQL, or TimescaleDB with
//! `tests/timescaledb/run-tests.sh`) and `<area>::sqlite::<test>`. A
//! behaviour that differs between the two fails one of them.
//!
//! Each test gets a store of its own (a database, a schema or a file; see
//! `fixture.rs`), so tests never see each other's rows. PostgreSQL server:
//! `PENTRACE_TEST_DATABASE_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`, or the TimescaleDB test
//! server at `PENTRACE_TEST_TIMESCALEDB_URL`.

// A failed expectation in a test should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Instantiates test bodies (`async fn(TestStore)`) once per store:
/// `postgres::<test>` and `sqlite::<test>` in the invoking module. A body
/// runs on a migrated store unless listed as `<test>: Empty`.
#[macro_export]
macro_rules! conformance {
    ($($test:ident $(: $setup:ident)?),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let setup = $crate::conformance!(@setup $($setup)?);
                    $crate::fixture::run($crate::fixture::Backend::Postgres, setup, super::$test)
                        .await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let setup = $crate::conformance!(@setup $($setup)?);
                    $crate::fixture::run($crate::fixture::Backend::Sqlite, setup, super::$test)
                        .await;
                }
            )*
        }
    };
    (@setup) => { $crate::fixture::Setup::Migrated };
    (@setup $setup:ident) => { $crate::fixture::Setup::$setup };
}

mod audit;
mod commit;
mod credentials;
mod delivery;
mod dialects;
mod fixture;
mod helpers;
mod migrate;
mod people;
mod queries;
mod registry;
mod reports;
mod timescaledb;
