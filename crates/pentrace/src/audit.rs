//! `pentrace audit`: keys, signed checkpoints, verification.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use pentrace_domain::checkpoint::{Checkpoint, signing_key};
use pentrace_server::{audit_trail, fleet_checks};

use crate::serve::{ConfigArgs, load, open_store, runtime};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Create an Ed25519 key pair for signing checkpoints.
    Keygen(Keygen),
    /// Sign and store every chain's head; optionally export the checkpoints.
    Checkpoint(CheckpointArgs),
    /// Recompute every chain and check every checkpoint; exit 0 only if all hold.
    Verify(VerifyArgs),
    /// Fleet checks: shared credentials, revoked or expired ones still
    /// trying, certificates near expiry, silent pens; exit 0 only if none.
    Fleet(FleetArgs),
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// Only this clinic (default: every clinic).
    #[arg(long)]
    clinic: Option<String>,
    /// Audit evidence of the last this many hours (default: config
    /// `fleet.lookback_s`, 24 h).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=2160))]
    lookback_hours: Option<u32>,
    /// Certificates expiring within this many days (default: config
    /// `fleet.certificate_warning_days`, 30).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
    certificate_warning_days: Option<u32>,
    /// Pens silent for longer than this many hours (default: config
    /// `fleet.silent_after_s`, 24 h).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=87600))]
    silent_after_hours: Option<u32>,
    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct Keygen {
    /// Secret key file to create (its public key goes to FILE.pub).
    #[arg(long, default_value = "pentrace-audit.key")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// Secret key file from `pentrace audit keygen`.
    #[arg(long, env = "PENTRACE_AUDIT_KEY")]
    key: PathBuf,
    /// Directory to write one JSON file per checkpoint into, for the
    /// compliance officer to keep.
    #[arg(long)]
    export: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// Public key (hex, or a .pub file) checkpoints must be signed with.
    #[arg(long)]
    public_key: Option<String>,
    /// Checkpoint files kept outside the database (repeatable).
    #[arg(long = "checkpoint")]
    checkpoints: Vec<PathBuf>,
}

pub fn run(cmd: AuditCommand) -> ExitCode {
    let result = match cmd {
        AuditCommand::Keygen(a) => keygen(&a.out).map(|()| true),
        AuditCommand::Checkpoint(a) => checkpoint(a).map(|()| true),
        AuditCommand::Verify(a) => verify(a),
        AuditCommand::Fleet(a) => fleet(a),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite a key", out.display());
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    let key = signing_key(&seed);
    write_secret(out, &hex::encode(seed))?;
    let public = hex::encode(key.verifying_key().to_bytes());
    let pub_path = out.with_extension("pub");
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("writing {}", pub_path.display()))?;
    println!(
        "secret key: {} (keep it offline)\npublic key: {public} ({})",
        out.display(),
        pub_path.display()
    );
    Ok(())
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(format!("{text}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn checkpoint(args: CheckpointArgs) -> anyhow::Result<()> {
    let key = audit_trail::read_key(&args.key)?;
    runtime()?.block_on(async {
        let store = open_store(&args.common).await?;
        let checkpoints = audit_trail::checkpoint_all(store.as_ref(), &key).await?;
        for cp in &checkpoints {
            println!(
                "chain {}: position {} hash {}",
                cp.clinic_id,
                cp.position,
                hex::encode(cp.hash)
            );
            if let Some(dir) = &args.export {
                let path = export(dir, cp)?;
                println!("  exported to {}", path.display());
            }
        }
        Ok(())
    })
}

fn export(dir: &Path, cp: &Checkpoint) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = cp
        .clinic_id
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
    let path = dir.join(format!("checkpoint-{name}-{}.json", cp.position));
    let json = serde_json::to_string_pretty(cp)?;
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn public_key(arg: &str) -> anyhow::Result<[u8; 32]> {
    let text = match std::fs::read_to_string(arg) {
        Ok(file) => file,
        Err(_) => arg.to_owned(),
    };
    hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("--public-key {arg:?}: expected 64 hex digits or a .pub file"))
}

fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let trusted = args.public_key.as_deref().map(public_key).transpose()?;
    let exported = args
        .checkpoints
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str::<Checkpoint>(&text)
                .with_context(|| format!("{} is not a checkpoint file", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    runtime()?.block_on(async {
        let store = open_store(&args.common).await?;
        let reports = audit_trail::verify(store.as_ref(), trusted.as_ref(), &exported).await?;
        for r in &reports {
            println!("{r}");
        }
        let ok = reports.iter().all(|r| r.ok());
        println!(
            "audit verification: {}",
            if ok { "all chains hold" } else { "FAILED" }
        );
        Ok(ok)
    })
}

fn fleet(args: FleetArgs) -> anyhow::Result<bool> {
    let config = load(&args.common, Default::default())?;
    let mut policy = config.fleet.policy();
    let hours = |h: u32| chrono::Duration::hours(i64::from(h));
    if let Some(h) = args.lookback_hours {
        policy.lookback = hours(h);
    }
    if let Some(d) = args.certificate_warning_days {
        policy.certificate_warning = chrono::Duration::days(i64::from(d));
    }
    if let Some(h) = args.silent_after_hours {
        policy.silent_after = hours(h);
    }
    runtime()?.block_on(async {
        let store = open_store(&args.common).await?;
        let clinics = args.clinic.map(|c| vec![c]);
        if let Some(c) = clinics.as_ref().and_then(|c| c.first())
            && !store.list_clinics().await?.iter().any(|k| &k.id == c)
        {
            bail!("no clinic {c:?} is registered");
        }
        let report = fleet_checks::run(
            store.as_ref(),
            clinics.as_deref(),
            &policy,
            chrono::Utc::now(),
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_fleet(&report, &policy);
        }
        Ok(report.findings.is_empty())
    })
}

fn print_fleet(report: &fleet_checks::FleetReport, policy: &fleet_checks::FleetPolicy) {
    println!(
        "fleet checks at {} (evidence of the last {} h; certificates within {} d; silent after {} h)",
        report.checked_at.to_rfc3339(),
        policy.lookback.num_hours(),
        policy.certificate_warning.num_days(),
        policy.silent_after.num_hours(),
    );
    if !report.findings.is_empty() {
        println!(
            "{:<26} {:<16} {:<24} detail",
            "finding", "clinic", "principal"
        );
    }
    for f in &report.findings {
        println!(
            "{:<26} {:<16} {:<24} {}",
            f.kind.as_str(),
            f.clinic_id,
            f.principal,
            f.detail
        );
    }
    if report.incomplete {
        println!(
            "warning: more than {} audit events in the period; counts are a floor",
            fleet_checks::MAX_EVENTS
        );
    }
    match report.findings.len() {
        0 => println!("fleet checks: nothing found"),
        n => println!("fleet checks: {n} finding(s)"),
    }
}
