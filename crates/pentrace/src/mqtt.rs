//! `pentrace mqtt`: the broker side of MQTT ingest, for operators.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use pentrace_server::mqtt::{MqttSettings, end_session, parse_url};

/// How long to wait for the broker.
const TIMEOUT: Duration = Duration::from_secs(10);

/// MQTT subcommands.
#[derive(Debug, Subcommand)]
pub enum MqttCommand {
    /// End the persistent session of a pentrace process that is gone for
    /// good (crashed and not coming back, scaled down, client id retired).
    /// Mosquitto keeps such a session in the shared subscription and goes on
    /// queueing its share of the device messages for it; ending it sends
    /// the whole traffic to the remaining processes. What was queued for it
    /// is dropped: pens resend whatever the server has not acknowledged.
    /// Never for the client id of a running process (the broker would
    /// disconnect it and drop what it has in flight).
    ForgetSession(ForgetSessionArgs),
}

/// Options of `pentrace mqtt forget-session`.
#[derive(Debug, Args)]
pub struct ForgetSessionArgs {
    /// The client id whose session to end (that process's mqtt.client_id).
    #[arg(long)]
    client_id: String,
    /// The broker, mqtt://host:port.
    #[arg(long, env = "PENTRACE_MQTT__URL")]
    mqtt_url: String,
    /// Broker user, if the broker wants one; the password is read from
    /// PENTRACE_MQTT__PASSWORD only, so it stays out of the process list.
    #[arg(long, env = "PENTRACE_MQTT__USERNAME")]
    username: Option<String>,
}

/// Runs an MQTT subcommand.
pub fn run(cmd: MqttCommand) -> anyhow::Result<()> {
    match cmd {
        MqttCommand::ForgetSession(args) => forget_session(args),
    }
}

fn forget_session(args: ForgetSessionArgs) -> anyhow::Result<()> {
    let (host, port) = parse_url(&args.mqtt_url).map_err(anyhow::Error::msg)?;
    let settings = MqttSettings {
        url: Some(args.mqtt_url.clone()),
        client_id: args.client_id.clone(),
        username: args.username,
        password: std::env::var("PENTRACE_MQTT__PASSWORD")
            .ok()
            .map(Into::into),
        ..MqttSettings::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(end_session(&settings, &host, port, TIMEOUT))
        .with_context(|| {
            format!(
                "cannot end the session of {:?} at {}",
                args.client_id, args.mqtt_url
            )
        })?;
    println!("session of {:?} ended at {}", args.client_id, args.mqtt_url);
    Ok(())
}
