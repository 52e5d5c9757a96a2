//! `pentrace udi parse`: checks a label the way the server will.

use std::process::ExitCode;

use chrono::Utc;
use clap::Subcommand;
use pentrace_domain::Udi;

/// Exit code for input that is not a valid UDI.
const EXIT_INVALID: u8 = 2;

#[derive(Debug, Subcommand)]
pub enum UdiCommand {
    /// Parse a UDI (raw scanner data, bracketed text or GS1 Digital Link) and
    /// print it as one line of JSON; exit 2 naming the problem if invalid.
    Parse {
        /// The UDI as scanned. In raw form, GS separators may be given as the
        /// ASCII 29 byte itself.
        udi: String,
    },
}

pub fn run(cmd: UdiCommand) -> ExitCode {
    match cmd {
        UdiCommand::Parse { udi } => parse(&udi),
    }
}

fn parse(input: &str) -> ExitCode {
    let today = Utc::now().date_naive();
    match Udi::parse(input, today) {
        Ok(udi) => match serde_json::to_string(&udi) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot print the UDI: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: invalid UDI: {e}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}
