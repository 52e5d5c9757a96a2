//! Which topics a connection may use. The server is the only subscriber of
//! the devices' `up` topics and the only publisher of their `down` topics,
//! so a connection may publish only on the `up` topic of a device it
//! speaks for, and subscribe only to the `down` topics of such devices;
//! `#`, `+` elsewhere, `$share/…`, `$SYS/…`, the clinics' flag topics and
//! every other topic are refused.

use crate::device_auth::DeviceIdentity;

/// What a SUBSCRIBE filter asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FilterRequest<'a> {
    /// `pentrace/v1/devices/{id}/down` of one device.
    Down(&'a str),
    /// `pentrace/v1/devices/+/down`: every device the connection speaks
    /// for (a gateway's pens).
    EveryDown,
    /// Anything else: never granted.
    Other,
}

/// Classifies a SUBSCRIBE filter.
pub(super) fn filter_request(filter: &str) -> FilterRequest<'_> {
    match down_device(filter) {
        Some("+") => FilterRequest::EveryDown,
        Some(id) if is_plain(id) => FilterRequest::Down(id),
        _ => FilterRequest::Other,
    }
}

/// The device of a PUBLISH topic, when it is a device's `up` topic (with
/// no wildcard characters, which a PUBLISH topic must not hold anyway).
pub(super) fn up_device(topic: &str) -> Option<&str> {
    super::super::device_of_topic(topic).filter(|id| is_plain(id))
}

/// A granted subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Grant {
    /// The `down` topic of this device.
    Device(String),
    /// The `down` topics of every device the connection speaks for.
    EveryDevice,
}

impl Grant {
    /// The filter it was granted for (what UNSUBSCRIBE names).
    pub fn filter(&self) -> String {
        match self {
            Grant::Device(id) => super::super::down_topic(id),
            Grant::EveryDevice => super::super::down_topic("+"),
        }
    }
}

/// Whether a connection with these grants hears `device_id`'s downlinks.
/// Every downlink the server sends a connection is for a device it speaks
/// for, so `EveryDevice` covers any of them.
pub(super) fn hears(grants: &[Grant], device_id: &str) -> bool {
    grants.iter().any(|g| match g {
        Grant::Device(id) => id == device_id,
        Grant::EveryDevice => true,
    })
}

/// Whether the identity may ask for every device's `down` topic: only a
/// gateway, whose filter then means its clinic's pens.
pub(super) fn may_subscribe_every_down(identity: &DeviceIdentity) -> bool {
    matches!(identity, DeviceIdentity::Gateway { .. })
}

/// The device id of `pentrace/v1/devices/{id}/down`.
fn down_device(filter: &str) -> Option<&str> {
    let id = filter
        .strip_prefix("pentrace/v1/devices/")?
        .strip_suffix("/down")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// No MQTT wildcard in it.
fn is_plain(id: &str) -> bool {
    !id.contains(['+', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_down_topics_are_asked_for() {
        use FilterRequest::*;
        for (filter, want) in [
            ("pentrace/v1/devices/pen-a/down", Down("pen-a")),
            ("pentrace/v1/devices/+/down", EveryDown),
            ("#", Other),
            ("+/+/+/+/down", Other),
            ("pentrace/v1/devices/#", Other),
            ("pentrace/v1/devices/pen-a/up", Other),
            ("pentrace/v1/devices/pen-a/#", Other),
            ("pentrace/v1/devices/pen+/down", Other),
            ("pentrace/v1/devices/a#/down", Other),
            ("pentrace/v1/devices//down", Other),
            ("pentrace/v1/devices/a/b/down", Other),
            ("$share/pentrace/pentrace/v1/devices/+/up", Other),
            ("$share/g/pentrace/v1/devices/pen-a/down", Other),
            ("$SYS/#", Other),
            ("pentrace/v1/clinics/c/flags", Other),
            ("pentrace/v1/clinics/+/flags", Other),
        ] {
            assert_eq!(filter_request(filter), want, "{filter}");
        }
    }

    #[test]
    fn only_up_topics_name_a_device() {
        assert_eq!(up_device("pentrace/v1/devices/pen-a/up"), Some("pen-a"));
        for topic in [
            "pentrace/v1/devices/pen-a/down",
            "pentrace/v1/devices/+/up",
            "pentrace/v1/devices/#/up",
            "pentrace/v1/clinics/c/flags",
            "$SYS/x",
            "pentrace/v1/devices/a/b/up",
        ] {
            assert_eq!(up_device(topic), None, "{topic}");
        }
    }

    #[test]
    fn grants_decide_what_is_heard() {
        let pen = [Grant::Device("pen-a".into())];
        assert!(hears(&pen, "pen-a"));
        assert!(!hears(&pen, "pen-b"));
        assert!(!hears(&[], "pen-a"));
        assert!(hears(&[Grant::EveryDevice], "pen-b"));
        assert_eq!(Grant::EveryDevice.filter(), "pentrace/v1/devices/+/down");
    }
}
