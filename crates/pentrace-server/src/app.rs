//! The application the binary and the tests start: build (bind, migrate,
//! start the pipeline), then run until stopped, then drain.

use std::net::SocketAddr;
use std::sync::Arc;

use pentrace_ingest::Pipeline;
use pentrace_proto::v1::compliance_server::ComplianceServer;
use pentrace_proto::v1::fleet_server::FleetServer;
use pentrace_proto::v1::registry_server::RegistryServer;
use pentrace_proto::v1::telemetry_server::TelemetryServer;
use pentrace_store::Store;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::grpc::compliance::ComplianceService;
use crate::grpc::fleet::FleetService;
use crate::grpc::registry::RegistryService;
use crate::grpc::telemetry::TelemetryService;
use crate::http::{self, HttpState};
use crate::mqtt::embedded::{EmbeddedBroker, EmbeddedConfig};

/// Why the application could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] pentrace_store::StoreError),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error(transparent)]
    AuditKey(#[from] crate::audit_trail::KeyError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Ports the application actually listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub grpc: u16,
    pub http: u16,
}

/// A built, not yet running, pentrace server.
#[derive(Debug)]
pub struct Application {
    config: Config,
    store: Arc<dyn Store>,
    grpc: TcpListener,
    http: TcpListener,
    /// The embedded MQTT broker (bound, served once running), when no
    /// external one is configured.
    broker: Option<EmbeddedBroker>,
    tls: crate::tls::Resolved,
    shutdown: CancellationToken,
}

impl Application {
    /// Connects and migrates the store, and binds both listeners (port 0 =
    /// any free port).
    pub async fn build(config: Config) -> Result<Application, AppError> {
        // A configured key that cannot be read stops start-up, not a
        // checkpoint an hour later.
        if let Some(path) = &config.audit.checkpoint_key {
            crate::audit_trail::read_key(path)?;
        }
        let tls = crate::tls::resolve(&config)?;
        let store = crate::storage::open(&config, config.database_max_connections).await?;
        let grpc = bind(config.grpc_addr).await?;
        let http = bind(config.http_addr).await?;
        let broker = if config.mqtt.uses_embedded() {
            let embedded = EmbeddedConfig {
                port: config.mqtt.embedded_port,
                max_message_bytes: config.max_message_bytes,
            };
            let broker = EmbeddedBroker::bind(&embedded)
                .await
                .map_err(|e| AppError::Mqtt(e.to_string()))?;
            Some(broker)
        } else {
            None
        };
        Ok(Application {
            config,
            store,
            grpc,
            http,
            broker,
            tls,
            shutdown: CancellationToken::new(),
        })
    }

    /// The ports bound.
    pub fn ports(&self) -> Ports {
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).unwrap_or(0);
        Ports {
            grpc: port(&self.grpc),
            http: port(&self.http),
        }
    }

    /// One line saying where it listens and what it uses.
    pub fn summary(&self) -> String {
        let ports = self.ports();
        let mqtt = match (&self.broker, &self.config.mqtt.url) {
            (Some(broker), _) => format!("embedded:{}", broker.addr()),
            (None, Some(url)) => url.clone(),
            (None, None) => "off".to_owned(),
        };
        let tls = if self.tls.tls.is_some() { "on" } else { "off" };
        format!(
            "pentrace serving: grpc=127.0.0.1:{} http=127.0.0.1:{} store={} mqtt={mqtt} tls={tls}",
            ports.grpc,
            ports.http,
            crate::storage::describe(&self.config)
        )
    }

    /// The store the application serves from.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Where pens reach the broker: the embedded one, or the configured URL.
    pub fn mqtt_url(&self) -> Option<String> {
        match (&self.broker, &self.config.mqtt.url) {
            (Some(broker), _) => Some(format!("mqtt://{}", broker.addr())),
            (None, url) => url.clone(),
        }
    }

    /// What the store reports about itself (kind, TimescaleDB, schema).
    pub async fn store_status(
        &self,
    ) -> Result<pentrace_store::StoreStatus, pentrace_store::StoreError> {
        self.store.status().await
    }

    /// Cancel it to stop the application gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then stops accepting,
    /// lets open streams flush their acks, drains the pipeline and returns.
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        let Application {
            config,
            store,
            grpc,
            http,
            broker,
            tls,
            shutdown,
        } = self;
        let auth_metrics = crate::device_auth::AuthMetrics::default();
        let device_auth =
            crate::device_auth::DeviceAuthenticator::new(store.clone(), auth_metrics.clone());
        // On shutdown the writer stops waiting out a store outage: whatever
        // is not committed by then is not acknowledged, and is resent.
        let (pipeline, ingest) =
            Pipeline::start(store.clone(), config.ingest_config(), shutdown.clone());
        let mqtt_metrics = crate::mqtt::MqttMetrics::default();
        // The embedded broker feeds the pipeline itself; an external one
        // through the consumer.
        let mqtt = match (broker, &config.mqtt.url) {
            (Some(broker), _) => Some(broker.spawn(
                ingest.clone(),
                device_auth.clone(),
                mqtt_metrics.clone(),
                shutdown.clone(),
            )),
            (None, Some(_)) => Some(
                crate::mqtt::spawn(
                    &config.mqtt,
                    ingest.clone(),
                    mqtt_metrics.clone(),
                    config.max_message_bytes,
                    shutdown.clone(),
                )
                .map_err(AppError::Mqtt)?,
            ),
            (None, None) => None,
        };
        if let Some(path) = &config.audit.checkpoint_key {
            let key = crate::audit_trail::read_key(path)?;
            let every = std::time::Duration::from_secs(
                config.audit.checkpoint_interval_s.unwrap_or(3600).max(1),
            );
            tokio::spawn(crate::audit_trail::checkpoint_schedule(
                store.clone(),
                key,
                every,
                shutdown.clone(),
            ));
        }
        let mut registry = Registry::default();
        ingest.metrics().register(&mut registry);
        mqtt_metrics.register(&mut registry);
        auth_metrics.register(&mut registry);
        let http_state = HttpState {
            store: store.clone(),
            health: ingest.health().clone(),
            registry: Arc::new(registry),
        };
        let flags = ingest.flag_feed().clone();
        let limit = config.max_message_bytes;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<TelemetryServer<TelemetryService>>()
            .await;
        let mut grpc_builder = tonic::transport::Server::builder();
        if let Some(server_tls) = &tls.tls {
            grpc_builder = grpc_builder.tls_config(crate::tls::grpc_config(server_tls))?;
        }
        let grpc_server = grpc_builder
            .add_service(health_service)
            .add_service(
                TelemetryServer::new(TelemetryService::new(
                    ingest,
                    device_auth.clone(),
                    shutdown.clone(),
                ))
                .max_decoding_message_size(limit),
            )
            .add_service(FleetServer::new(FleetService::new(
                store.clone(),
                config.fleet.policy(),
            )))
            .add_service(ComplianceServer::new(ComplianceService::new(
                store.clone(),
                flags.clone(),
            )))
            .add_service(RegistryServer::new(RegistryService::new(
                store.clone(),
                flags,
                tls.ca.clone(),
                config.mqtt.clone(),
            )))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(grpc),
                shutdown.clone().cancelled_owned(),
            );
        let router = http::router(http_state);
        let http_stopped = shutdown.clone().cancelled_owned();
        let http_server = async move {
            match &tls.tls {
                Some(server_tls) => {
                    let listener = crate::tls::TlsListener::new(
                        http,
                        server_tls.http.clone(),
                        shutdown.clone(),
                    );
                    axum::serve(listener, router)
                        .with_graceful_shutdown(http_stopped)
                        .await
                }
                None => {
                    axum::serve(http, router)
                        .with_graceful_shutdown(http_stopped)
                        .await
                }
            }
        };
        let (grpc_result, http_result) = tokio::join!(grpc_server, http_server);
        tracing::info!("listeners closed; draining the ingest pipeline");
        // The consumer, or the embedded broker's connections, settle what
        // they took and let go of the pipeline.
        if let Some(mqtt) = mqtt {
            let _ = mqtt.await;
        }
        pipeline.drained().await;
        grpc_result?;
        http_result.map_err(AppError::Http)?;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}
