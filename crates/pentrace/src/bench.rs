//! `pentrace bench`: measurements anyone can rerun.
//!
//! Without a subcommand it runs the ingest suite (issue 8): the storage and
//! broker baselines, gRPC and MQTT end to end through a `pentrace serve`
//! child process, and history growth; see [`suite`].

use std::time::Instant;

use clap::{Args, Subcommand};
use pentrace_domain::audit::Actor;
use pentrace_store::AuditDraft;
use serde_json::json;

use crate::serve::{ConfigArgs, open_store, runtime};

mod baseline;
mod e2e;
mod procs;
mod scratch;
mod stats;
mod suite;

/// `pentrace bench`: the suite's options, or a subcommand.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    suite: suite::SuiteArgs,
}

/// Load generators that are not part of the suite.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append N events to one audit chain (to time `pentrace audit verify`
    /// over a long chain, e.g. under `/usr/bin/time -v`).
    AuditChain(AuditChain),
}

#[derive(Debug, Args)]
pub struct AuditChain {
    #[command(flatten)]
    common: ConfigArgs,
    /// Events to append.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Chain (clinic id) to append to.
    #[arg(long, default_value = "bench-clinic")]
    clinic: String,
    /// Events per transaction.
    #[arg(long, default_value_t = 5_000)]
    batch: u64,
}

/// Runs the suite, or the subcommand.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::AuditChain(chain)) => audit_chain(chain),
        None => suite::run(args.suite),
    }
}

fn audit_chain(args: AuditChain) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = open_store(&args.common).await?;
        let started = Instant::now();
        let mut done = 0u64;
        while done < args.events {
            let n = args.batch.min(args.events - done);
            let drafts: Vec<AuditDraft> =
                (done..done + n).map(|i| draft(&args.clinic, i)).collect();
            store.append_audit(&drafts).await?;
            done += n;
            if done % 100_000 < args.batch || done == args.events {
                let rate = done as f64 / started.elapsed().as_secs_f64();
                eprintln!("appended {done}/{} events ({rate:.0}/s)", args.events);
            }
        }
        println!(
            "appended {done} events to chain {} in {:.1} s",
            args.clinic,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// An event shaped like a real `flag.raised`, so hashing costs what it does
/// in production.
fn draft(clinic: &str, i: u64) -> AuditDraft {
    AuditDraft {
        clinic_id: clinic.to_owned(),
        actor: Actor::System,
        action: "flag.raised".into(),
        subject_type: "flag".into(),
        subject_id: format!("bench-{i}"),
        old_value: None,
        new_value: Some(json!({
            "kind": "DEPTH_EXCEEDED", "severity": "major", "device_id": "bench-pen",
            "seq": i, "detail": "needle depth 2300 µm exceeds the limit of 2000 µm",
            "evidence": { "depth_um": 2300, "limit_um": 2000 },
        })),
        reason: None,
    }
}
