//! `pentrace serve` and `pentrace migrate`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pentrace_server::config::{MqttOverrides, Overrides, TlsOverrides};
use pentrace_server::{Application, Config, telemetry};
use std::sync::Arc;

use pentrace_store::Store;

/// Options shared by commands that reach the database.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file (optional; defaults, then this file, then
    /// PENTRACE_* variables, then flags).
    #[arg(long, env = "PENTRACE_CONFIG")]
    config: Option<PathBuf>,
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// gRPC listen address.
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Register unknown devices to the default clinic instead of rejecting them.
    #[arg(long)]
    auto_register: bool,
    /// External MQTT broker to consume device messages from
    /// (mqtt://host:port); without it, pentrace runs its own broker on
    /// 127.0.0.1.
    #[arg(long, conflicts_with = "no_mqtt")]
    mqtt_url: Option<String>,
    /// Fixed MQTT client id of this process (persistent session).
    #[arg(long)]
    mqtt_client_id: Option<String>,
    /// Port of the embedded MQTT broker on 127.0.0.1 (default 1883; 0 = any
    /// free port, printed at start-up).
    #[arg(long, value_name = "PORT", conflicts_with_all = ["mqtt_url", "no_mqtt"])]
    mqtt_port: Option<u16>,
    /// No MQTT at all: neither the embedded broker nor an external one
    /// (devices then use gRPC only).
    #[arg(long)]
    no_mqtt: bool,
    /// Serve gRPC and HTTP without TLS (loopback addresses only; devices
    /// then authenticate with secrets only). Default: TLS with the
    /// certificates in `<data dir>/pki`, created on first start.
    #[arg(long)]
    plaintext: bool,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    common: ConfigArgs,
}

pub fn load(common: &ConfigArgs, mut overrides: Overrides) -> anyhow::Result<Config> {
    overrides.database_url = common.database_url.clone();
    Ok(Config::load(common.config.as_deref(), &overrides)?)
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        database_url: None,
        auto_register: args.auto_register.then_some(true),
        mqtt: Some(MqttOverrides {
            url: args.mqtt_url,
            client_id: args.mqtt_client_id,
            embedded: args.no_mqtt.then_some(false),
            embedded_port: args.mqtt_port,
        }),
        tls: Some(TlsOverrides {
            plaintext: args.plaintext.then_some(true),
        }),
    };
    let mut config = load(&args.common, overrides)?;
    if args.no_mqtt {
        // Also over a broker URL from the file or the environment.
        config.mqtt.url = None;
    }
    telemetry::init(config.log_format);
    runtime()?.block_on(async {
        let app = Application::build(config)
            .await
            .context("cannot start the server")?;
        // One line a person or a script can read the ports from, then what
        // the store offers (TimescaleDB or plain PostgreSQL, schema version).
        println!("{}", app.summary());
        match app.store_status().await {
            Ok(status) => println!("{}", pentrace_store::summary_line(&status)),
            Err(e) => tracing::warn!(error = %e, "cannot read the store's status"),
        }
        let stop = app.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; shutting down");
            stop.cancel();
        });
        app.run_until_stopped()
            .await
            .context("server stopped with an error")
    })
}

/// The configuration `pentrace serve` would use, with no command-line
/// overrides (for commands that share its files: `pentrace device`, `ca`).
pub fn config_of(common: &ConfigArgs) -> anyhow::Result<Config> {
    load(common, Overrides::default())
}

/// Opens the configured store (PostgreSQL with a database URL, else the
/// embedded SQLite file in the data directory) with its schema up to date.
pub async fn open_store(common: &ConfigArgs) -> anyhow::Result<Arc<dyn Store>> {
    let config = load(common, Overrides::default())?;
    let described = pentrace_server::storage::describe(&config);
    pentrace_server::storage::open(&config, 4)
        .await
        .with_context(|| format!("cannot open the store ({described})"))
}

pub fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        open_store(&args.common).await?;
        println!("migrations applied");
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
