//! `pentrace mqtt`: the broker side of MQTT ingest, for operators.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use pentrace_server::config::{MqttOverrides, Overrides};
use pentrace_server::mqtt::dynsec::{CONSUMER_ROLE, consumer_acls, pen_role};
use pentrace_server::mqtt::{MqttSettings, end_session, parse_url};

use crate::serve::{ConfigArgs, load, runtime};

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
    /// Set up an external Mosquitto's dynamic security plugin for pentrace
    /// (deploy/mosquitto/README.md): everything denied by default, the
    /// consumer role, and a client per consumer whose client id is reserved
    /// for it (username = client id). Safe to run again; a running consumer
    /// whose password it sets reconnects once. Not the pens: each gets its
    /// own account and role with its credential. Needs mqtt.dynsec_admin
    /// (PENTRACE_MQTT__DYNSEC_ADMIN__USERNAME, ..._PASSWORD) and the
    /// consumers' mqtt.password.
    PrepareBroker(PrepareBrokerArgs),
}

/// Options of `pentrace mqtt prepare-broker`.
#[derive(Debug, Args)]
pub struct PrepareBrokerArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// The broker, mqtt://host:port (else mqtt.url).
    #[arg(long)]
    mqtt_url: Option<String>,
    /// A further consumer with the same password (mqtt.password), e.g. the
    /// Kubernetes replicas pentrace-0 to pentrace-5; repeatable. The
    /// configured mqtt.username is prepared too, if set.
    #[arg(long = "consumer", value_name = "USERNAME")]
    consumers: Vec<String>,
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
        MqttCommand::PrepareBroker(args) => prepare_broker(args),
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

fn prepare_broker(args: PrepareBrokerArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        mqtt: Some(MqttOverrides {
            url: args.mqtt_url,
            ..MqttOverrides::default()
        }),
        ..Overrides::default()
    };
    let config = load(&args.common, overrides)?;
    let mqtt = &config.mqtt;
    let password = mqtt
        .password
        .clone()
        .context("mqtt.password (PENTRACE_MQTT__PASSWORD) is not set: the consumers' password")?;
    let mut names = Vec::new();
    if let Some(user) = &mqtt.username {
        anyhow::ensure!(
            *user == mqtt.client_id,
            "mqtt.username {user:?} differs from mqtt.client_id {:?}: the broker reserves \
             each consumer's client id for its username",
            mqtt.client_id
        );
        names.push(user.clone());
    }
    for name in args.consumers {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    anyhow::ensure!(
        !names.is_empty(),
        "no consumer: set mqtt.username (equal to mqtt.client_id) or name them with --consumer"
    );
    let url = mqtt.url.clone().unwrap_or_default();
    let consumers: Vec<_> = names
        .iter()
        .map(|n| (n.clone(), password.clone()))
        .collect();
    runtime()?.block_on(async {
        let accounts = mqtt
            .broker_accounts()
            .await
            .with_context(|| format!("cannot reach the broker's dynamic security at {url}"))?
            .context(
                "mqtt.dynsec_admin is not set (PENTRACE_MQTT__DYNSEC_ADMIN__USERNAME and \
                 PENTRACE_MQTT__DYNSEC_ADMIN__PASSWORD)",
            )?;
        accounts
            .prepare(&consumers)
            .await
            .with_context(|| format!("cannot prepare the accounts of {url}"))
    })?;
    println!("{url}: default ACL access deny (publish, receive, subscribe, unsubscribe)");
    println!("role {CONSUMER_ROLE}:");
    for acl in consumer_acls() {
        println!("  {} {}", acl.acltype, acl.topic);
    }
    for name in &names {
        println!("consumer {name}: client id {name} (reserved), role {CONSUMER_ROLE}");
    }
    println!(
        "pens: one role each ({}), made when a pen's credential is issued",
        pen_role("<device id>")
    );
    Ok(())
}
