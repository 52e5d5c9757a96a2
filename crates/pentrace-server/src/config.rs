//! Configuration: defaults in code, then an optional TOML file, then
//! `PENTRACE_*` environment variables (`__` for nesting, e.g.
//! `PENTRACE_INGEST__BATCH_MAX_MESSAGES=1000`), then `DATABASE_URL`, then
//! command-line flags. Validated once, naming the key that is wrong.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use pentrace_domain::policy::Policy;
use pentrace_ingest::IngestConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::mqtt::{MqttSettings, parse_url};

/// Everything `pentrace serve` can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address (port 0 = any free port).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for /healthz, /readyz, /metrics.
    pub http_addr: SocketAddr,
    /// PostgreSQL URL (also `DATABASE_URL`); unset = the embedded SQLite
    /// store in `data_dir`. Never serialized, so it cannot end up in a log
    /// or a dump of the configuration.
    #[serde(skip_serializing, default)]
    pub database_url: Option<SecretString>,
    /// Where the embedded store keeps its file (`pentrace.db`); also
    /// `PENTRACE_DATA_DIR`.
    pub data_dir: std::path::PathBuf,
    /// Connections in the database pool.
    pub database_max_connections: u32,
    /// Role the server acts as after connecting (`SET ROLE`), e.g.
    /// `pentrace_app`, which has no UPDATE/DELETE on audit tables.
    /// Migrations run as the login user.
    pub database_role: Option<String>,
    pub audit: AuditSettings,
    /// Register unknown devices to `default_clinic` instead of rejecting them.
    pub auto_register: bool,
    /// Clinic that auto-registered devices join.
    pub default_clinic: String,
    /// Largest device message accepted, bytes.
    pub max_message_bytes: usize,
    /// `text` or `json` logs.
    pub log_format: LogFormat,
    pub ingest: IngestSettings,
    pub policy: PolicySettings,
    pub mqtt: MqttSettings,
    pub tls: TlsSettings,
    pub fleet: FleetSettings,
}

/// The fleet checks' policy (`pentrace audit fleet`, `Fleet.CheckFleet`):
/// defaults a request may override.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSettings {
    /// Audit events of the last this many seconds are read.
    pub lookback_s: u64,
    /// A pen certificate expiring within this many days is reported.
    pub certificate_warning_days: u32,
    /// A pen in service silent for longer than this many seconds is reported.
    pub silent_after_s: u64,
}

impl Default for FleetSettings {
    fn default() -> Self {
        let p = crate::fleet_checks::FleetPolicy::default();
        FleetSettings {
            lookback_s: p.lookback.num_seconds().unsigned_abs(),
            certificate_warning_days: u32::try_from(p.certificate_warning.num_days()).unwrap_or(30),
            silent_after_s: p.silent_after.num_seconds().unsigned_abs(),
        }
    }
}

impl FleetSettings {
    /// The policy these settings give.
    pub fn policy(&self) -> crate::fleet_checks::FleetPolicy {
        crate::fleet_checks::FleetPolicy {
            lookback: seconds(self.lookback_s),
            certificate_warning: chrono::Duration::days(i64::from(self.certificate_warning_days)),
            silent_after: seconds(self.silent_after_s),
        }
    }
}

/// TLS of the gRPC and HTTP listeners, and the CA of the pens' client
/// certificates (issue 13). With nothing set, `pentrace serve` uses (and
/// on first start creates) a CA and a server certificate for 127.0.0.1 and
/// localhost in `<data_dir>/pki` — see [`crate::pki`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain, PEM.
    pub cert: Option<std::path::PathBuf>,
    /// Its private key, PEM.
    pub key: Option<std::path::PathBuf>,
    /// The CA whose client certificates authenticate pens (mTLS).
    pub ca_cert: Option<std::path::PathBuf>,
    /// The CA's key, to issue pen certificates through the Registry API.
    pub ca_key: Option<std::path::PathBuf>,
    /// Serve gRPC and HTTP without TLS: allowed only when both listen on a
    /// loopback address (a laptop, tests). Devices then authenticate with
    /// their secrets only.
    pub plaintext: bool,
}

impl TlsSettings {
    /// Where the CA and server files are: configured, else `<data_dir>/pki`.
    pub fn paths(&self, data_dir: &Path) -> crate::pki::PkiPaths {
        let default = crate::pki::PkiPaths::in_dir(&data_dir.join("pki"));
        crate::pki::PkiPaths {
            ca_cert: self.ca_cert.clone().unwrap_or(default.ca_cert),
            ca_key: self.ca_key.clone().unwrap_or(default.ca_key),
            server_cert: self.cert.clone().unwrap_or(default.server_cert),
            server_key: self.key.clone().unwrap_or(default.server_key),
        }
    }

    /// Whether every path is the default one (so pentrace may create them).
    pub fn is_default(&self) -> bool {
        self.cert.is_none() && self.key.is_none() && self.ca_cert.is_none() && self.ca_key.is_none()
    }
}

/// Batching of the ingest pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    pub batch_max_messages: usize,
    pub batch_max_age_ms: u64,
    pub queue_capacity: usize,
    /// Writers committing in parallel (PostgreSQL; the SQLite store always
    /// has one, as SQLite has one writer).
    pub writers: usize,
    pub gap_check_interval_s: u64,
}

/// Scheduled checkpoints of the audit chains.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Secret key file (`pentrace audit keygen`); unset = no scheduled
    /// checkpoints.
    pub checkpoint_key: Option<std::path::PathBuf>,
    /// Seconds between checkpoints (default 3600).
    pub checkpoint_interval_s: Option<u64>,
}

/// Rule thresholds (docs/architecture.md, "Flags").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    pub resume_window_s: u64,
    /// How far before the cartridge's last activity a resume may start.
    pub resume_tolerance_s: u64,
    pub skew_window_s: u64,
    pub gap_window_s: u64,
    pub default_max_depth_um: u32,
}

/// A configured number of seconds as a period, saturating at chrono's
/// largest (validation keeps settings far below it; this never panics).
fn seconds(s: u64) -> chrono::Duration {
    i64::try_from(s)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .unwrap_or(chrono::Duration::MAX)
}

/// The longest policy period accepted: ten years (a rule period beyond
/// that means a typo, and would overflow the clock when added to a time).
const MAX_POLICY_S: u64 = 3650 * 86_400;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            data_dir: std::path::PathBuf::from("pentrace-data"),
            database_max_connections: 8,
            database_role: None,
            audit: AuditSettings::default(),
            auto_register: false,
            default_clinic: "default".into(),
            max_message_bytes: 1024 * 1024,
            log_format: LogFormat::Text,
            ingest: IngestSettings::default(),
            policy: PolicySettings::default(),
            mqtt: MqttSettings::default(),
            tls: TlsSettings::default(),
            fleet: FleetSettings::default(),
        }
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        let d = IngestConfig::default();
        IngestSettings {
            batch_max_messages: d.batch_max_messages,
            batch_max_age_ms: d.batch_max_age.as_millis() as u64,
            queue_capacity: d.queue_capacity,
            writers: d.writers,
            gap_check_interval_s: d.gap_check_interval.as_secs(),
        }
    }
}

impl Default for PolicySettings {
    fn default() -> Self {
        let p = Policy::default();
        PolicySettings {
            resume_window_s: p.resume_window.num_seconds().unsigned_abs(),
            resume_tolerance_s: p.resume_tolerance.num_seconds().unsigned_abs(),
            skew_window_s: p.skew_window.num_seconds().unsigned_abs(),
            gap_window_s: p.gap_window.num_seconds().unsigned_abs(),
            default_max_depth_um: p.default_max_depth_um,
        }
    }
}

impl Config {
    /// The embedded defaults in `data_dir`, on free ports: SQLite, the
    /// embedded broker (`pentrace demo`, tests).
    pub fn embedded(data_dir: std::path::PathBuf) -> Config {
        let any = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut config = Config {
            data_dir,
            grpc_addr: any(0),
            http_addr: any(0),
            ..Config::default()
        };
        config.mqtt.embedded_port = 0;
        config
    }

    /// The SQLite file of the embedded store.
    pub fn sqlite_path(&self) -> std::path::PathBuf {
        self.data_dir.join("pentrace.db")
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// `PENTRACE_*` variables that are not configuration keys: the config file
/// path (a flag's variable), the tests' own settings, and Kubernetes
/// service links.
fn ignored_env(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    // figment hands the filter `audit.checkpoint_key` (its `__` already
    // split into `.`); the top-level key is the part before the first `.`.
    let top = key.split(['.']).next().unwrap_or_default();
    let top = top.split("__").next().unwrap_or_default();
    !CONFIG_KEYS.contains(&top)
}

/// Top-level keys `PENTRACE_*` variables may set. Other `PENTRACE_*`
/// variables belong to other commands (`PENTRACE_AUDIT_KEY`, the tests'
/// `PENTRACE_TEST_*`) or to Kubernetes service links
/// (`PENTRACE_SERVICE_HOST`, `PENTRACE_PORT_…`), and are not the server's.
const CONFIG_KEYS: [&str; 16] = [
    "grpc_addr",
    "http_addr",
    "database_url",
    "data_dir",
    "database_max_connections",
    "database_role",
    "auto_register",
    "default_clinic",
    "max_message_bytes",
    "log_format",
    "ingest",
    "policy",
    "mqtt",
    "audit",
    "tls",
    "fleet",
];

/// Values given on the command line; `None` = not given.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_register: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttOverrides>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsOverrides>,
}

/// TLS values given on the command line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<bool>,
}

/// MQTT values given on the command line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MqttOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `Some(false)`: no MQTT at all (`--no-mqtt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded_port: Option<u16>,
}

impl Config {
    /// Loads the layers in order and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(
                Env::prefixed("PENTRACE_")
                    .split("__")
                    .filter(|k| !ignored_env(k.as_str())),
            )
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database_url".into()),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| ConfigError::Invalid {
            key,
            problem: problem.into(),
        };
        let url = self.database_url.as_ref().map(|u| u.expose_secret());
        if url.is_some_and(|u| !(u.starts_with("postgres://") || u.starts_with("postgresql://"))) {
            return Err(invalid(
                "database_url",
                "must be a postgres:// URL (unset for the embedded SQLite store)",
            ));
        }
        // A role meant to keep the server from rewriting the audit tables
        // must not be silently ignored: SQLite has no roles.
        if self.database_role.is_some() && url.is_none() {
            return Err(invalid(
                "database_role",
                "applies to PostgreSQL only; set database_url, or unset database_role for the \
                 embedded SQLite store",
            ));
        }
        if self.database_max_connections < 2 {
            return Err(invalid("database_max_connections", "must be at least 2"));
        }
        if self.ingest.batch_max_messages == 0 {
            return Err(invalid("ingest.batch_max_messages", "must be at least 1"));
        }
        if self.ingest.queue_capacity == 0 {
            return Err(invalid("ingest.queue_capacity", "must be at least 1"));
        }
        if !(1..=16).contains(&self.ingest.writers) {
            return Err(invalid("ingest.writers", "must be between 1 and 16"));
        }
        if self.database_url.is_some()
            && (self.database_max_connections as usize) <= self.ingest.writers
        {
            return Err(invalid(
                "database_max_connections",
                "must exceed ingest.writers (each writer holds a connection while it commits)",
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err(invalid("max_message_bytes", "must be at least 1024"));
        }
        if let Some(url) = &self.mqtt.url {
            parse_url(url).map_err(|p| ConfigError::Invalid {
                key: "mqtt.url",
                problem: p,
            })?;
        }
        if self.mqtt.dynsec_admin.is_some() && self.mqtt.url.is_none() {
            return Err(invalid(
                "mqtt.dynsec_admin",
                "needs mqtt.url: only an external Mosquitto has dynamic security",
            ));
        }
        if self.mqtt.keep_alive_s == 0 {
            return Err(invalid("mqtt.keep_alive_s", "must be between 1 and 65535"));
        }
        if self.mqtt.client_id.trim().is_empty() {
            return Err(invalid("mqtt.client_id", "must not be empty"));
        }
        if self.mqtt.max_packet_bytes <= self.max_message_bytes {
            return Err(invalid(
                "mqtt.max_packet_bytes",
                "must exceed max_message_bytes",
            ));
        }
        if self.tls.plaintext
            && !(self.grpc_addr.ip().is_loopback() && self.http_addr.ip().is_loopback())
        {
            return Err(invalid(
                "tls.plaintext",
                "plaintext is allowed only when grpc_addr and http_addr are loopback addresses",
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid("tls.cert", "tls.cert and tls.key go together"));
        }
        let periods = [
            ("policy.resume_window_s", self.policy.resume_window_s),
            ("policy.resume_tolerance_s", self.policy.resume_tolerance_s),
            ("policy.skew_window_s", self.policy.skew_window_s),
            ("policy.gap_window_s", self.policy.gap_window_s),
        ];
        if let Some((key, _)) = periods.iter().find(|(_, v)| *v > MAX_POLICY_S) {
            return Err(invalid(key, "must be at most 315360000 (ten years)"));
        }
        if !(1..=90 * 86_400).contains(&self.fleet.lookback_s) {
            return Err(invalid(
                "fleet.lookback_s",
                "must be between 1 and 7776000 (90 days)",
            ));
        }
        if !(1..=3650).contains(&self.fleet.certificate_warning_days) {
            return Err(invalid(
                "fleet.certificate_warning_days",
                "must be between 1 and 3650",
            ));
        }
        if !(1..=3650 * 86_400).contains(&self.fleet.silent_after_s) {
            return Err(invalid(
                "fleet.silent_after_s",
                "must be between 1 and 315360000 (3650 days)",
            ));
        }
        if self.default_clinic.trim().is_empty() {
            return Err(invalid("default_clinic", "must not be empty"));
        }
        Ok(())
    }

    /// The pipeline settings this configuration describes.
    pub fn ingest_config(&self) -> IngestConfig {
        IngestConfig {
            batch_max_messages: self.ingest.batch_max_messages,
            batch_max_age: Duration::from_millis(self.ingest.batch_max_age_ms),
            queue_capacity: self.ingest.queue_capacity,
            writers: if self.database_url.is_some() {
                self.ingest.writers
            } else {
                1
            },
            auto_register_clinic: self.auto_register.then(|| self.default_clinic.clone()),
            gap_check_interval: Duration::from_secs(self.ingest.gap_check_interval_s.max(1)),
            policy: Policy {
                resume_window: seconds(self.policy.resume_window_s),
                resume_tolerance: seconds(self.policy.resume_tolerance_s),
                skew_window: seconds(self.policy.skew_window_s),
                gap_window: seconds(self.policy.gap_window_s),
                default_max_depth_um: self.policy.default_max_depth_um,
                ..Policy::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let config = Config::load(None, &Overrides::default()).expect("defaults are valid");
        assert!(
            config.database_url.is_none(),
            "the embedded store is the default"
        );
        assert_eq!(
            config.sqlite_path(),
            std::path::PathBuf::from("pentrace-data/pentrace.db")
        );
        assert_eq!(config.max_message_bytes, 1024 * 1024);
    }

    #[test]
    fn a_wrong_key_in_the_file_is_named() {
        let dir = std::env::temp_dir().join(format!("pentrace-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[ingest]\nbatch_max_mesages = 10\n").expect("write");
        let err = Config::load(Some(&file), &Overrides::default()).expect_err("typo");
        assert!(err.to_string().contains("batch_max_mesages"), "{err}");
        std::fs::write(&file, "[ingest]\nbatch_max_messages = 0\n").expect("write");
        let err = Config::load(Some(&file), &Overrides::default()).expect_err("zero");
        assert!(
            err.to_string().contains("ingest.batch_max_messages"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_mqtt_session_and_keep_alive_settings() {
        let mut config = Config::load(None, &Overrides::default()).expect("defaults");
        // A graceful stop ends the session unless told otherwise.
        assert!(!config.mqtt.keep_session_on_shutdown);
        assert_eq!(config.mqtt.keep_alive(), std::time::Duration::from_secs(30));
        config.mqtt.keep_alive_s = 0;
        let err = config.validate().expect_err("zero keep-alive");
        assert!(err.to_string().contains("mqtt.keep_alive_s"), "{err}");
    }

    #[test]
    fn the_fleet_policy_is_bounded_so_no_setting_can_overflow_the_clock() {
        let mut config = Config::load(None, &Overrides::default()).expect("defaults");
        assert_eq!(
            config.fleet.policy(),
            crate::fleet_checks::FleetPolicy::default()
        );
        config.fleet.lookback_s = u64::MAX;
        let err = config
            .validate()
            .expect_err("a lookback of u64::MAX seconds");
        assert!(err.to_string().contains("fleet.lookback_s"), "{err}");
        config.fleet.lookback_s = 3600;
        config.fleet.silent_after_s = 0;
        let err = config.validate().expect_err("silent at once");
        assert!(err.to_string().contains("fleet.silent_after_s"), "{err}");
        config.fleet.silent_after_s = 3600;
        config.fleet.certificate_warning_days = 100_000;
        let err = config.validate().expect_err("a warning of 270 years");
        assert!(
            err.to_string().contains("certificate_warning_days"),
            "{err}"
        );
    }

    #[test]
    fn a_policy_period_beyond_ten_years_is_refused_not_a_panic() {
        let mut config = Config::load(None, &Overrides::default()).expect("defaults");
        config.policy.resume_window_s = u64::MAX;
        let err = config.validate().expect_err("u64::MAX seconds");
        assert!(err.to_string().contains("policy.resume_window_s"), "{err}");
        // And were it not validated, the conversion saturates.
        assert_eq!(
            config.ingest_config().policy.resume_window,
            chrono::Duration::MAX
        );
        config.policy.resume_window_s = 600;
        config.policy.gap_window_s = i64::MAX as u64;
        let err = config.validate().expect_err("i64::MAX seconds");
        assert!(err.to_string().contains("policy.gap_window_s"), "{err}");
    }

    #[test]
    fn a_database_role_without_postgres_is_refused() {
        let mut config = Config::load(None, &Overrides::default()).expect("defaults");
        config.database_role = Some("pentrace_app".into());
        let err = config.validate().expect_err("a role on SQLite");
        assert!(err.to_string().contains("database_role"), "{err}");
        config.database_url = Some(SecretString::from("postgres://db/pentrace"));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn writers_are_bounded_and_sqlite_has_one() {
        let mut config = Config::load(None, &Overrides::default()).expect("defaults");
        assert_eq!(config.ingest.writers, 2);
        assert_eq!(config.ingest_config().writers, 1, "SQLite has one writer");
        config.database_url = Some(SecretString::from("postgres://db/pentrace"));
        assert_eq!(config.ingest_config().writers, 2);
        config.ingest.writers = 0;
        let err = config.validate().expect_err("no writer");
        assert!(err.to_string().contains("ingest.writers"), "{err}");
        config.ingest.writers = 8;
        let err = config
            .validate()
            .expect_err("as many writers as connections");
        assert!(
            err.to_string().contains("database_max_connections"),
            "{err}"
        );
        config.database_max_connections = 9;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn every_configuration_key_can_be_set_from_the_environment() {
        let keys = serde_json::to_value(Config::default()).expect("serializes");
        for key in keys.as_object().expect("an object").keys() {
            assert!(
                !ignored_env(key),
                "PENTRACE_{} would be ignored",
                key.to_uppercase()
            );
        }
    }

    #[test]
    fn only_configuration_keys_are_read_from_the_environment() {
        for other in [
            "TOKEN",
            "AUDIT_KEY",
            "TEST_DATABASE_URL",
            "SERVICE_HOST",
            "PORT_50051_TCP",
            "CONFIG",
        ] {
            assert!(ignored_env(other), "{other}");
        }
        for key in [
            "GRPC_ADDR",
            "mqtt__url",
            "INGEST__BATCH_MAX_MESSAGES",
            "AUDIT__CHECKPOINT_KEY",
            "audit.checkpoint_key",
            "mqtt.embedded_port",
        ] {
            assert!(!ignored_env(key), "{key}");
        }
    }

    #[test]
    fn the_embedded_broker_is_the_default_and_a_url_or_no_mqtt_turns_it_off() {
        let config = Config::load(None, &Overrides::default()).expect("defaults");
        assert!(config.mqtt.uses_embedded());
        assert_eq!(config.mqtt.embedded_port, 1883);
        let with = |mqtt: MqttOverrides| Overrides {
            mqtt: Some(mqtt),
            ..Overrides::default()
        };
        let port = Config::load(
            None,
            &with(MqttOverrides {
                embedded_port: Some(0),
                ..MqttOverrides::default()
            }),
        )
        .expect("port 0");
        assert_eq!(port.mqtt.embedded_port, 0);
        let external = Config::load(
            None,
            &with(MqttOverrides {
                url: Some("mqtt://127.0.0.1:1884".into()),
                ..MqttOverrides::default()
            }),
        )
        .expect("url");
        assert!(!external.mqtt.uses_embedded());
        let off = Config::load(
            None,
            &with(MqttOverrides {
                embedded: Some(false),
                ..MqttOverrides::default()
            }),
        )
        .expect("off");
        assert!(!off.mqtt.uses_embedded() && off.mqtt.url.is_none());
    }

    #[test]
    // figment's own closure type: its error is figment's.
    #[allow(clippy::result_large_err)]
    fn nested_variables_reach_their_keys() {
        // Set for this test only; the key is unique to it.
        // SAFETY-free: set_var is safe in edition 2024 only via unsafe, so
        // go through figment's own Jail instead.
        figment::Jail::expect_with(|jail| {
            jail.set_env("PENTRACE_INGEST__BATCH_MAX_MESSAGES", "777");
            jail.set_env("PENTRACE_AUDIT__CHECKPOINT_INTERVAL_S", "5");
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.ingest.batch_max_messages, 777);
            assert_eq!(config.audit.checkpoint_interval_s, Some(5));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_dynsec_admin_is_read_from_the_environment_never_printed_and_needs_a_url() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PENTRACE_MQTT__DYNSEC_ADMIN__USERNAME", "admin");
            jail.set_env("PENTRACE_MQTT__DYNSEC_ADMIN__PASSWORD", "s3cret-admin");
            let err = Config::load(None, &Overrides::default()).expect_err("no url");
            assert!(err.to_string().contains("mqtt.dynsec_admin"), "{err}");
            jail.set_env("PENTRACE_MQTT__URL", "mqtt://broker:1883");
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            let admin = config.mqtt.dynsec_admin.as_ref().expect("admin");
            assert_eq!(admin.username, "admin");
            assert_eq!(admin.password.expose_secret(), "s3cret-admin");
            let printed = format!(
                "{config:?} {}",
                serde_json::to_string(&config).expect("json")
            );
            assert!(!printed.contains("s3cret-admin"), "{printed}");
            jail.set_env("PENTRACE_MQTT__DYNSEC_ADMIN__PASSWORD", "");
            jail.set_env("PENTRACE_MQTT__DYNSEC_ADMIN__USER", "typo");
            let err = Config::load(None, &Overrides::default()).expect_err("typo");
            assert!(err.to_string().contains("user"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_database_url_never_serializes() {
        let config = Config {
            database_url: Some(SecretString::from("postgres://u:secret@db/pentrace")),
            ..Config::default()
        };
        let json = serde_json::to_string(&config).expect("serialize");
        assert!(!json.contains("postgres://"), "{json}");
    }
}
