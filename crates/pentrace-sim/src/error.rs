//! What can go wrong in a simulation run.

use std::path::PathBuf;

/// Why a simulation, its setup or its verification failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An option has a value the simulator cannot use.
    #[error("invalid option: {0}")]
    Config(String),
    /// The server could not be reached at all.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// A gRPC call failed (setup, queries for verification).
    #[error("{call} failed: {status}")]
    Rpc {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    /// The server refused a pen's messages for good (e.g. an unregistered
    /// device); resending would never help.
    #[error("pen {device_id}: the server refused its messages: {reason}")]
    Refused { device_id: String, reason: String },
    /// A pen waited too long for acks of the messages it sent.
    #[error(
        "pen {device_id}: no ack progress for {timeout_s} s with {unacked} message(s) unacknowledged \
         (lowest unacked seq {lowest_seq})"
    )]
    AckTimeout {
        device_id: String,
        timeout_s: u64,
        unacked: usize,
        lowest_seq: u64,
    },
    /// Writing the ground-truth file failed.
    #[error("cannot write the ground truth to {path}: {source}")]
    Truth {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A pen's task died unexpectedly (a bug in the simulator).
    #[error("a pen task failed: {0}")]
    Task(String),
}

impl SimError {
    /// Whether the server may just be restarting: worth trying again.
    pub fn is_transient(&self) -> bool {
        match self {
            SimError::Connect { .. } => true,
            SimError::Rpc { status, .. } => status.code() == tonic::Code::Unavailable,
            _ => false,
        }
    }

    /// Wraps a failed gRPC call.
    pub(crate) fn rpc(call: &'static str, status: tonic::Status) -> SimError {
        SimError::Rpc {
            call,
            status: Box::new(status),
        }
    }
}
