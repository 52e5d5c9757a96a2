//! Planned messages as protobuf, built when they are sent.

use chrono::{DateTime, Duration, Utc};
use pentrace_domain::message::{SkinThickness, TreatmentArea};
use pentrace_proto::v1 as pb;
use prost_types::Timestamp;

use crate::profile::BATCH_MS;
use crate::scenario::{MessageBody, MessagePlan, PenPlan, SessionPlan};

/// The wire form of `msg`; `now` is the real time of sending, which the
/// pen's clock reports as `sent_at` (shifted when its clock is off).
pub fn build(pen: &PenPlan, msg: &MessagePlan, now: DateTime<Utc>) -> pb::DeviceMessage {
    let session = msg.body.session().and_then(|k| pen.sessions.get(k));
    let sent_at = session.map_or(now, |s| s.device_time(now));
    let udi = msg
        .body
        .session()
        .and_then(|k| pen.named_udi(k, msg.body))
        .unwrap_or_default();
    let body = match (msg.body, session) {
        (MessageBody::Start { .. }, Some(s)) => {
            pb::device_message::Body::SessionStart(pb::SessionStart {
                session: Some(context(s, udi)),
                operator_ref: s.operator_ref.clone(),
                firmware: pen.firmware.clone(),
            })
        }
        (MessageBody::Batch { batch, .. }, Some(s)) => {
            pb::device_message::Body::StrokeBatch(stroke_batch(s, udi, batch))
        }
        (MessageBody::End { .. }, Some(s)) => {
            pb::device_message::Body::SessionEnd(pb::SessionEnd {
                session: Some(context(s, udi)),
                ended_at: Some(timestamp(s.device_time(s.ended_at))),
                total_strokes: s.profile.total_strokes(s.batches),
                reason: pb::EndReason::Completed as i32,
            })
        }
        (MessageBody::Heartbeat { battery_pct }, _) => heartbeat(pen, battery_pct),
        // Planning never makes a session message without its session.
        (_, None) => heartbeat(pen, 100),
    };
    pb::DeviceMessage {
        device_id: pen.device_id.clone(),
        seq: msg.seq,
        sent_at: Some(timestamp(sent_at)),
        body: Some(body),
    }
}

fn heartbeat(pen: &PenPlan, battery_pct: u32) -> pb::device_message::Body {
    pb::device_message::Body::Heartbeat(pb::Heartbeat {
        battery_pct,
        firmware: pen.firmware.clone(),
    })
}

fn stroke_batch(s: &SessionPlan, udi: &str, batch: u32) -> pb::StrokeBatch {
    let started = s.started_at + Duration::milliseconds(i64::from(batch) * i64::from(BATCH_MS));
    pb::StrokeBatch {
        session: Some(context(s, udi)),
        started_at: Some(timestamp(s.device_time(started))),
        samples: s
            .profile
            .batch(batch)
            .into_iter()
            .map(|x| pb::StrokeSample {
                offset_ms: x.offset_ms,
                strokes: x.strokes,
                depth_um: x.depth_um,
                speed_hz: x.speed_hz,
            })
            .collect(),
    }
}

/// The session's context naming the cartridge `udi` (its own, or one
/// swapped in).
fn context(s: &SessionPlan, udi: &str) -> pb::SessionContext {
    pb::SessionContext {
        session_id: s.session_id.clone(),
        cartridge: Some(pb::Cartridge {
            udi: udi.to_owned(),
            chip_uid: String::new(),
        }),
        area: area(s.profile.area),
        skin: match s.profile.skin {
            SkinThickness::Thin => pb::SkinThickness::Thin as i32,
            SkinThickness::Thick => pb::SkinThickness::Thick as i32,
            SkinThickness::Unknown(n) => n,
        },
        patient_ref: s.patient_ref.clone(),
        started_at: Some(timestamp(s.device_time(s.started_at))),
    }
}

fn area(a: TreatmentArea) -> i32 {
    let known = match a {
        TreatmentArea::Unspecified => pb::TreatmentArea::Unspecified,
        TreatmentArea::Forehead => pb::TreatmentArea::Forehead,
        TreatmentArea::Nose => pb::TreatmentArea::Nose,
        TreatmentArea::Periorbital => pb::TreatmentArea::Periorbital,
        TreatmentArea::Cheeks => pb::TreatmentArea::Cheeks,
        TreatmentArea::UpperLip => pb::TreatmentArea::UpperLip,
        TreatmentArea::Scars => pb::TreatmentArea::Scars,
        TreatmentArea::StretchMarks => pb::TreatmentArea::StretchMarks,
        TreatmentArea::Scalp => pb::TreatmentArea::Scalp,
        TreatmentArea::Unknown(n) => return n,
    };
    known as i32
}

/// A time on the wire.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
