//! The audit trail's statements the other areas write through.

use async_trait::async_trait;
use pentrace_domain::audit::ChainHash;

use crate::dialect::{Conn, Dialect};
use crate::{AuditDraft, StoreResult};

/// The audit trail's statements.
#[async_trait]
pub(crate) trait AuditSql: Dialect {
    /// Appends the drafts to their clinics' chains inside the caller's
    /// transaction; each draft's hash, in the order given.
    async fn append(c: &mut Conn<Self>, drafts: &[AuditDraft]) -> StoreResult<Vec<ChainHash>>;
}
