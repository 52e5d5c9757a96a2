//! MQTT transport: each pen is its own client (client id = username =
//! device id, clean session), publishes `DeviceMessage`s with QoS 1 to its
//! `up` topic and reads acks and commands from its `down` topic.
//!
//! rumqttc's event loop runs in its own task and is never blocked: it only
//! forwards events. A second task publishes what the pen queues.

use std::time::Duration;

use pentrace_proto::v1 as pb;
use prost::Message;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions,
    Outgoing, Packet, QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;

use super::link::{EVENT_QUEUE, Event, Link, OUTBOUND_QUEUE, Task, backoff};
use crate::error::SimError;

/// Largest downlink accepted (acks and commands are tiny).
const MAX_INCOMING: usize = 64 * 1024;
/// Largest message published; a 10-sample batch is well under 1 KiB.
const MAX_OUTGOING: usize = 256 * 1024;
/// Messages rumqttc keeps queued between the publisher task and its loop.
const CLIENT_QUEUE: usize = 64;

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    pub password: String,
}

impl MqttTarget {
    /// Parses `mqtt://host:port` (or `tcp://`, or a bare `host:port`).
    pub fn parse(url: &str, password: &str) -> Result<MqttTarget, SimError> {
        let bad = || {
            SimError::Config(format!(
                "--mqtt-url {url:?} is not mqtt://HOST:PORT (TLS is not supported)"
            ))
        };
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .unwrap_or(url);
        if rest.contains("://") {
            return Err(bad());
        }
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (rest, 1883),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(MqttTarget {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            password: password.to_owned(),
        })
    }
}

/// The topic a device publishes to.
pub fn up_topic(device_id: &str) -> String {
    format!("pentrace/v1/devices/{device_id}/up")
}

/// The topic the server answers a device on.
pub fn down_topic(device_id: &str) -> String {
    format!("pentrace/v1/devices/{device_id}/down")
}

/// Starts a pen's client; the link reports `Ready` once connected and
/// subscribed to the downlink, and again after every reconnect.
pub fn connect(target: &MqttTarget, device_id: &str, secret: Option<&String>, jitter: f64) -> Link {
    let password = secret.unwrap_or(&target.password).clone();
    let mut options = MqttOptions::new(device_id, target.host.clone(), target.port);
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_credentials(device_id, password)
        .set_max_packet_size(MAX_INCOMING, MAX_OUTGOING);
    let (client, eventloop) = AsyncClient::new(options, CLIENT_QUEUE);
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        down_topic(device_id),
        events_tx,
        jitter,
    ));
    let publisher = tokio::spawn(publish(client, up_topic(device_id), rx));
    Link {
        tx,
        events,
        tasks: vec![Task(poller), Task(publisher)],
    }
}

/// Publishes what the pen queues; on the queue's end, disconnects cleanly.
async fn publish(client: AsyncClient, topic: String, mut rx: mpsc::Receiver<pb::DeviceMessage>) {
    while let Some(message) = rx.recv().await {
        let payload = message.encode_to_vec();
        if client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = client.disconnect().await;
}

/// Drives rumqttc's event loop and forwards what matters to the pen.
async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    down: String,
    events: mpsc::Sender<Event>,
    jitter: f64,
) {
    let mut failures = 0u32;
    loop {
        let event = match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                // Clean session: the subscription must be made anew.
                if let Err(e) = client.try_subscribe(down.clone(), QoS::AtLeastOnce) {
                    Some(Event::Down(format!("cannot subscribe to {down}: {e}")))
                } else {
                    None
                }
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                Some(subscribed(&ack.return_codes, &down))
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == down => downlink(&p.payload),
            Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => None,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                failures += 1;
                Some(connection_error(e))
            }
        };
        if let Some(event) = event {
            let stop = matches!(event, Event::Closed { .. });
            if events.send(event).await.is_err() || stop {
                return;
            }
        }
        if failures > 0 {
            tokio::time::sleep(backoff(failures, jitter)).await;
        }
    }
}

fn subscribed(codes: &[SubscribeReasonCode], down: &str) -> Event {
    if codes.contains(&SubscribeReasonCode::Failure) {
        return Event::Closed {
            reason: format!("the broker refused the subscription to {down}"),
            fatal: true,
        };
    }
    Event::Ready
}

/// A refused login will be refused again; anything else is transient.
fn connection_error(e: ConnectionError) -> Event {
    match e {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::BadClientId),
        ) => Event::Closed {
            reason: format!("the broker refused the connection: {code:?}"),
            fatal: true,
        },
        other => Event::Down(other.to_string()),
    }
}

/// Decodes a downlink; undecodable ones are ignored (an ack that is lost
/// only delays the pen until a later one).
fn downlink(payload: &[u8]) -> Option<Event> {
    let body = pb::DeviceDownlink::decode(payload).ok()?.body?;
    Some(match body {
        pb::device_downlink::Body::Ack(ack) => Event::Ack(ack),
        pb::device_downlink::Body::Rejection(r) => Event::Rejected(r),
        pb::device_downlink::Body::RejectCartridge(r) => Event::Reject {
            session_id: r.session_id,
            reason: r.reason,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = MqttTarget::parse("mqtt://127.0.0.1:1883", "").expect("url");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 1883));
        let t = MqttTarget::parse("localhost", "pw").expect("bare host");
        assert_eq!((t.host.as_str(), t.port), ("localhost", 1883));
        assert!(MqttTarget::parse("mqtts://broker:8883", "").is_err());
        assert!(MqttTarget::parse("mqtt://broker:notaport", "").is_err());
        assert!(MqttTarget::parse("mqtt://:1883", "").is_err());
    }

    #[test]
    fn downlinks_decode() {
        let ack = pb::IngestAck {
            device_id: "p".into(),
            committed_seq: 42,
            stored: vec![pb::SeqRange {
                first: 44,
                last: 45,
            }],
        };
        let down = pb::DeviceDownlink {
            body: Some(pb::device_downlink::Body::Ack(ack.clone())),
        };
        assert_eq!(downlink(&down.encode_to_vec()), Some(Event::Ack(ack)));
        assert_eq!(downlink(b"\xff\xff"), None);
    }
}
