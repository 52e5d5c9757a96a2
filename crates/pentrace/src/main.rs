//! `pentrace`: the one command (DESIGN §2).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod serve;
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
    /// Run the server: gRPC ingest and query services, HTTP health and metrics.
    Serve(serve::ServeArgs),
    /// Apply database migrations (under an advisory lock) and exit.
    Migrate(serve::MigrateArgs),
    /// Work with cartridge UDIs (GS1 element strings).
    #[command(subcommand)]
    Udi(udi::UdiCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Udi(cmd) => udi::run(cmd),
        Command::Serve(args) => report(serve::serve(args)),
        Command::Migrate(args) => report(serve::migrate(args)),
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
