//! `pentrace`: the one command (DESIGN §2).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Work with cartridge UDIs (GS1 element strings).
    #[command(subcommand)]
    Udi(udi::UdiCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Udi(cmd) => udi::run(cmd),
    }
}
