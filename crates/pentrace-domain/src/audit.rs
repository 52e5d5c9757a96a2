//! Audit-chain primitives (docs/architecture.md, "Audit trail"): a
//! canonical, versioned byte encoding of an audit event and the chain hash
//! `SHA-256(prev_hash ‖ encoding)`.
//!
//! The encoding is length-prefixed field by field, so no two different events
//! encode to the same bytes (no separator can be forged inside a value), and
//! it starts with a version byte so a future encoding can coexist with stored
//! chains. Times are encoded at microsecond precision, the precision
//! PostgreSQL and SQLite keep.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Version of the encoding written by [`encode`].
pub const ENCODING_VERSION: u8 = 1;

/// `prev_hash` of the first event of every chain.
pub const GENESIS: ChainHash = [0; 32];

/// A SHA-256 chain hash.
pub type ChainHash = [u8; 32];

/// Who caused an audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A named person (user id).
    User(String),
    /// A device (device id).
    Device(String),
    /// pentrace itself (rules, schedules).
    System,
}

impl Actor {
    /// `(kind, id)` as stored.
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            Actor::User(id) => ("user", id),
            Actor::Device(id) => ("device", id),
            Actor::System => ("system", ""),
        }
    }

    /// Rebuilds an actor from its stored parts.
    pub fn from_parts(kind: &str, id: &str) -> Option<Actor> {
        match kind {
            "user" => Some(Actor::User(id.to_owned())),
            "device" => Some(Actor::Device(id.to_owned())),
            "system" => Some(Actor::System),
            _ => None,
        }
    }
}

/// One entry of a clinic's audit chain: who, what, when, why.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// The chain the event belongs to.
    pub clinic_id: String,
    /// Position in the chain, from 1, without holes.
    pub position: u64,
    /// Server UTC time.
    pub at: DateTime<Utc>,
    pub actor: Actor,
    /// What happened, e.g. `session.started`, `flag.acknowledged`.
    pub action: String,
    /// Kind of the subject, e.g. `session`, `flag`, `lot`.
    pub subject_type: String,
    pub subject_id: String,
    pub old_value: Option<Value>,
    pub new_value: Option<Value>,
    /// Why, where a person acted.
    pub reason: Option<String>,
}

/// The canonical bytes of an event (version [`ENCODING_VERSION`]).
pub fn encode(event: &AuditEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"PTA");
    out.push(ENCODING_VERSION);
    let (actor_kind, actor_id) = event.actor.parts();
    field(&mut out, event.clinic_id.as_bytes());
    field(&mut out, &event.position.to_be_bytes());
    field(
        &mut out,
        event
            .at
            .to_rfc3339_opts(SecondsFormat::Micros, true)
            .as_bytes(),
    );
    field(&mut out, actor_kind.as_bytes());
    field(&mut out, actor_id.as_bytes());
    field(&mut out, event.action.as_bytes());
    field(&mut out, event.subject_type.as_bytes());
    field(&mut out, event.subject_id.as_bytes());
    optional(
        &mut out,
        event.old_value.as_ref().map(canonical_json).as_deref(),
    );
    optional(
        &mut out,
        event.new_value.as_ref().map(canonical_json).as_deref(),
    );
    optional(&mut out, event.reason.as_ref().map(String::as_bytes));
    out
}

/// `SHA-256(prev_hash ‖ encode(event))`.
pub fn chain_hash(prev_hash: &ChainHash, event: &AuditEvent) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(encode(event));
    hasher.finalize().into()
}

/// JSON with object keys sorted (serde_json's map is ordered by key unless
/// `preserve_order` is enabled, which this workspace never does).
fn canonical_json(value: &Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Values above 4 GiB cannot occur: events are built from bounded inputs.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            field(out, b);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn event() -> AuditEvent {
        AuditEvent {
            clinic_id: "clinic-a".into(),
            position: 7,
            at: Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap(),
            actor: Actor::User("u-1".into()),
            action: "flag.acknowledged".into(),
            subject_type: "flag".into(),
            subject_id: "f-1".into(),
            old_value: Some(json!({"state": "open"})),
            new_value: Some(json!({"state": "acknowledged", "b": 1, "a": 2})),
            reason: Some("checked the cartridge".into()),
        }
    }

    type Mutation = (&'static str, Box<dyn Fn(&mut AuditEvent)>);

    /// Every way of changing one field, each applied alone.
    fn mutations() -> Vec<Mutation> {
        vec![
            ("clinic", Box::new(|e| e.clinic_id.push('x'))),
            ("position", Box::new(|e| e.position += 1)),
            (
                "at",
                Box::new(|e| e.at += chrono::Duration::microseconds(1)),
            ),
            (
                "actor kind",
                Box::new(|e| e.actor = Actor::Device("u-1".into())),
            ),
            (
                "actor id",
                Box::new(|e| e.actor = Actor::User("u-2".into())),
            ),
            ("actor system", Box::new(|e| e.actor = Actor::System)),
            ("action", Box::new(|e| e.action = "flag.resolved".into())),
            (
                "subject type",
                Box::new(|e| e.subject_type = "session".into()),
            ),
            ("subject id", Box::new(|e| e.subject_id = "f-2".into())),
            (
                "old value",
                Box::new(|e| e.old_value = Some(json!({"state": "resolved"}))),
            ),
            ("old value absent", Box::new(|e| e.old_value = None)),
            (
                "new value",
                Box::new(|e| e.new_value = Some(json!({"state": "open"}))),
            ),
            (
                "new value null",
                Box::new(|e| e.new_value = Some(Value::Null)),
            ),
            (
                "reason",
                Box::new(|e| e.reason = Some("checked the cartridgE".into())),
            ),
            ("reason empty", Box::new(|e| e.reason = Some(String::new()))),
            ("reason absent", Box::new(|e| e.reason = None)),
        ]
    }

    #[test]
    fn any_change_of_any_field_changes_the_hash() {
        let base = chain_hash(&GENESIS, &event());
        for (name, mutate) in mutations() {
            let mut changed = event();
            mutate(&mut changed);
            assert_ne!(
                chain_hash(&GENESIS, &changed),
                base,
                "changing {name} kept the hash"
            );
        }
    }

    #[test]
    fn the_previous_hash_is_part_of_the_hash() {
        let mut prev = GENESIS;
        prev[31] = 1;
        assert_ne!(chain_hash(&prev, &event()), chain_hash(&GENESIS, &event()));
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_encoding() {
        let mut a = event();
        a.subject_type = "fla".into();
        a.subject_id = "gf-1".into();
        assert_ne!(encode(&a), encode(&event()));
    }

    #[test]
    fn json_key_order_does_not_matter() {
        let mut a = event();
        a.new_value =
            Some(serde_json::from_str(r#"{"a":2,"b":1,"state":"acknowledged"}"#).unwrap());
        assert_eq!(chain_hash(&GENESIS, &a), chain_hash(&GENESIS, &event()));
    }

    #[test]
    fn encoding_is_stable() {
        // Pinned: a change here breaks every stored chain and needs a new
        // ENCODING_VERSION instead.
        let hash = hex::encode(chain_hash(&GENESIS, &event()));
        assert_eq!(
            hash,
            "15649e1c91ba09078648273e1016756d0ef56025f25e3de1f266f95c6c99fd10"
        );
        assert_eq!(encode(&event())[..4], *b"PTA\x01");
    }
}

/// Why a chain is broken at an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokenLink {
    #[error(
        "position {found} follows position {expected_previous}: an event is missing or out of order"
    )]
    Position { expected_previous: u64, found: u64 },
    #[error("stored prev_hash does not match the previous event's hash")]
    PrevHash,
    #[error("stored hash does not match the event's content (the event was changed)")]
    Hash,
}

/// Walks one clinic's chain event by event in constant memory: each event
/// must follow the previous one, name its hash, and hash to what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainVerifier {
    position: u64,
    head: ChainHash,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            position: 0,
            head: GENESIS,
        }
    }
}

impl ChainVerifier {
    /// Checks the next stored event; on success it becomes the head.
    pub fn check(
        &mut self,
        event: &AuditEvent,
        stored_prev: &ChainHash,
        stored_hash: &ChainHash,
    ) -> Result<(), BrokenLink> {
        if Some(event.position) != self.position.checked_add(1) {
            return Err(BrokenLink::Position {
                expected_previous: self.position,
                found: event.position,
            });
        }
        if *stored_prev != self.head {
            return Err(BrokenLink::PrevHash);
        }
        if chain_hash(&self.head, event) != *stored_hash {
            return Err(BrokenLink::Hash);
        }
        self.position = event.position;
        self.head = *stored_hash;
        Ok(())
    }

    /// Position of the last verified event (0 = none).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Hash of the last verified event.
    pub fn head(&self) -> ChainHash {
        self.head
    }
}

#[cfg(test)]
mod verifier_tests {
    #![allow(clippy::unwrap_used)]
    use chrono::TimeZone;

    use super::*;

    fn chain(n: u64) -> Vec<(AuditEvent, ChainHash, ChainHash)> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|position| {
                let e = AuditEvent {
                    clinic_id: "c".into(),
                    position,
                    at: Utc
                        .timestamp_opt(1_800_000_000 + position as i64, 0)
                        .unwrap(),
                    actor: Actor::System,
                    action: "flag.raised".into(),
                    subject_type: "flag".into(),
                    subject_id: position.to_string(),
                    old_value: None,
                    new_value: None,
                    reason: None,
                };
                let hash = chain_hash(&prev, &e);
                let link = (e, prev, hash);
                prev = hash;
                link
            })
            .collect()
    }

    fn verify(links: &[(AuditEvent, ChainHash, ChainHash)]) -> Result<u64, (u64, BrokenLink)> {
        let mut v = ChainVerifier::default();
        for (e, prev, hash) in links {
            v.check(e, prev, hash).map_err(|b| (e.position, b))?;
        }
        Ok(v.position())
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
    }

    #[test]
    fn a_changed_field_is_the_first_broken_link() {
        let mut links = chain(5);
        links[2].0.subject_id = "x".into();
        assert_eq!(verify(&links), Err((3, BrokenLink::Hash)));
    }

    #[test]
    fn a_deleted_event_is_found() {
        let mut links = chain(5);
        links.remove(2);
        assert!(matches!(
            verify(&links),
            Err((4, BrokenLink::Position { .. }))
        ));
    }

    #[test]
    fn swapped_events_are_found() {
        let mut links = chain(5);
        links.swap(1, 2);
        assert!(matches!(
            verify(&links),
            Err((3, BrokenLink::Position { .. }))
        ));
    }
}
