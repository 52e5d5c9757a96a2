//! Pass 2: moved cartridges. A session planned as "moved" takes the
//! cartridge of another pen's session that owns a fresh cartridge and ended
//! before it started; the pen will wait, before sending, until that session
//! is fully acknowledged, so the first binding is certain.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::{CartridgeUse, MOVED_MARGIN_S, PenPlan};
use crate::profile::mix;

/// Replaces every moved placeholder with a real source, or with a fresh
/// cartridge when no session qualifies (e.g. a single pen, or a first
/// session that starts before any other ended).
pub(super) fn resolve(pens: &mut [PenPlan], seed_of: impl Fn(usize) -> u64) {
    let mut taken: Vec<(usize, usize)> = Vec::new();
    for p in 0..pens.len() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed_of(p), &[0x30_7ED]));
        for k in 0..pens[p].sessions.len() {
            if !matches!(pens[p].sessions[k].cartridge, CartridgeUse::Moved { .. }) {
                continue;
            }
            let candidates = sources(pens, p, k, &taken);
            let choice =
                (!candidates.is_empty()).then(|| candidates[rng.random_range(0..candidates.len())]);
            match choice {
                Some((sp, sk)) => {
                    taken.push((sp, sk));
                    let label = pens[sp].sessions[sk].label.clone();
                    let form = pens[p].form;
                    let session = &mut pens[p].sessions[k];
                    session.cartridge = CartridgeUse::Moved {
                        pen: sp,
                        session: sk,
                    };
                    session.udi = label.udi(form);
                    session.label = label;
                }
                None => pens[p].sessions[k].cartridge = CartridgeUse::Fresh,
            }
        }
    }
}

/// Sessions of other pens whose cartridge pen `p`'s session `k` may take:
/// fresh, owned, not used again by anyone, and ended before it starts.
fn sources(pens: &[PenPlan], p: usize, k: usize, taken: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let start = pens[p].sessions[k].started_at;
    let margin = chrono::Duration::seconds(MOVED_MARGIN_S);
    let mut out = Vec::new();
    for (sp, pen) in pens.iter().enumerate().filter(|(sp, _)| *sp != p) {
        for (sk, s) in pen.sessions.iter().enumerate() {
            let reused_by_next = pen.sessions.get(sk + 1).is_some_and(|n| {
                matches!(
                    n.cartridge,
                    CartridgeUse::Reuse { .. } | CartridgeUse::Resume { .. }
                )
            });
            if s.cartridge == CartridgeUse::Fresh
                && !reused_by_next
                && !taken.contains(&(sp, sk))
                && s.ended_at + margin <= start
            {
                out.push((sp, sk));
            }
        }
    }
    out
}
