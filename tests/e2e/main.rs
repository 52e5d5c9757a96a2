//! End-to-end tests: the real `pentrace` binary against the real PostgreSQL
//! on 127.0.0.1:5432, each test with its own database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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
