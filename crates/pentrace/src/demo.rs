//! `pentrace demo`: the whole product on its embedded defaults, in a
//! temporary data directory, checked end to end: a few dozen simulated pens
//! over MQTT and gRPC with every fault kind, then what a clinic owner and a
//! compliance officer would see. Exit 0 only when everything checked out.

use anyhow::Context;
use chrono::{Duration, Utc};
use clap::Args;
use pentrace_domain::audit::Actor;
use pentrace_server::auth::token_hash;
use pentrace_server::report::{self, Period, ReportFormat};
use pentrace_server::{Application, Config, audit_trail};
use pentrace_sim::{ProgressMode, SimConfig, Transport};
use pentrace_store::{Role, Store};
use std::path::{Path, PathBuf};

use crate::serve::runtime;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Pens per transport (MQTT and gRPC each get this many).
    #[arg(long, default_value_t = 24)]
    pens: usize,
    /// Keep the server and its data directory after the checks, for
    /// exploring (stop with Ctrl-C).
    #[arg(long)]
    keep: bool,
    /// Seed of the simulation (the same seed gives the same run).
    #[arg(long, default_value_t = 2026)]
    seed: u64,
}

pub fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("pentrace-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let outcome = runtime()?.block_on(demo(&args, &dir));
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

async fn demo(args: &DemoArgs, dir: &Path) -> anyhow::Result<bool> {
    let config = Config::embedded(dir.to_path_buf());
    let app = Application::build(config)
        .await
        .context("cannot start the embedded server")?;
    println!("{}", app.summary());
    let store = app.store();
    let token = admin_token(store.as_ref()).await?;
    // The server made its CA and TLS certificate in the data directory;
    // the pens trust that CA and authenticate with secrets issued at setup.
    let grpc = format!("https://127.0.0.1:{}", app.ports().grpc);
    let ca = dir.join("pki").join("ca.pem");
    let mqtt = app
        .mqtt_url()
        .context("the embedded broker did not start")?;
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());

    println!(
        "\nsimulating {} pens over MQTT and {} over gRPC, every fault kind, ~1 minute",
        args.pens, args.pens
    );
    let mqtt_run = sim(
        args,
        &grpc,
        &mqtt,
        &token,
        &ca,
        Transport::Mqtt,
        "demo-mqtt",
        ProgressMode::Auto,
    )?;
    let grpc_run = sim(
        args,
        &grpc,
        &mqtt,
        &token,
        &ca,
        Transport::Grpc,
        "demo-grpc",
        ProgressMode::Off,
    )?;
    let (mqtt_ok, grpc_ok) = tokio::join!(run_and_verify(mqtt_run), run_and_verify(grpc_run));
    let sims_ok = mqtt_ok? && grpc_ok?;

    fleet(store.as_ref()).await?;
    let audit_ok = audit(store.as_ref()).await?;
    let report = sterility_report(store.as_ref(), dir).await?;
    let ok = sims_ok && audit_ok;
    println!(
        "\nsterility report (clinic demo-mqtt): {}",
        report.display()
    );
    println!(
        "demo: {}",
        if ok {
            "everything checked out"
        } else {
            "FAILED (see above)"
        }
    );

    if args.keep {
        println!(
            "\nkept running: data in {}\n  gRPC {grpc}  MQTT {mqtt}\n  admin token: {token}\nCtrl-C to stop.",
            dir.display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    stop.cancel();
    server
        .await
        .context("server task")?
        .context("server stopped with an error")?;
    Ok(ok)
}

/// An admin and a token for the simulator's setup and verification.
pub(crate) async fn admin_token(store: &dyn Store) -> anyhow::Result<String> {
    let admin = store
        .create_user("Demo Admin", Role::Admin, &[], &Actor::System)
        .await?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    let token = format!("ptk_{}", hex::encode(bytes));
    store
        .issue_token(admin.id, &token_hash(&token), &Actor::System)
        .await?;
    Ok(token)
}

// One argument per thing the two runs differ in or share; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn sim(
    args: &DemoArgs,
    grpc: &str,
    mqtt: &str,
    token: &str,
    ca: &Path,
    transport: Transport,
    clinic: &str,
    progress: ProgressMode,
) -> anyhow::Result<SimConfig> {
    Ok(SimConfig {
        devices: args.pens,
        transport,
        grpc_url: grpc.to_owned(),
        token: Some(token.to_owned()),
        ca_cert: Some(ca.to_path_buf()),
        mqtt_url: mqtt.to_owned(),
        clinic: clinic.to_owned(),
        sessions: 4,
        batches: 20,
        compression: 60.0,
        seed: args.seed,
        setup: true,
        faults: DEMO_FAULTS
            .parse()
            .map_err(|e| anyhow::anyhow!("demo fault rates: {e}"))?,
        verify: true,
        progress,
        ..SimConfig::default()
    })
}

/// Every fault kind, often enough that a few dozen pens show each.
const DEMO_FAULTS: &str = "reuse=0.08,moved=0.05,expired=0.04,recalled=0.04,unknown=0.04,\
    bad_udi=0.04,resume=0.08,cartridge_swap=0.05,resume_overuse=0.05,backlog=0.15,depth=0.06,\
    skew=0.04,disconnect=0.03,dup=0.05,reorder=0.03";

async fn run_and_verify(config: SimConfig) -> anyhow::Result<bool> {
    let report = pentrace_sim::run(&config).await?;
    let verification = pentrace_sim::verify(&config, &report).await?;
    println!(
        "\n== {} over {:?}: what the compliance officer sees, against the ground truth",
        config.clinic, config.transport
    );
    println!("{report}");
    println!("{verification}");
    Ok(verification.passed())
}

/// The clinic owner's view: every pen with its status.
async fn fleet(store: &dyn Store) -> anyhow::Result<()> {
    let devices = store.list_devices(None, Utc::now()).await?;
    println!("\n== fleet ({} pens)", devices.len());
    println!(
        "{:<22} {:<10} {:<7} {:>9} {:>13} {:>10}",
        "pen", "clinic", "online", "sessions", "strokes today", "open flags"
    );
    for d in devices.iter().take(12) {
        println!(
            "{:<22} {:<10} {:<7} {:>9} {:>13} {:>10}",
            d.device.id,
            d.device.clinic_id,
            if d.online { "yes" } else { "no" },
            d.sessions_today,
            d.strokes_today,
            d.open_flags
        );
    }
    if devices.len() > 12 {
        println!("… and {} more", devices.len() - 12);
    }
    Ok(())
}

async fn audit(store: &dyn Store) -> anyhow::Result<bool> {
    let reports = audit_trail::verify(store, None, &[]).await?;
    println!("\n== audit trail");
    for r in &reports {
        println!("{r}");
    }
    Ok(reports.iter().all(|r| r.ok()))
}

/// An HTML sterility report of the MQTT clinic, written beside the data
/// directory so it stays after the demo.
async fn sterility_report(store: &dyn Store, dir: &Path) -> anyhow::Result<PathBuf> {
    let today = Utc::now().date_naive();
    let period = Period::new(today - Duration::days(1), today + Duration::days(2))?;
    let exported = report::sterility(
        store,
        "demo-mqtt",
        period,
        ReportFormat::Html,
        &Actor::System,
    )
    .await?;
    // Beside the data directory, not in it: the report outlives the demo.
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("pentrace-demo");
    let path = dir.with_file_name(format!("{name}-sterility-demo-mqtt.html"));
    std::fs::write(&path, &exported.text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
