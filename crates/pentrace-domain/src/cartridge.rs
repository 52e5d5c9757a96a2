//! Cartridge identity: GTIN + serial from the UDI, or the chip UID.

use std::fmt;

use crate::udi::Udi;

/// The identity a cartridge is bound by (bind-once: docs/architecture.md,
/// "Flags").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CartridgeId {
    /// GTIN-14 and AI (21) serial from the UDI.
    Serial { gtin: String, serial: String },
    /// The chip UID (upper-case hex), which wins over the UDI when present.
    Chip(String),
}

impl CartridgeId {
    /// The identity of a cartridge as a pen reported it: the chip UID when the
    /// pen read one, else GTIN + serial when the UDI carries a serial.
    pub fn identify(udi: Option<&Udi>, chip_uid: &str) -> Option<CartridgeId> {
        let chip = chip_uid.trim();
        if !chip.is_empty() {
            return Some(CartridgeId::Chip(chip.to_ascii_uppercase()));
        }
        let udi = udi?;
        let serial = udi.serial.as_ref()?;
        Some(CartridgeId::Serial {
            gtin: udi.gtin.clone(),
            serial: serial.clone(),
        })
    }

    /// Parses the text form written by `Display` (`gtin:serial` or `chip:UID`).
    pub fn parse(text: &str) -> Option<CartridgeId> {
        let (head, tail) = text.split_once(':')?;
        if tail.is_empty() {
            return None;
        }
        if head == "chip" {
            return Some(CartridgeId::Chip(tail.to_ascii_uppercase()));
        }
        if head.len() == 14 && head.bytes().all(|b| b.is_ascii_digit()) {
            return Some(CartridgeId::Serial {
                gtin: head.to_owned(),
                serial: tail.to_owned(),
            });
        }
        None
    }
}

impl fmt::Display for CartridgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CartridgeId::Serial { gtin, serial } => write!(f, "{gtin}:{serial}"),
            CartridgeId::Chip(uid) => write!(f, "chip:{uid}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chip_uid_wins_over_serial() {
        let id = CartridgeId::identify(None, " 04a1b2 ");
        assert_eq!(id, Some(CartridgeId::Chip("04A1B2".into())));
    }

    #[test]
    fn text_form_round_trips() {
        for id in [
            CartridgeId::Serial {
                gtin: "09506000134352".into(),
                serial: "SN:1".into(),
            },
            CartridgeId::Chip("04A1".into()),
        ] {
            assert_eq!(CartridgeId::parse(&id.to_string()), Some(id));
        }
        assert_eq!(CartridgeId::parse("nonsense"), None);
        assert_eq!(CartridgeId::parse("123:abc"), None);
    }
}
