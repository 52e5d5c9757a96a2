//! `pentrace report`: sterility reports and lot lookbacks as CSV, JSON or
//! printable HTML, each recorded as a `report.exported` audit event.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, Subcommand};
use pentrace_domain::audit::Actor;
use pentrace_server::report::{self, Exported, Period, ReportFormat};

use crate::serve::{ConfigArgs, open_store, runtime};

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// A clinic's sessions, cartridges, flags with their signatures and the
    /// audit verification, for a period of UTC days.
    Sterility(SterilityArgs),
    /// Outbreak lookback: every session, device and clinic that used a lot.
    Lot(LotArgs),
}

#[derive(Debug, Args)]
pub struct SterilityArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// Clinic id.
    #[arg(long)]
    clinic: String,
    /// First day, inclusive (YYYY-MM-DD, UTC).
    #[arg(long)]
    from: NaiveDate,
    /// Day after the last, exclusive (YYYY-MM-DD, UTC).
    #[arg(long)]
    to: NaiveDate,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct LotArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// GTIN-14 of the product.
    #[arg(long)]
    gtin: String,
    /// Lot number, GS1 AI (10).
    #[arg(long)]
    lot: String,
    #[command(flatten)]
    output: Output,
}

/// Where and how a report is written.
#[derive(Debug, Args)]
pub struct Output {
    /// csv, json or html.
    #[arg(long)]
    format: ReportFormat,
    /// File to write (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Who exports: the operator at the server's console, like `pentrace user`.
fn operator() -> Actor {
    Actor::System
}

pub fn run(cmd: ReportCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (exported, out) = match cmd {
            ReportCommand::Sterility(a) => {
                let period = Period::new(a.from, a.to)?;
                let store = open_store(&a.common).await?;
                let format = a.output.format;
                let exported =
                    report::sterility(store.as_ref(), &a.clinic, period, format, &operator())
                        .await?;
                (exported, a.output.out)
            }
            ReportCommand::Lot(a) => {
                let store = open_store(&a.common).await?;
                let format = a.output.format;
                let exported =
                    report::lot(store.as_ref(), &a.gtin, &a.lot, format, &operator()).await?;
                (exported, a.output.out)
            }
        };
        write(&exported, out.as_deref())?;
        // On stderr, so standard output carries nothing but the report.
        eprintln!(
            "report {} sha256 {} ({} bytes hashed); recorded as report.exported in audit chain {}",
            exported.report_id, exported.seal.sha256, exported.seal.hashed_bytes, exported.chain
        );
        Ok(())
    })
}

/// Writes the report to the file, or to standard output.
fn write(exported: &Exported, out: Option<&Path>) -> anyhow::Result<()> {
    match out {
        Some(path) => std::fs::write(path, &exported.text)
            .with_context(|| format!("writing {}", path.display())),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(exported.text.as_bytes())
                .and_then(|()| stdout.flush())
                .context("writing the report to standard output")
        }
    }
}
