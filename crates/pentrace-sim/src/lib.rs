//! pentrace's pen simulator and load generator (issue 4).
//!
//! Simulates N pens over MQTT or gRPC with realistic sessions, injects
//! faults at given rates, knows the ground truth of every fault, and can
//! check the server's verdicts against it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), pentrace_sim::SimError> {
//! let config = pentrace_sim::SimConfig {
//!     transport: pentrace_sim::Transport::Grpc,
//!     setup: true,
//!     ..Default::default()
//! };
//! let report = pentrace_sim::run(&config).await?;
//! let verification = pentrace_sim::verify(&config, &report).await?;
//! assert!(verification.passed());
//! # Ok(()) }
//! ```
//!
//! Every session, cartridge, fault and message is planned up front from the
//! seed ([`scenario::plan`]); the pens only carry the plan out, paced by a
//! virtual clock that runs `compression` times faster than real time.

use std::sync::Arc;

use chrono::Utc;
use tokio::task::JoinSet;
use tokio::time::Instant;

mod api;
pub mod catalogue;
pub mod config;
mod driver;
pub mod error;
pub mod faults;
pub mod profile;
mod progress;
pub mod report;
pub mod scenario;
mod setup;
pub mod verify;
mod wire;

pub use config::{ProgressMode, SimConfig, Transport};
pub use driver::{Counters, Reject, grpc_channel};
pub use error::SimError;
pub use faults::{FaultKind, FaultRates};
pub use report::{ExpectedSession, SimReport};
pub use scenario::TruthRecord;
pub use verify::{KindRow, Verification, verify};

use driver::{PenOutcome, Shared, run_pen};
use progress::Progress;
use scenario::Scenario;

/// Runs the simulation: setup (if asked), then every pen until all its
/// messages are acknowledged. Writes the ground truth first if asked.
pub async fn run(config: &SimConfig) -> Result<SimReport, SimError> {
    config.validate()?;
    let (bases, secrets) = api::retrying(config.ack_timeout, || prepare(config)).await?;
    // Virtual time starts now, after the setup's recall: every simulated
    // session starts after it.
    let t0 = Utc::now();
    let scenario = Arc::new(scenario::plan(config, t0, &bases));
    if let Some(path) = &config.truth_path {
        report::write_truth(path, &scenario.truth)?;
    }
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared::new(
        config,
        Arc::clone(&scenario),
        &bases,
        Arc::clone(&counters),
        secrets,
    )?);
    let progress = (config.progress == ProgressMode::Auto)
        .then(|| Progress::start(Arc::clone(&counters), scenario.messages() as u64));
    let started = Instant::now();
    let outcomes = run_pens(shared).await;
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.finish().await;
    }
    Ok(build_report(
        config, &scenario, &counters, outcomes?, elapsed,
    ))
}

/// Setup (if asked), the pens' credentials and their last seqs; safe to
/// repeat.
async fn prepare(
    config: &SimConfig,
) -> Result<(Vec<u64>, std::collections::HashMap<String, String>), SimError> {
    let api = api::Api::connect(config).await?;
    let secrets = if config.setup {
        setup::register(&api, config, Utc::now().date_naive()).await?;
        let secrets = setup::issue_secrets(&api, config).await?;
        if let Some(path) = &config.credentials {
            setup::write_credentials(path, &secrets)?;
        }
        secrets
    } else if let Some(path) = &config.credentials {
        setup::read_credentials(path)?
    } else {
        Default::default()
    };
    Ok((setup::seq_bases(&api, config).await?, secrets))
}

/// Every pen in its own task; the first failure stops them all (pens may
/// be waiting on each other's acks).
async fn run_pens(shared: Arc<Shared>) -> Result<Vec<PenOutcome>, SimError> {
    let mut pens = JoinSet::new();
    for i in 0..shared.scenario.pens.len() {
        pens.spawn(run_pen(Arc::clone(&shared), i));
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = pens.join_next().await {
        match joined {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(SimError::Task(e.to_string())),
        }
    }
    Ok(outcomes)
}

fn build_report(
    config: &SimConfig,
    scenario: &Scenario,
    counters: &Counters,
    outcomes: Vec<PenOutcome>,
    elapsed: std::time::Duration,
) -> SimReport {
    let get = Counters::get;
    let mut ack_latencies_us = Vec::new();
    let mut rejects = Vec::new();
    for o in outcomes {
        ack_latencies_us.extend(o.latencies_us);
        rejects.extend(o.rejects);
    }
    let expected_sessions = scenario
        .pens
        .iter()
        .flat_map(|p| {
            p.sessions.iter().map(|s| ExpectedSession {
                device_id: p.device_id.clone(),
                session_id: s.session_id.clone(),
                samples: s.samples(),
            })
        })
        .collect();
    let last_seqs = scenario
        .pens
        .iter()
        .filter_map(|p| Some((p.device_id.clone(), p.messages.last()?.seq)))
        .collect();
    SimReport {
        transport: config.transport,
        seed: config.seed,
        pens: scenario.pens.len(),
        sessions: scenario.sessions(),
        started_at: scenario.t0,
        messages: get(&counters.messages),
        transmissions: get(&counters.transmissions),
        duplicates: get(&counters.duplicates),
        resends: get(&counters.resends),
        reconnects: get(&counters.reconnects),
        samples: get(&counters.samples),
        acked: get(&counters.acked),
        samples_acked: get(&counters.samples_acked),
        elapsed,
        ack_latencies_us,
        rejects,
        truth: scenario.truth.clone(),
        expected_sessions,
        last_seqs,
    }
}
