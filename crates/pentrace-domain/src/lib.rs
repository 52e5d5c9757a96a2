//! pentrace's pure core: the types of the domain, GS1 UDI parsing, the flag
//! rules and the audit-chain hashing. No I/O, no async, no clock: "now" is
//! always a parameter.

pub mod audit;
pub mod cartridge;
pub mod checkpoint;
pub mod flag;
pub mod gaps;
pub mod message;
pub mod policy;
pub mod rules;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod udi;

pub use cartridge::CartridgeId;
pub use flag::{FlagKind, Severity, Verdict};
pub use udi::{Udi, UdiError};
