//! `pentrace audit`: keys, signed checkpoints, verification.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use pentrace_domain::checkpoint::{Checkpoint, signing_key};
use pentrace_server::audit_trail;

use crate::serve::{ConfigArgs, open_store, runtime};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Create an Ed25519 key pair for signing checkpoints.
    Keygen(Keygen),
    /// Sign and store every chain's head; optionally export the checkpoints.
    Checkpoint(CheckpointArgs),
    /// Recompute every chain and check every checkpoint; exit 0 only if all hold.
    Verify(VerifyArgs),
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
