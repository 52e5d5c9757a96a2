//! Integration tests of `PgStore` against a real PostgreSQL, and the same
//! tests against TimescaleDB (`tests/timescaledb/run-tests.sh`).
//!
//! Each test creates its own database (`pentrace_test_<uuid>`; a schema on
//! the TimescaleDB test server), migrates it and drops it afterwards, so
//! tests never see each other's rows. Server: `PENTRACE_TEST_DATABASE_URL`,
//! by default `postgres://postgres@127.0.0.1:5432/postgres`, or the
//! TimescaleDB test server at `PENTRACE_TEST_TIMESCALEDB_URL` (see
//! `server.rs`).

// A failed expectation in a test should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod commit;
mod helpers;
mod migrate;
mod queries;
mod registry;
mod server;
mod timescaledb;
