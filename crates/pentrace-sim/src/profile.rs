//! Realistic stroke samples: depth settings by treatment area
//! (docs/architecture.md, "Domain facts"), 50–150 strokes per second, 10
//! samples of 100 ms per batch.

use pentrace_domain::message::{SkinThickness, TreatmentArea};
use pentrace_domain::policy::{DEFAULT_MAX_DEPTH_UM, area_guidance_um};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// Samples per batch.
pub const SAMPLES_PER_BATCH: u32 = 10;
/// Length of one sample, milliseconds.
pub const SAMPLE_MS: u32 = 100;
/// Length of one batch, milliseconds.
pub const BATCH_MS: u32 = SAMPLES_PER_BATCH * SAMPLE_MS;
/// Depth dial steps of the simulated pens, micrometres.
const DEPTH_STEP_UM: u32 = 100;
/// Batches during which the operator keeps one depth setting.
const BATCHES_PER_SETTING: u32 = 10;
/// Range of a depth excursion (above the 2000 µm default limit).
const EXCESS_DEPTH_UM: (u32, u32) = (2100, 2500);

/// One stroke sample (mirrors the wire's `StrokeSample`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub offset_ms: u32,
    pub strokes: u32,
    pub depth_um: u32,
    pub speed_hz: u32,
}

/// The lower end of the area's depth guidance (docs/architecture.md, "Domain
/// facts"), micrometres; the upper end is the domain's [`area_guidance_um`].
pub fn area_floor_um(area: TreatmentArea, skin: SkinThickness) -> u32 {
    use SkinThickness::{Thick, Thin};
    use TreatmentArea::*;
    // As the domain's guidance: an unknown thickness is judged as thin.
    let skin = if skin == Thick { Thick } else { Thin };
    match (area, skin) {
        (Forehead, Thin) => 250,
        (Forehead, Thick) => 500,
        (Nose, Thin) => 250,
        (Nose, Thick) => 500,
        (Periorbital, _) => 250,
        (Cheeks, Thin) => 500,
        (Cheeks, Thick) => 1000,
        (UpperLip, _) => 250,
        (Scars, Thin) => 1000,
        (Scars, Thick) => 1500,
        (StretchMarks, _) => 1500,
        (Scalp, _) => 500,
        (Unspecified | Unknown(_), _) | (_, SkinThickness::Unknown(_)) => 250,
    }
}

/// The depth settings an operator may dial for the area: from the floor in
/// dial steps, never above the area's guidance nor the default limit, so an
/// ordinary session raises no depth flag.
pub fn depth_settings(area: TreatmentArea, skin: SkinThickness) -> Vec<u32> {
    let ceiling = area_guidance_um(area, skin)
        .unwrap_or(DEFAULT_MAX_DEPTH_UM)
        .min(DEFAULT_MAX_DEPTH_UM);
    let floor = area_floor_um(area, skin).min(ceiling);
    (0..)
        .map(|i| floor + i * DEPTH_STEP_UM)
        .take_while(|d| *d <= ceiling)
        .collect()
}

/// What a session's batches are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionProfile {
    pub area: TreatmentArea,
    pub skin: SkinThickness,
    /// Nominal oscillation frequency, 50–150 Hz.
    pub speed_hz: u32,
    /// Seed of this session's sample values.
    pub seed: u64,
    /// The batch with deeper-than-allowed samples (depth fault), if any.
    pub excursion_batch: Option<u32>,
}

/// SplitMix64: derives independent seeds from a seed and a few numbers.
pub fn mix(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(seed, |acc, p| {
        let mut z = acc ^ p.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

impl SessionProfile {
    /// The depth dialled during batch `b`: the operator changes it every
    /// few batches, within the area's settings.
    fn setting(&self, batch: u32) -> u32 {
        let options = depth_settings(self.area, self.skin);
        let segment = u64::from(batch / BATCHES_PER_SETTING);
        let pick = mix(self.seed, &[0xD, segment]) as usize % options.len().max(1);
        options.get(pick).copied().unwrap_or(DEPTH_STEP_UM)
    }

    /// The samples of batch `b` (deterministic for the session's seed).
    pub fn batch(&self, batch: u32) -> Vec<Sample> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(self.seed, &[0xB, u64::from(batch)]));
        let depth = self.setting(batch);
        let excess = self.excess_samples(batch, &mut rng);
        (0..SAMPLES_PER_BATCH)
            .map(|i| {
                let speed_hz = (self.speed_hz + rng.random_range(0..=4))
                    .saturating_sub(2)
                    .clamp(50, 150);
                // strokes in 100 ms at speed_hz, with the counter's jitter
                let strokes = (speed_hz / 10 + rng.random_range(0..=2))
                    .saturating_sub(1)
                    .clamp(5, 15);
                let depth_um = if excess.contains(&i) {
                    rng.random_range(EXCESS_DEPTH_UM.0 / 50..=EXCESS_DEPTH_UM.1 / 50) * 50
                } else {
                    depth
                };
                Sample {
                    offset_ms: i * SAMPLE_MS,
                    strokes,
                    depth_um,
                    speed_hz,
                }
            })
            .collect()
    }

    /// Which samples of the batch go too deep: 1-3 of them in the
    /// excursion batch, none elsewhere.
    fn excess_samples(&self, batch: u32, rng: &mut Xoshiro256PlusPlus) -> Vec<u32> {
        if self.excursion_batch != Some(batch) {
            return Vec::new();
        }
        let count = rng.random_range(1..=3);
        let first = rng.random_range(0..=SAMPLES_PER_BATCH - count);
        (first..first + count).collect()
    }

    /// Strokes of the whole session (what the pen reports at its end).
    pub fn total_strokes(&self, batches: u32) -> u64 {
        (0..batches)
            .flat_map(|b| self.batch(b))
            .map(|s| u64::from(s.strokes))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(area: TreatmentArea, skin: SkinThickness, excursion: Option<u32>) -> SessionProfile {
        SessionProfile {
            area,
            skin,
            speed_hz: 120,
            seed: 7,
            excursion_batch: excursion,
        }
    }

    #[test]
    fn every_area_has_settings_within_its_guidance() {
        for area in TreatmentArea::ALL {
            for skin in [SkinThickness::Thin, SkinThickness::Thick] {
                let settings = depth_settings(area, skin);
                let guidance = area_guidance_um(area, skin).expect("guidance");
                assert!(!settings.is_empty(), "{area:?} {skin:?}");
                assert!(settings.iter().all(|d| *d <= guidance && *d > 0));
            }
        }
    }

    #[test]
    fn ordinary_batches_stay_within_guidance_and_stroke_rates() {
        for area in TreatmentArea::ALL {
            for skin in [SkinThickness::Thin, SkinThickness::Thick] {
                let p = profile(area, skin, None);
                let guidance = area_guidance_um(area, skin).expect("guidance");
                for b in 0..30 {
                    let samples = p.batch(b);
                    assert_eq!(samples.len(), 10);
                    for (i, s) in samples.iter().enumerate() {
                        assert_eq!(s.offset_ms, i as u32 * 100);
                        assert!(s.depth_um <= guidance, "{area:?} {skin:?} {s:?}");
                        assert!((5..=15).contains(&s.strokes), "{s:?}");
                        assert!((50..=150).contains(&s.speed_hz), "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_excursion_batch_goes_above_the_limit() {
        let p = profile(TreatmentArea::Cheeks, SkinThickness::Thick, Some(3));
        let deepest = |b| p.batch(b).iter().map(|s| s.depth_um).max().unwrap_or(0);
        assert!((2100..=2500).contains(&deepest(3)));
        assert!(deepest(2) <= 2000 && deepest(4) <= 2000);
    }

    #[test]
    fn batches_are_reproducible() {
        let p = profile(TreatmentArea::Scalp, SkinThickness::Thin, Some(1));
        assert_eq!(p.batch(1), p.batch(1));
        assert_eq!(p.total_strokes(5), p.total_strokes(5));
    }
}
