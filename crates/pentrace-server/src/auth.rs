//! Bearer tokens for the Fleet, Compliance and Registry services, and what
//! each role may see and do (docs/architecture.md, "People and tenancy").
//! Every query is scoped to the caller's clinics; an admin's scope is every
//! clinic.

use std::sync::Arc;

use pentrace_domain::audit::Actor;
use pentrace_store::{Role, Store, User};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::grpc_status::status;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: User,
}

impl Caller {
    /// The actor audit events name.
    pub fn actor(&self) -> Actor {
        Actor::User(self.user.id.to_string())
    }

    pub fn is_admin(&self) -> bool {
        self.user.role == Role::Admin
    }

    /// Whether the caller may see the clinic's data.
    pub fn sees(&self, clinic_id: &str) -> bool {
        self.is_admin() || self.user.clinics.iter().any(|c| c == clinic_id)
    }

    /// The clinics a query is limited to: `None` = every clinic (admin, no
    /// clinic asked for). A clinic the caller may not see gives an empty
    /// scope, so the query returns nothing.
    pub fn scope(&self, requested: &str) -> Option<Vec<String>> {
        match (requested.is_empty(), self.is_admin()) {
            (true, true) => None,
            (true, false) => Some(self.user.clinics.clone()),
            (false, _) if self.sees(requested) => Some(vec![requested.to_owned()]),
            (false, _) => Some(Vec::new()),
        }
    }

    /// Refuses callers whose role is not among `roles`.
    pub fn require(&self, roles: &[Role], what: &str) -> Result<(), Status> {
        if roles.contains(&self.user.role) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "role {} may not {what}",
            self.user.role.as_str()
        )))
    }
}

/// SHA-256 of a token: the only form in which tokens are stored.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Resolves bearer tokens to callers.
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Authenticator { store }
    }

    /// The caller of a request, from `authorization: Bearer <token>`.
    pub async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing bearer token (authorization: Bearer …)")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let user = self
            .store
            .user_by_token(&token_hash(token))
            .await
            .map_err(status)?;
        let user = user.ok_or_else(|| Status::unauthenticated("unknown or revoked token"))?;
        Ok(Caller { user })
    }
}
