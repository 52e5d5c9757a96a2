//! The gRPC services (docs/architecture.md, "Wire protocol").

pub mod compliance;
pub mod fleet;
pub mod registry;
pub mod telemetry;
