//! Store errors and validation failures as gRPC statuses, for the services
//! under `grpc/` and the bearer-token check in `auth.rs` alike.

use pentrace_store::StoreError;
use tonic::Status;

/// The one place store errors become gRPC statuses. The full cause chain is
/// logged here, once, for errors the caller cannot fix.
pub fn status(e: StoreError) -> Status {
    match &e {
        StoreError::NotFound(what) => Status::not_found(format!("{what} not found")),
        StoreError::Invalid(why) => Status::invalid_argument(why.clone()),
        StoreError::Rejected(_) => Status::invalid_argument(e.to_string()),
        StoreError::Unavailable(_) => {
            tracing::warn!(error = %error_chain(&e), "store unavailable");
            Status::unavailable("the database is unavailable; retry later")
        }
        StoreError::Migrate(_) | StoreError::Other(_) => {
            tracing::error!(error = %error_chain(&e), "store error");
            Status::internal("internal error")
        }
    }
}

/// `error: cause: cause…` on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// An invalid-argument status from a validation message.
pub fn invalid(why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(why.to_string())
}
