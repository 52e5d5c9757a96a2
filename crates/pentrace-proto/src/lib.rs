//! The pentrace wire contract, generated from `proto/pentrace/v1`.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

/// Version 1 of the protocol (`package pentrace.v1`).
pub mod v1 {
    tonic::include_proto!("pentrace.v1");
}
