//! Integration tests of `PgStore` against a real PostgreSQL.
//!
//! Each test creates its own database (`pentrace_test_<uuid>`), migrates it
//! and drops it afterwards, so tests run in parallel and never see each
//! other's rows. Server: `PENTRACE_TEST_DATABASE_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`.

// A failed expectation in a test should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod commit;
mod helpers;
mod migrate;
mod queries;
mod registry;
