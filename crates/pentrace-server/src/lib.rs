//! `pentrace serve`: the gRPC services, the HTTP endpoints, configuration
//! and telemetry around the ingest pipeline.

pub mod app;
pub mod audit_trail;
pub mod auth;
pub mod config;
pub mod convert;
pub mod credentials;
pub mod device_auth;
pub mod downlink;
pub mod fleet_checks;
pub mod grpc;
pub mod grpc_status;
pub mod http;
pub mod mqtt;
pub mod pki;
pub mod report;
pub mod storage;
pub mod telemetry;
pub mod tls;

pub use app::{AppError, Application, Ports};
pub use config::Config;
