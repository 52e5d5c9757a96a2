//! Logging and tracing set-up: one place, installed once by the binary.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

/// Without `RUST_LOG`: `info`.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber; `RUST_LOG` filters (default
/// [`DEFAULT_FILTER`]).
/// Returns false when one was already installed (tests start many apps).
pub fn init(format: LogFormat) -> bool {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    installed.is_ok()
}
