//! The simulator's options.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::SimError;
use crate::faults::FaultRates;

/// How pens talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// MQTT 3.1.1, QoS 1, one client per pen.
    #[default]
    Mqtt,
    /// One `Telemetry.Ingest` bidi stream per pen.
    Grpc,
}

impl Transport {
    /// `mqtt` or `grpc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Grpc => "grpc",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mqtt" => Ok(Transport::Mqtt),
            "grpc" => Ok(Transport::Grpc),
            other => Err(format!("unknown transport {other:?} (mqtt or grpc)")),
        }
    }
}

/// Whether to show progress on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A live line on a terminal, a plain line every 5 s otherwise.
    #[default]
    Auto,
    /// Nothing (for callers that print their own).
    Off,
}

/// Everything a simulation run needs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of pens.
    pub devices: usize,
    pub transport: Transport,
    /// gRPC endpoint: setup and verification always use it, and telemetry
    /// too with [`Transport::Grpc`].
    pub grpc_url: String,
    /// Bearer token for the Registry (setup: an admin's), Fleet and
    /// Compliance (verify: one that sees the clinic) services.
    pub token: Option<String>,
    /// MQTT broker, `mqtt://host:port`.
    pub mqtt_url: String,
    /// Password every pen presents to the broker (username = device id)
    /// when it has no credential of its own (see `credentials`).
    pub mqtt_password: String,
    /// The pens' credentials, one `device_id secret` line each: written by
    /// `setup` (which issues a secret per pen through the Registry), read
    /// by a run without setup. Without a file, setup keeps them in memory.
    pub credentials: Option<PathBuf>,
    /// CA certificate (PEM) the server's TLS certificate chains to, for
    /// `https://` gRPC URLs.
    pub ca_cert: Option<PathBuf>,
    /// Clinic of the pens; device ids are `{clinic}-pen-{i:04}`.
    pub clinic: String,
    /// Sessions per pen.
    pub sessions: u32,
    /// Stroke batches per session (each 10 samples × 100 ms).
    pub batches: u32,
    /// Virtual time runs this many times faster than real time.
    pub compression: f64,
    /// Seed of every random choice; the same seed gives the same scenario.
    pub seed: u64,
    /// Register clinic, devices, products and lots (and recall a lot) first.
    pub setup: bool,
    pub faults: FaultRates,
    /// Where to write the ground truth (JSON lines), if anywhere.
    pub truth_path: Option<PathBuf>,
    /// Whether the caller compares with the server afterwards
    /// ([`crate::verify()`]); `run` itself does not look at it.
    pub verify: bool,
    /// A pen fails when its acks make no progress for this long.
    pub ack_timeout: Duration,
    /// Most messages a pen keeps unacknowledged before it waits.
    pub max_inflight: usize,
    pub progress: ProgressMode,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            devices: 50,
            transport: Transport::Mqtt,
            grpc_url: "http://127.0.0.1:50051".into(),
            token: None,
            mqtt_url: "mqtt://127.0.0.1:1883".into(),
            mqtt_password: String::new(),
            credentials: None,
            ca_cert: None,
            clinic: "sim-clinic".into(),
            sessions: 4,
            batches: 20,
            compression: 60.0,
            seed: 0,
            setup: false,
            faults: FaultRates::default(),
            truth_path: None,
            verify: false,
            ack_timeout: Duration::from_secs(60),
            max_inflight: 100,
            progress: ProgressMode::Auto,
        }
    }
}

impl SimConfig {
    /// Device id of pen `i`.
    pub fn device_id(&self, i: usize) -> String {
        format!("{}-pen-{i:04}", self.clinic)
    }

    /// Refuses values the simulator cannot run with.
    pub fn validate(&self) -> Result<(), SimError> {
        let fail = |what: String| Err(SimError::Config(what));
        if self.devices == 0 {
            return fail("--devices must be at least 1".into());
        }
        if !(self.compression.is_finite() && self.compression > 0.0) {
            return fail(format!(
                "--compression must be a positive number, not {}",
                self.compression
            ));
        }
        // The clinic names device ids, which name MQTT topics: no
        // wildcards, separators or spaces.
        let clinic_ok = (1..=200).contains(&self.clinic.len())
            && self
                .clinic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !clinic_ok {
            return fail(format!(
                "--clinic {:?} must be 1-200 letters, digits, '.', '_' or '-'",
                self.clinic
            ));
        }
        if self.ack_timeout.is_zero() {
            return fail("--ack-timeout-s must be at least 1".into());
        }
        if self.max_inflight == 0 {
            return fail("the in-flight window must be at least 1".into());
        }
        if self.faults.cartridge_total() > 1.0 + 1e-9 {
            return fail("cartridge fault rates add up to more than 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_name_the_pens() {
        let c = SimConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.device_id(7), "sim-clinic-pen-0007");
        assert_eq!("grpc".parse(), Ok(Transport::Grpc));
        assert!("amqp".parse::<Transport>().is_err());
    }

    #[test]
    fn unusable_values_are_refused() {
        let bad = [
            SimConfig {
                devices: 0,
                ..SimConfig::default()
            },
            SimConfig {
                compression: 0.0,
                ..SimConfig::default()
            },
            SimConfig {
                compression: f64::NAN,
                ..SimConfig::default()
            },
            SimConfig {
                clinic: "a/b".into(),
                ..SimConfig::default()
            },
            SimConfig {
                clinic: "+".into(),
                ..SimConfig::default()
            },
            SimConfig {
                ack_timeout: Duration::ZERO,
                ..SimConfig::default()
            },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(SimError::Config(_))), "{c:?}");
        }
    }
}
