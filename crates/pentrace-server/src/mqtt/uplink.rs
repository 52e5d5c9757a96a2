//! A device's `up` publish checked and decoded, the same for the consumer
//! behind an external broker (`intake`) and for the embedded front end: a
//! payload over the size limit, one that does not decode, one that names
//! another device than its topic, and one that cannot be keyed are refused
//! with the reason the device is told on its `down` topic.

use chrono::{DateTime, Utc};
use pentrace_domain::message::DeviceMessage;
use pentrace_proto::v1 as pb;
use prost::Message;

use crate::convert;
use crate::downlink;

/// A publish refused before the pipeline: counted under `label`
/// (`pentrace_ingest_rejects_total`), answered on the topic's device's
/// `down` topic when there is one.
#[derive(Debug)]
pub(crate) struct Refused {
    pub label: &'static str,
    pub answer: Option<pb::Rejection>,
}

impl Refused {
    /// Counted, but there is no device to answer.
    pub fn silent(label: &'static str) -> Refused {
        Refused {
            label,
            answer: None,
        }
    }

    fn answered(
        label: &'static str,
        device_id: &str,
        seq: u64,
        code: pb::RejectCode,
        detail: String,
    ) -> Refused {
        Refused {
            label,
            answer: Some(downlink::refusal(device_id, seq, code, detail)),
        }
    }
}

/// The message a publish on `topic_device`'s `up` topic carries.
pub(crate) fn message(
    topic_device: &str,
    payload: &[u8],
    max_message_bytes: usize,
    received_at: DateTime<Utc>,
) -> Result<DeviceMessage, Refused> {
    use pb::RejectCode as C;
    if payload.len() > max_message_bytes {
        let detail = format!(
            "message of {} bytes; at most {max_message_bytes}",
            payload.len()
        );
        return Err(Refused::answered(
            "oversized",
            topic_device,
            0,
            C::Oversized,
            detail,
        ));
    }
    let wire = pb::DeviceMessage::decode(payload).map_err(|e| {
        let detail = format!("not a DeviceMessage: {e}");
        Refused::answered("undecodable", topic_device, 0, C::Undecodable, detail)
    })?;
    // The topic is what the broker (or the front end) authorised; a payload
    // naming another device is spoofing. Answered to the topic's device only.
    if wire.device_id != topic_device {
        let detail = format!(
            "the payload names device {:?}, the topic device {topic_device:?}",
            wire.device_id
        );
        return Err(Refused::answered(
            "device_mismatch",
            topic_device,
            wire.seq,
            C::DeviceMismatch,
            detail,
        ));
    }
    let seq = wire.seq;
    convert::device_message(wire, received_at).map_err(|e| {
        Refused::answered(
            "invalid_message",
            topic_device,
            seq,
            C::Invalid,
            e.to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn heartbeat(device: &str, seq: u64) -> Vec<u8> {
        pb::DeviceMessage {
            device_id: device.into(),
            seq,
            sent_at: None,
            body: Some(pb::device_message::Body::Heartbeat(pb::Heartbeat {
                battery_pct: 1,
                firmware: "1".into(),
            })),
        }
        .encode_to_vec()
    }

    fn label(r: Result<DeviceMessage, Refused>) -> &'static str {
        r.map(|_| "ok").unwrap_or_else(|e| e.label)
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let now = Utc::now();
        assert_eq!(label(message("p", &heartbeat("p", 1), 1024, now)), "ok");
        assert_eq!(label(message("p", &heartbeat("p", 1), 4, now)), "oversized");
        assert_eq!(label(message("p", &[0xff; 8], 1024, now)), "undecodable");
        assert_eq!(
            label(message("p", &heartbeat("q", 1), 1024, now)),
            "device_mismatch"
        );
        assert_eq!(
            label(message("p", &heartbeat("p", 0), 1024, now)),
            "invalid_message"
        );
    }

    #[test]
    fn a_mismatch_is_answered_to_the_topics_device_only() {
        let refused = message("p", &heartbeat("q", 3), 1024, Utc::now()).unwrap_err();
        let answer = refused.answer.expect("answered");
        assert_eq!((answer.device_id.as_str(), answer.seq), ("p", 3));
        assert_eq!(answer.code, pb::RejectCode::DeviceMismatch as i32);
    }
}
