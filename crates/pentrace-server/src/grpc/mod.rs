//! The gRPC services of DESIGN §3.

pub mod compliance;
pub mod fleet;
pub mod registry;
pub mod telemetry;
