//! `proptest` strategies over the whole input space of the rules: any device
//! message the domain type can hold (times over chrono's full range, counts
//! up to `u32::MAX`, strings with control characters and non-ASCII), any
//! facts and any policy. For property tests here and in dependent crates
//! (feature `testing`).

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use proptest::prelude::*;

use crate::message::{
    Body, CartridgeRef, DeviceMessage, EndReason, Heartbeat, SessionContext, SessionEnd,
    SessionStart, SkinThickness, StrokeBatch, StrokeSample, TimeFault, TimeField, TreatmentArea,
    WireTime,
};
use crate::policy::Policy;
use crate::rules::{Binding, CartridgeRelation, Facts, LotFacts, ProductFacts, SessionFacts};

/// A GTIN-14 with a valid check digit, shared by the UDIs below.
const GTIN: &str = "09506000134352";

/// Any time chrono can hold, biased towards the edges and the present.
pub fn any_time() -> BoxedStrategy<DateTime<Utc>> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    let at = |(s, n): (i64, u32)| DateTime::from_timestamp(s, n);
    prop_oneof![
        (min..=max, 0u32..1_000_000_000).prop_filter_map("outside chrono", at),
        (1_600_000_000i64..2_000_000_000, 0u32..1_000_000_000).prop_filter_map("outside", at),
        Just(DateTime::<Utc>::MIN_UTC),
        Just(DateTime::<Utc>::MAX_UTC),
        Just(crate::time::DEVICE_TIME_MIN),
        Just(crate::time::DEVICE_TIME_MAX),
    ]
    .boxed()
}

/// Any date chrono can hold.
pub fn any_date() -> BoxedStrategy<NaiveDate> {
    prop_oneof![
        any::<i32>().prop_filter_map("outside chrono", NaiveDate::from_num_days_from_ce_opt),
        (700_000i32..800_000).prop_filter_map("outside", NaiveDate::from_num_days_from_ce_opt),
        Just(NaiveDate::MIN),
        Just(NaiveDate::MAX),
    ]
    .boxed()
}

/// Any `u32`, biased towards small values and the edges.
pub fn any_u32() -> BoxedStrategy<u32> {
    prop_oneof![
        any::<u32>(),
        0u32..3000,
        Just(u32::MAX),
        Just(i32::MAX as u32 + 1)
    ]
    .boxed()
}

/// Any `u64`, biased towards small values and the edges.
pub fn any_u64() -> BoxedStrategy<u64> {
    prop_oneof![
        any::<u64>(),
        0u64..100_000,
        Just(u64::MAX),
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
    ]
    .boxed()
}

/// Any text: arbitrary characters (control characters, NUL, GS, non-ASCII,
/// U+FFFD) as well as printable ASCII.
pub fn any_text() -> BoxedStrategy<String> {
    let odd = prop::sample::select(vec![
        '\0', '\u{1d}', '\u{7f}', '\n', '\u{fffd}', 'é', '(', ')', '/', '+', '#', '%', '0', '1',
    ]);
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
        prop::collection::vec(odd, 0..40).prop_map(String::from_iter),
        "[ -~]{0,40}",
    ]
    .boxed()
}

/// UDIs that parse (with and without a serial) and any text.
pub fn any_udi_text() -> BoxedStrategy<String> {
    prop_oneof![
        "[A-Z0-9]{1,20}".prop_map(|serial| format!("(01){GTIN}(17)301231(10)LOT1(21){serial}")),
        Just(format!("(01){GTIN}(10)LOT1")),
        Just(format!("(01){GTIN}(17)000000(21)X")),
        Just(String::new()),
        any_text(),
        any_text().prop_map(|junk| format!("(01){GTIN}(21){junk}")),
        any_text().prop_map(|junk| format!("https://id.example/{junk}/01/{GTIN}/21/SN")),
    ]
    .boxed()
}

fn any_session_id() -> BoxedStrategy<String> {
    prop_oneof![
        Just("2f1c8a56-6f0a-4f3e-9a57-2b1f0c6d7e01".to_owned()),
        Just("s1".to_owned()),
        any_text(),
    ]
    .boxed()
}

fn any_device_id() -> BoxedStrategy<String> {
    prop_oneof![
        Just("pen-1".to_owned()),
        Just("pen-2".to_owned()),
        any_text()
    ]
    .boxed()
}

/// Any treatment area, including unknown wire values.
pub fn any_area() -> BoxedStrategy<TreatmentArea> {
    prop_oneof![
        prop::sample::select(TreatmentArea::ALL.to_vec()),
        Just(TreatmentArea::Unspecified),
        any::<i32>().prop_map(TreatmentArea::Unknown),
    ]
    .boxed()
}

fn any_skin() -> BoxedStrategy<SkinThickness> {
    prop_oneof![
        Just(SkinThickness::Thin),
        Just(SkinThickness::Thick),
        any::<i32>().prop_map(SkinThickness::Unknown),
    ]
    .boxed()
}

/// Any session context.
pub fn any_context() -> BoxedStrategy<SessionContext> {
    (
        any_session_id(),
        prop::option::of(any_text()),
        any_udi_text(),
        prop_oneof![Just(String::new()), Just("04A1B2".to_owned()), any_text()],
        any_area(),
        any_skin(),
        prop::option::of(any_text()),
        any_time(),
    )
        .prop_map(
            |(session_id, raw_session_id, udi, chip_uid, area, skin, patient_ref, started_at)| {
                SessionContext {
                    session_id,
                    raw_session_id,
                    cartridge: CartridgeRef { udi, chip_uid },
                    area,
                    skin,
                    patient_ref,
                    started_at,
                }
            },
        )
        .boxed()
}

/// Any sample.
pub fn any_sample() -> BoxedStrategy<StrokeSample> {
    (any_u32(), any_u32(), any_u32(), any_u32())
        .prop_map(|(offset_ms, strokes, depth_um, speed_hz)| StrokeSample {
            offset_ms,
            strokes,
            depth_um,
            speed_hz,
        })
        .boxed()
}

fn any_end_reason() -> BoxedStrategy<EndReason> {
    prop_oneof![
        Just(EndReason::Unspecified),
        Just(EndReason::Completed),
        Just(EndReason::Aborted),
        Just(EndReason::CartridgeRejected),
        Just(EndReason::LowBattery),
        any::<i32>().prop_map(EndReason::Unknown),
    ]
    .boxed()
}

/// Any message body, batches of up to 300 samples.
pub fn any_body() -> BoxedStrategy<Body> {
    prop_oneof![
        (any_context(), any_text(), any_text()).prop_map(|(session, operator_ref, firmware)| {
            Body::SessionStart(SessionStart {
                session,
                operator_ref,
                firmware,
            })
        }),
        (
            any_context(),
            any_time(),
            prop::collection::vec(any_sample(), 0..300)
        )
            .prop_map(
                |(session, started_at, samples)| Body::StrokeBatch(StrokeBatch {
                    session,
                    started_at,
                    samples
                })
            ),
        (any_context(), any_time(), any_u64(), any_end_reason()).prop_map(
            |(session, ended_at, total_strokes, reason)| Body::SessionEnd(SessionEnd {
                session,
                ended_at,
                total_strokes,
                reason,
            })
        ),
        (any_u32(), any_text()).prop_map(|(battery_pct, firmware)| Body::Heartbeat(Heartbeat {
            battery_pct,
            firmware
        })),
    ]
    .boxed()
}

fn any_time_fault() -> BoxedStrategy<TimeFault> {
    let field = prop::sample::select(vec![
        TimeField::SentAt,
        TimeField::SessionStartedAt,
        TimeField::BatchStartedAt,
        TimeField::SessionEndedAt,
    ]);
    let raw = prop::option::of(
        (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| WireTime { seconds, nanos }),
    );
    (field, raw, any_time())
        .prop_map(|(field, raw, used)| TimeFault { field, raw, used })
        .boxed()
}

/// Any device message.
pub fn any_message() -> BoxedStrategy<DeviceMessage> {
    (
        any_device_id(),
        any_u64(),
        any_time(),
        any_body(),
        prop::collection::vec(any_time_fault(), 0..3),
    )
        .prop_map(
            |(device_id, seq, sent_at, body, time_faults)| DeviceMessage {
                device_id,
                seq,
                sent_at,
                body,
                time_faults,
            },
        )
        .boxed()
}

fn any_relation() -> BoxedStrategy<CartridgeRelation> {
    prop_oneof![
        Just(CartridgeRelation::Owner),
        Just(CartridgeRelation::Unidentified),
        any_session_id()
            .prop_map(|owner_session_id| CartridgeRelation::Resumed { owner_session_id }),
        any_session_id()
            .prop_map(|owner_session_id| CartridgeRelation::Reused { owner_session_id }),
    ]
    .boxed()
}

/// Any binding of a cartridge.
/// One of two clinics: the same one as often as another.
pub fn any_clinic() -> BoxedStrategy<String> {
    prop::sample::select(vec!["clinic-a".to_owned(), "clinic-b".to_owned()]).boxed()
}

pub fn any_binding() -> BoxedStrategy<Binding> {
    (
        any_session_id(),
        any_device_id(),
        any_clinic(),
        prop::option::of(any_text()),
        any_time(),
    )
        .prop_map(
            |(session_id, device_id, clinic_id, patient_ref, last_activity_at)| Binding {
                session_id,
                device_id,
                clinic_id,
                patient_ref,
                last_activity_at,
            },
        )
        .boxed()
}

/// Any product entry.
pub fn any_product() -> BoxedStrategy<ProductFacts> {
    (any_u32(), any_u64(), any_u64(), any_u32())
        .prop_map(
            |(max_depth_um, rated_strokes, max_active_ms, shelf_life_days)| ProductFacts {
                max_depth_um,
                rated_strokes,
                max_active_ms,
                shelf_life_days,
            },
        )
        .boxed()
}

/// Any lot entry.
pub fn any_lot() -> BoxedStrategy<LotFacts> {
    (prop::option::of(any_date()), prop::option::of(any_time()))
        .prop_map(|(expiry, recalled_at)| LotFacts {
            expiry,
            recalled_at,
        })
        .boxed()
}

/// Any facts about a message.
pub fn any_facts() -> BoxedStrategy<Facts> {
    (
        prop::option::of(any_binding()),
        prop::option::of(any_product()),
        prop::option::of(any_lot()),
        (prop::option::of(any_relation()), any_u64(), any_u64()),
        (any_u32(), any_clinic()),
    )
        .prop_map(
            |(
                binding,
                product,
                lot,
                (relation, strokes, active_ms),
                (device_max_depth_um, clinic_id),
            )| Facts {
                binding,
                product,
                lot,
                session: SessionFacts {
                    relation,
                    strokes,
                    active_ms,
                },
                device_max_depth_um,
                clinic_id,
            },
        )
        .boxed()
}

fn any_delta() -> BoxedStrategy<TimeDelta> {
    prop_oneof![
        (0i64..86_400_000).prop_filter_map("range", TimeDelta::try_milliseconds),
        any::<i64>().prop_filter_map("range", TimeDelta::try_milliseconds),
        Just(TimeDelta::MAX),
        Just(TimeDelta::MIN),
        Just(TimeDelta::zero()),
    ]
    .boxed()
}

/// Any policy: the defaults, or any windows and limits.
pub fn any_policy() -> BoxedStrategy<Policy> {
    prop_oneof![
        Just(Policy::default()),
        (any_delta(), any_delta(), any_delta(), any_u32(), any_u32()).prop_map(
            |(resume_window, skew_window, gap_window, default_max_depth_um, sample_interval_ms)| {
                Policy {
                    resume_window,
                    skew_window,
                    gap_window,
                    default_max_depth_um,
                    sample_interval_ms,
                }
            }
        ),
    ]
    .boxed()
}
