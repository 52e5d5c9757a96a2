//! `pentrace`: the one command (docs/architecture.md, "Crates").

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit;
mod bench;
mod demo;
mod device;
mod mqtt;
mod people;
mod probe;
mod quarantine;
mod report;
mod serve;
mod sim;
mod status;
mod udi;

/// pentrace: telemetry, cartridge rules and audit trail for microneedling pens.
#[derive(Debug, Parser)]
#[command(name = "pentrace", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system on its embedded defaults with simulated pens,
    /// and show what a clinic owner and a compliance officer would see.
    Demo(demo::DemoArgs),
    /// Run the server: gRPC ingest and query services, HTTP health and metrics.
    Serve(serve::ServeArgs),
    /// Apply database migrations (under an advisory lock) and exit.
    Migrate(serve::MigrateArgs),
    /// Simulate pens over MQTT or gRPC, with fault injection and ground truth.
    Sim(sim::SimArgs),
    /// Show the store, whether TimescaleDB's features are active, and the
    /// schema version.
    Status(status::StatusArgs),
    /// Ask the running server's /readyz over HTTPS (or HTTP when
    /// plaintext), as configured; exit 0 on 200 (container health checks).
    Probe(probe::ProbeArgs),
    /// Work with cartridge UDIs (GS1 element strings).
    #[command(subcommand)]
    Udi(udi::UdiCommand),
    /// People who use the Fleet, Compliance and Registry services.
    #[command(subcommand)]
    User(people::UserCommand),
    /// Pens and gateways with their own credentials (issue, rotate, revoke).
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// The CA of pen certificates and of the server's TLS certificate.
    #[command(subcommand)]
    Ca(device::CaCommand),
    /// Bearer tokens of users.
    #[command(subcommand)]
    Token(people::TokenCommand),
    /// The tamper-evident audit trail: keys, checkpoints, verification.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Compliance reports: a clinic's sterility record, a lot's outbreak
    /// lookback (CSV, JSON or printable HTML; each export is audited).
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Messages the pipeline could not process, kept with their raw bytes.
    #[command(subcommand)]
    Quarantine(quarantine::QuarantineCommand),
    /// The broker side of MQTT ingest: set up a Mosquitto's accounts, end a
    /// gone process's session.
    #[command(subcommand)]
    Mqtt(mqtt::MqttCommand),
    /// Benchmarks: the ingest suite against its baselines (no subcommand),
    /// and load generators.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => match demo::run(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Udi(cmd) => udi::run(cmd),
        Command::Serve(args) => report(serve::serve(args)),
        Command::Migrate(args) => report(serve::migrate(args)),
        Command::Sim(args) => sim::run(args),
        Command::Status(args) => report(status::run(args)),
        Command::Probe(args) => probe::run(args),
        Command::User(cmd) => report(people::user(cmd)),
        Command::Token(cmd) => report(people::token(cmd)),
        Command::Device(cmd) => report(device::device(cmd)),
        Command::Ca(cmd) => report(device::ca(cmd)),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Report(cmd) => report(report::run(cmd)),
        Command::Quarantine(cmd) => report(quarantine::run(cmd)),
        Command::Mqtt(cmd) => report(mqtt::run(cmd)),
        Command::Bench(args) => {
            // The load generator logs only when asked (RUST_LOG), so the
            // table stays readable.
            if std::env::var_os("RUST_LOG").is_some() {
                pentrace_server::telemetry::init(pentrace_server::config::LogFormat::Text);
            }
            report(bench::run(args))
        }
    }
}

/// Prints an error with its whole cause chain, once.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
