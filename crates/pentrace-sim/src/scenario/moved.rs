//! Pass 2: moved cartridges. A session planned as "moved" takes the
//! cartridge of another pen's session that owns a fresh cartridge and ended
//! before it started; the pen will wait, before sending, until that session
//! is fully acknowledged, so the first binding is certain.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::{CartridgeUse, MOVED_MARGIN_S, PenPlan};
use crate::profile::mix;

/// Replaces every moved placeholder with a real source, or with a fresh
/// cartridge when no session qualifies (e.g. a single pen, or a first
/// session that starts before any other ended).
///
/// Sources are kept sorted by end time, so the ones that ended early enough
/// are a prefix; a source is drawn from it at random and redrawn while it is
/// taken or the pen's own. Scanning every session for every moved one was
/// cubic and took minutes for a 10-minute load (a profile of `pentrace bench
/// --duration 600`: 87% of the load generator's CPU).
pub(super) fn resolve(pens: &mut [PenPlan], seed_of: impl Fn(usize) -> u64) {
    let margin = chrono::Duration::seconds(MOVED_MARGIN_S);
    let pool = source_pool(pens);
    let mut taken: HashSet<(usize, usize)> = HashSet::new();
    for p in 0..pens.len() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed_of(p), &[0x30_7ED]));
        for k in 0..pens[p].sessions.len() {
            if !matches!(pens[p].sessions[k].cartridge, CartridgeUse::Moved { .. }) {
                continue;
            }
            let start = pens[p].sessions[k].started_at;
            let ended = pool.partition_point(|(end, _)| *end + margin <= start);
            let usable = |c: &(usize, usize)| c.0 != p && !taken.contains(c);
            let choice = draw(&pool[..ended], &mut rng, usable);
            match choice {
                Some((sp, sk)) => {
                    taken.insert((sp, sk));
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

/// Sessions whose cartridge another pen may take: fresh, owned, of the run
/// (not a backlog), not used again by their own pen; by end time.
fn source_pool(pens: &[PenPlan]) -> Vec<(DateTime<Utc>, (usize, usize))> {
    let mut pool = Vec::new();
    for (sp, pen) in pens.iter().enumerate() {
        let used_again = used_again(pen);
        for (sk, s) in pen.sessions.iter().enumerate() {
            if s.lends_cartridge() && !used_again.contains(&sk) {
                pool.push((s.ended_at, (sp, sk)));
            }
        }
    }
    pool.sort();
    pool
}

/// The sessions whose cartridge another session of the same pen takes.
fn used_again(pen: &PenPlan) -> HashSet<usize> {
    pen.sessions
        .iter()
        .filter_map(|s| match s.cartridge {
            CartridgeUse::Reuse { of_session }
            | CartridgeUse::Resume { of_session }
            | CartridgeUse::Swap { of_session, .. } => Some(of_session),
            _ => None,
        })
        .collect()
}

/// A random usable entry: a few random draws, then (when most are not
/// usable) a uniform pick among all usable ones.
fn draw(
    pool: &[(DateTime<Utc>, (usize, usize))],
    rng: &mut Xoshiro256PlusPlus,
    usable: impl Fn(&(usize, usize)) -> bool,
) -> Option<(usize, usize)> {
    if pool.is_empty() {
        return None;
    }
    for _ in 0..16 {
        let (_, c) = pool[rng.random_range(0..pool.len())];
        if usable(&c) {
            return Some(c);
        }
    }
    let all: Vec<(usize, usize)> = pool.iter().map(|(_, c)| *c).filter(&usable).collect();
    (!all.is_empty()).then(|| all[rng.random_range(0..all.len())])
}
