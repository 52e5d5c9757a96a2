//! `pentrace sim`: simulated pens with fault injection and ground truth.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pentrace_sim::faults::DEFAULT_FAULTS;
use pentrace_sim::{FaultRates, ProgressMode, SimConfig, Transport};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Number of simulated pens (device ids `{clinic}-pen-{i:04}`).
    #[arg(long, default_value_t = 50)]
    devices: usize,
    /// How pens send telemetry: mqtt or grpc.
    #[arg(long, default_value = "mqtt", value_parser = parse_transport)]
    transport: Transport,
    /// Server gRPC endpoint (setup and --verify always use it); https://
    /// for a server with TLS (see --ca-cert).
    #[arg(long, default_value = "https://127.0.0.1:50051")]
    grpc_url: String,
    /// CA certificate the server's TLS certificate chains to (`pentrace
    /// serve` creates it as `<data dir>/pki/ca.pem`).
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// The pens' credentials (`device_id secret` lines): --setup issues a
    /// secret per pen and writes them here; a run without --setup reads them.
    #[arg(long, value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// Bearer token for the Registry (--setup needs an admin's), Fleet and
    /// Compliance (--verify) services.
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// Read the bearer token from FILE (keeps it off the command line).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// MQTT broker (mqtt://HOST:PORT; no TLS).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    mqtt_url: String,
    /// Password a pen presents to the broker (its username is its device
    /// id) when it has no credential of its own (--credentials, --setup).
    #[arg(long, default_value = "")]
    mqtt_password: String,
    /// Clinic of the simulated pens.
    #[arg(long, default_value = "sim-clinic")]
    clinic: String,
    /// Treatment sessions per pen.
    #[arg(long, default_value_t = 4)]
    sessions: u32,
    /// Stroke batches per session (each 10 samples of 100 ms).
    #[arg(long, default_value_t = 20)]
    batches: u32,
    /// Virtual time runs this many times faster than real time.
    #[arg(long, default_value_t = 60.0)]
    compression: f64,
    /// Seed of every random choice (default: from the clock; printed so a
    /// run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Register the clinic, pens, products and lots first, and recall the
    /// recalled lot.
    #[arg(long)]
    setup: bool,
    /// Fault rates, KEY=RATE,...: per session for reuse, moved, expired,
    /// recalled, unknown, bad_udi, resume, cartridge_swap, resume_overuse,
    /// depth, skew, disconnect; per message for dup and reorder; per pen for
    /// backlog. Kinds not listed are 0; "none" for no faults.
    ///
    /// cartridge_swap: a batch (or the end) of a session names the cartridge
    /// of an earlier session for another patient (CARTRIDGE_REUSED).
    /// resume_overuse: a session of the rated product and its resume, which
    /// cross the rated strokes only in sum (SESSION_RESUMED and
    /// CARTRIDGE_OVERUSED on the resume). backlog: the pen was offline for
    /// days and uploads what it recorded, some sessions sharing a cartridge
    /// days apart, in a shuffled order (CARTRIDGE_REUSED on each of those
    /// uploaded after the first). The cartridge faults (all per-session ones
    /// but depth, skew and disconnect) add up to 1 at most.
    #[arg(long, default_value = DEFAULT_FAULTS, value_parser = parse_faults)]
    faults: FaultRates,
    /// Write every injected fault to FILE, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    truth: Option<PathBuf>,
    /// After the run, compare the server's flags and stored samples with the
    /// ground truth; exit non-zero unless they match exactly.
    #[arg(long)]
    verify: bool,
    /// Fail a pen whose acks make no progress for this many seconds.
    #[arg(long, default_value_t = 60)]
    ack_timeout_s: u64,
    /// Most messages a pen keeps unacknowledged before it waits (bounds
    /// the backlog a saturated server builds up).
    #[arg(long, default_value_t = 100)]
    max_inflight: usize,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    s.parse()
}

fn parse_faults(s: &str) -> Result<FaultRates, String> {
    s.parse()
        .map_err(|e: pentrace_sim::faults::FaultsError| e.to_string())
}

impl SimArgs {
    fn config(self) -> anyhow::Result<SimConfig> {
        let seed = self.seed.unwrap_or_else(seed_from_clock);
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --token-file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => self.token,
        };
        Ok(SimConfig {
            devices: self.devices,
            transport: self.transport,
            grpc_url: self.grpc_url,
            token,
            mqtt_url: self.mqtt_url,
            mqtt_password: self.mqtt_password,
            credentials: self.credentials,
            ca_cert: self.ca_cert,
            clinic: self.clinic,
            sessions: self.sessions,
            batches: self.batches,
            compression: self.compression,
            seed,
            setup: self.setup,
            faults: self.faults,
            truth_path: self.truth,
            verify: self.verify,
            ack_timeout: Duration::from_secs(self.ack_timeout_s),
            max_inflight: self.max_inflight,
            progress: if self.quiet {
                ProgressMode::Off
            } else {
                ProgressMode::Auto
            },
        })
    }
}

fn seed_from_clock() -> u64 {
    let now = chrono::Utc::now();
    now.timestamp_nanos_opt()
        .map_or(now.timestamp() as u64, |n| n as u64)
}

/// Runs the simulation (and the verification); the exit code says whether
/// everything was acknowledged and, with `--verify`, matched.
pub fn run(args: SimArgs) -> ExitCode {
    match args.config().and_then(simulate) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn simulate(config: SimConfig) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        eprintln!(
            "pentrace sim: {} pens × {} sessions × {} batches over {}, seed {}, faults {}",
            config.devices,
            config.sessions,
            config.batches,
            config.transport,
            config.seed,
            config.faults
        );
        let report = pentrace_sim::run(&config)
            .await
            .context("simulation failed")?;
        print!("{report}");
        if let Some(path) = &config.truth_path {
            println!("  {:<18} {}", "ground truth", path.display());
        }
        if !config.verify {
            return Ok(true);
        }
        let verification = pentrace_sim::verify(&config, &report)
            .await
            .context("verification failed")?;
        println!();
        print!("{verification}");
        Ok(verification.passed())
    })
}
