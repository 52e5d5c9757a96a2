//! Carrying out the plan: one task per pen, whatever the transport.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{SimConfig, Transport};
use crate::error::SimError;
use crate::scenario::Scenario;

mod grpc;
mod inflight;
mod link;
mod mqtt;
mod pen;

pub(crate) use grpc::ca_pem;
pub use grpc::channel as grpc_channel;
pub(crate) use link::backoff;
pub use pen::Reject;
pub(crate) use pen::{PenOutcome, run_pen};

/// Live counters of the whole run, read by the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    /// Every message put on the wire, duplicates and resends included.
    pub transmissions: AtomicU64,
    /// Distinct messages sent.
    pub messages: AtomicU64,
    /// Extra copies sent by the dup fault.
    pub duplicates: AtomicU64,
    /// Messages sent again: after a reconnect, or when an ack did not
    /// cover them in time.
    pub resends: AtomicU64,
    /// Rejections received (a message the server did not store).
    pub rejections: AtomicU64,
    /// Connections dropped (by a fault, an error or a stall) and remade.
    pub reconnects: AtomicU64,
    /// Distinct samples sent.
    pub samples: AtomicU64,
    /// Distinct messages acknowledged.
    pub acked: AtomicU64,
    /// Samples in acknowledged messages.
    pub samples_acked: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value of one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// How pens connect.
#[derive(Debug, Clone)]
pub(crate) enum Connector {
    Grpc { url: String, ca_pem: Option<String> },
    Mqtt(mqtt::MqttTarget),
}

impl Connector {
    pub(crate) fn new(config: &SimConfig) -> Result<Connector, SimError> {
        Ok(match config.transport {
            Transport::Grpc => Connector::Grpc {
                url: config.grpc_url.clone(),
                ca_pem: grpc::ca_pem(config)?,
            },
            Transport::Mqtt => Connector::Mqtt(mqtt::MqttTarget::parse(
                &config.mqtt_url,
                &config.mqtt_password,
            )?),
        })
    }
}

/// What every pen task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub scenario: Arc<Scenario>,
    pub counters: Arc<Counters>,
    /// Per pen: every seq up to this value is acknowledged.
    pub watermarks: Vec<watch::Sender<u64>>,
    pub connector: Connector,
    /// Real time at which virtual time `scenario.t0` was.
    pub start: Instant,
    pub compression: f64,
    pub ack_timeout: Duration,
    pub max_inflight: usize,
    /// Each pen's secret (gRPC bearer metadata, MQTT password).
    pub secrets: std::collections::HashMap<String, String>,
}

impl Shared {
    pub(crate) fn new(
        config: &SimConfig,
        scenario: Arc<Scenario>,
        bases: &[u64],
        counters: Arc<Counters>,
        secrets: std::collections::HashMap<String, String>,
    ) -> Result<Shared, SimError> {
        let watermarks = (0..scenario.pens.len())
            .map(|i| watch::channel(bases.get(i).copied().unwrap_or(0)).0)
            .collect();
        Ok(Shared {
            scenario,
            counters,
            watermarks,
            connector: Connector::new(config)?,
            start: Instant::now(),
            compression: config.compression,
            ack_timeout: config.ack_timeout,
            max_inflight: config.max_inflight,
            secrets,
        })
    }

    /// The real instant at which virtual time `at` comes.
    pub(crate) fn real(&self, at: DateTime<Utc>) -> Instant {
        // At most a year ahead, so an absurd compression cannot overflow.
        const LIMIT_S: f64 = 365.0 * 86_400.0;
        let virtual_s = (at - self.scenario.t0).num_milliseconds().max(0) as f64 / 1000.0;
        let real_s = (virtual_s / self.compression).clamp(0.0, LIMIT_S);
        self.start + Duration::try_from_secs_f64(real_s).unwrap_or_default()
    }
}
