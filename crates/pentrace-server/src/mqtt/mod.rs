//! MQTT ingest (docs/architecture.md, "Wire protocol" and "Delivery"), two
//! ways into the same pipeline as gRPC, with PUBACKs only after commit and
//! in arrival order and acks, rejections and cartridge rejections published
//! back:
//!
//! - behind an external broker (Mosquitto): a shared subscription on the
//!   devices' `up` topics (`consumer`, `intake`), flags published to the
//!   clinics' topics;
//! - the embedded broker (`embedded`): pentrace's own MQTT front end, each
//!   authenticated device connection feeding the pipeline itself.

use std::time::Duration;

use pentrace_ingest::metrics::Label;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

mod consumer;
mod downlink;
pub mod dynsec;
pub mod embedded;
mod intake;
mod order;
mod uplink;

pub use consumer::spawn;

/// The shared subscription every pentrace process joins.
pub const SUBSCRIPTION: &str = "$share/pentrace/pentrace/v1/devices/+/up";

/// Every device's `up` topic, the topics of what the shared subscription
/// delivers.
pub const PLAIN_SUBSCRIPTION: &str = "pentrace/v1/devices/+/up";

/// Topic a device publishes on.
pub fn up_topic(device_id: &str) -> String {
    format!("pentrace/v1/devices/{device_id}/up")
}

/// Topic a device listens on.
pub fn down_topic(device_id: &str) -> String {
    format!("pentrace/v1/devices/{device_id}/down")
}

/// Topic a clinic's flags are published on.
pub fn flags_topic(clinic_id: &str) -> String {
    format!("pentrace/v1/clinics/{clinic_id}/flags")
}

/// The device id in an `up` topic, if the topic is one.
pub fn device_of_topic(topic: &str) -> Option<&str> {
    let id = topic
        .strip_prefix("pentrace/v1/devices/")?
        .strip_suffix("/up")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// MQTT settings of `pentrace serve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host:port` of an external broker; unset = the embedded
    /// broker (unless `embedded` is false), which needs none of the
    /// consumer settings below.
    pub url: Option<String>,
    /// Start the embedded broker when no `url` is set; false (and no
    /// `url`) = no MQTT ingest at all.
    pub embedded: bool,
    /// Port of the embedded broker on 127.0.0.1 (0 = any free port; the
    /// start-up line names the one taken).
    pub embedded_port: u16,
    /// Fixed client id of this process (persistent session): give each
    /// process of a deployment its own.
    pub client_id: String,
    pub username: Option<String>,
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    /// Largest MQTT packet read from the broker, bytes. Larger than the
    /// message limit so an oversized payload is counted and acked instead of
    /// breaking the connection (and being redelivered forever).
    pub max_packet_bytes: usize,
    /// On a graceful shutdown, keep the persistent session at the broker
    /// (it goes on queueing this client id's share of the messages until
    /// the same id comes back): for rolling restarts only. false (the
    /// default) = leave the shared subscription and end the session once
    /// everything taken is acknowledged, so the other members get the
    /// whole traffic.
    pub keep_session_on_shutdown: bool,
    /// MQTT keep-alive of the consumer's connection, seconds (1 to 65535).
    /// The broker drops the connection after 1.5 times this without a
    /// packet from us, which a poller stopped by a full intake does not send.
    pub keep_alive_s: u16,
    /// The external broker's dynamic security admin
    /// (deploy/mosquitto/README.md), with which pentrace manages the
    /// broker's consumer and pen accounts ([`MqttSettings::broker_accounts`]).
    /// Needs `url`.
    pub dynsec_admin: Option<DynsecAdmin>,
}

/// Credentials of a Mosquitto dynamic security admin (`mosquitto_ctrl
/// dynsec init`), as `mqtt.dynsec_admin.username` and `.password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynsecAdmin {
    pub username: String,
    #[serde(skip_serializing)]
    pub password: SecretString,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            url: None,
            embedded: true,
            embedded_port: 1883,
            client_id: "pentrace-1".into(),
            username: None,
            password: None,
            max_packet_bytes: 4 * 1024 * 1024,
            keep_session_on_shutdown: false,
            keep_alive_s: 30,
            dynsec_admin: None,
        }
    }
}

/// `host` and `port` of an `mqtt://host:port` URL.
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| format!("{url:?} is not an mqtt://host:port URL"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("bad port in {url:?}"))?),
        None => (rest, 1883),
    };
    if host.is_empty() {
        return Err(format!("no host in {url:?}"));
    }
    Ok((host.to_owned(), port))
}

impl MqttSettings {
    /// Whether `pentrace serve` starts the embedded broker: no external
    /// broker configured, and MQTT not turned off.
    pub fn uses_embedded(&self) -> bool {
        self.url.is_none() && self.embedded
    }

    /// [`MqttSettings::keep_alive_s`] as a duration.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(u64::from(self.keep_alive_s))
    }

    /// The external broker's accounts, when a dynsec admin is configured.
    pub async fn broker_accounts(
        &self,
    ) -> Result<Option<dynsec::BrokerAccounts>, BrokerAccountsError> {
        let Some(admin) = &self.dynsec_admin else {
            return Ok(None);
        };
        let url = self.url.as_deref().ok_or(BrokerAccountsError::NoUrl)?;
        let (host, port) = parse_url(url).map_err(BrokerAccountsError::Url)?;
        let accounts = dynsec::BrokerAccounts::connect(
            &host,
            port,
            &admin.username,
            admin.password.expose_secret(),
        )
        .await?;
        Ok(Some(accounts))
    }
}

/// Connection options: persistent session, fixed client id, manual acks.
pub fn options(settings: &MqttSettings, host: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(settings.client_id.clone(), host, port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(settings.keep_alive())
        .set_max_packet_size(settings.max_packet_bytes, settings.max_packet_bytes)
        .set_inflight(1000);
    if let Some(user) = &settings.username {
        let password = settings
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_owned());
        o.set_credentials(user.clone(), password.unwrap_or_default());
    }
    o
}

/// Capacity of rumqttc's request channel (PUBACKs, downlinks, SUBSCRIBE).
/// The intake must not wait on it while the poller waits on the intake (see
/// `consumer`). The intake queues at most two requests per publish it took:
/// its PUBACK and at most one ack downlink announcing it. A publish whose
/// PUBACK has not gone out is unacknowledged at the broker, which holds at
/// most 65,535 per connection (16-bit packet ids; the shipped
/// `max_inflight_messages` is 10,000). rumqttc drops the queued PUBACKs of a
/// connection that ended, but the intake may queue those of the previous
/// connection before it learns of the reconnection. Hence 2 × 2 × 65,536;
/// flag publishes and late ack downlinks fit far inside that, and the
/// consumer's stall limit covers whatever does not. flume allocates on
/// demand: an idle channel costs nothing.
pub const REQUEST_CAPACITY: usize = 4 * 65_536;

/// A client and its event loop.
pub fn connect(settings: &MqttSettings, host: &str, port: u16) -> (AsyncClient, EventLoop) {
    AsyncClient::new(options(settings, host, port), REQUEST_CAPACITY)
}

/// Why the external broker's accounts cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum BrokerAccountsError {
    #[error("mqtt.dynsec_admin needs mqtt.url (the embedded broker has no dynamic security)")]
    NoUrl,
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error(transparent)]
    Dynsec(#[from] dynsec::DynsecError),
}

/// Why a persistent session could not be ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to the broker: {0}")]
    Connect(#[from] rumqttc::ConnectionError),
    #[error("cannot send the DISCONNECT: {0}")]
    Disconnect(#[from] rumqttc::ClientError),
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
}

/// Ends the persistent session of `settings.client_id` at the broker, with
/// everything still queued for it (MQTT 3.1.1: a clean-session CONNECT
/// replaces the session, and the DISCONNECT that follows discards the clean
/// one). Mosquitto then drops the id from the shared subscription group,
/// which it otherwise keeps handing a share of the messages. Nothing must
/// be connected with that id meanwhile (the broker would disconnect it).
pub async fn end_session(
    settings: &MqttSettings,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(), SessionError> {
    let mut o = options(settings, host, port);
    o.set_clean_session(true).set_manual_acks(false);
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    let ended = async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await? {
                break;
            }
        }
        client.disconnect().await?;
        // rumqttc yields `Outgoing::Disconnect` once the packet is flushed.
        loop {
            if let Event::Outgoing(Outgoing::Disconnect) = eventloop.poll().await? {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(timeout, ended)
        .await
        .map_err(|_| SessionError::Timeout(timeout))?
}

/// Counters of the MQTT consumer and of the embedded broker
/// (`pentrace_mqtt_*`).
#[derive(Debug, Clone, Default)]
pub struct MqttMetrics {
    /// SUBSCRIBEs sent, by why: `connected`, `idle` (nothing delivered for
    /// a while), `retry` (after a refusal).
    pub subscribes: Family<Label, Counter>,
    /// SUBACKs refusing the subscription (0x80: an ACL denial, say).
    pub subscribe_refusals: Counter,
    /// Connections released because the intake stayed full for two
    /// keep-alives (see `consumer`).
    pub stalls: Counter,
    /// Embedded broker: device connections open (authenticated).
    pub connections: Gauge,
    /// Embedded broker: connections refused before or at CONNECT, by
    /// reason (an authentication failure's reason, `protocol_version`,
    /// `connect_timeout`, `too_many_connections`, ...).
    pub refused_connects: Family<Label, Counter>,
    /// Embedded broker: publishes and subscriptions denied (`publish`,
    /// `subscribe`).
    pub denials: Family<Label, Counter>,
    /// Embedded broker: connections closed because another with the same
    /// client id connected.
    pub takeovers: Counter,
    /// Embedded broker: authenticated connections ended, by why
    /// (`disconnect`, `closed`, `keep_alive`, `revoked`, `denied`, ...).
    pub disconnects: Family<Label, Counter>,
}

impl MqttMetrics {
    /// Registers every counter under the `pentrace_mqtt` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pentrace_mqtt");
        r.register(
            "subscribes",
            "SUBSCRIBEs sent, by reason",
            self.subscribes.clone(),
        );
        r.register(
            "subscribe_refusals",
            "Subscriptions the broker refused",
            self.subscribe_refusals.clone(),
        );
        r.register(
            "stalls",
            "Connections released because the intake stayed full",
            self.stalls.clone(),
        );
        r.register(
            "connections",
            "Device connections open on the embedded broker",
            self.connections.clone(),
        );
        r.register(
            "refused_connects",
            "Connections the embedded broker refused, by reason",
            self.refused_connects.clone(),
        );
        r.register(
            "denials",
            "Publishes and subscriptions the embedded broker denied",
            self.denials.clone(),
        );
        r.register(
            "takeovers",
            "Embedded broker connections taken over by one with the same client id",
            self.takeovers.clone(),
        );
        r.register(
            "disconnects",
            "Embedded broker device connections ended, by reason",
            self.disconnects.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        assert_eq!(device_of_topic(&up_topic("pen-1")), Some("pen-1"));
        assert_eq!(device_of_topic("pentrace/v1/devices//up"), None);
        assert_eq!(device_of_topic("pentrace/v1/devices/a/b/up"), None);
        assert_eq!(device_of_topic("pentrace/v1/devices/a/down"), None);
    }

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884"),
            Ok(("127.0.0.1".into(), 1884))
        );
        assert_eq!(parse_url("mqtt://broker"), Ok(("broker".into(), 1883)));
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("mqtt://:1").is_err());
    }
}
