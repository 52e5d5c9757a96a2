//! The store's engine: every piece of orchestration, written once and
//! generic over a [`Dialect`](crate::dialect::Dialect) — the order of a
//! commit and its conflict checks, registry changes and their audit events,
//! the flag lifecycle, people and tokens, reports and queries. The SQL it
//! runs is the dialect's, through the per-area traits defined here next to
//! the code that calls them (`RegistrySql`, ...).

pub(crate) mod audit;
pub(crate) mod commit;
pub(crate) mod credentials;
pub(crate) mod facts;
pub(crate) mod flags;
pub(crate) mod people;
pub(crate) mod quarantine;
pub(crate) mod queries;
pub(crate) mod registry;
pub(crate) mod status;
