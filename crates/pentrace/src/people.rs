//! `pentrace user` and `pentrace token`: named people and their bearer
//! tokens (shown once, stored only as hashes).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use pentrace_domain::audit::Actor;
use pentrace_server::auth::token_hash;
use pentrace_store::Role;

use crate::serve::{ConfigArgs, open_store, runtime};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a person who can sign in with a token.
    Add(UserAdd),
}

#[derive(Debug, Args)]
pub struct UserAdd {
    #[command(flatten)]
    common: ConfigArgs,
    /// Full name, as shown next to the person's signatures.
    #[arg(long)]
    name: String,
    /// admin, clinic_owner or compliance_officer.
    #[arg(long)]
    role: String,
    /// Clinic the person acts for (repeat for several; admins see every clinic).
    #[arg(long = "clinic")]
    clinics: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a bearer token for a user; it is printed once and stored only as a hash.
    Issue(TokenIssue),
    /// Revoke a token by its id.
    Revoke(TokenRevoke),
}

#[derive(Debug, Args)]
pub struct TokenIssue {
    #[command(flatten)]
    common: ConfigArgs,
    /// The user's name.
    #[arg(long)]
    user: String,
}

#[derive(Debug, Args)]
pub struct TokenRevoke {
    #[command(flatten)]
    common: ConfigArgs,
    /// The token id printed when it was issued.
    #[arg(long)]
    id: uuid::Uuid,
}

/// Who runs these commands: the operator at the server's console.
fn operator() -> Actor {
    Actor::System
}

pub fn user(cmd: UserCommand) -> anyhow::Result<()> {
    let UserCommand::Add(args) = cmd;
    let role = Role::parse(&args.role).with_context(|| {
        format!(
            "--role {:?}: expected admin, clinic_owner or compliance_officer",
            args.role
        )
    })?;
    if role != Role::Admin && args.clinics.is_empty() {
        bail!("a {} needs at least one --clinic", role.as_str());
    }
    runtime()?.block_on(async {
        let store = open_store(&args.common).await?;
        let user = store
            .create_user(args.name.trim(), role, &args.clinics, &operator())
            .await?;
        println!("user {} ({}) id {}", user.name, user.role.as_str(), user.id);
        Ok(())
    })
}

pub fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match cmd {
            TokenCommand::Issue(args) => {
                let store = open_store(&args.common).await?;
                let user = store
                    .user_by_name(&args.user)
                    .await?
                    .with_context(|| format!("no user named {:?}", args.user))?;
                let token = new_token()?;
                let id = store
                    .issue_token(user.id, &token_hash(&token), &operator())
                    .await?;
                eprintln!("token id {id} for {} — the token is shown once:", user.name);
                println!("{token}");
                Ok(())
            }
            TokenCommand::Revoke(args) => {
                let store = open_store(&args.common).await?;
                store.revoke_token(args.id, &operator()).await?;
                println!("token {} revoked", args.id);
                Ok(())
            }
        }
    })
}

/// 32 random bytes, hex: unguessable, and its SHA-256 is a safe lookup key.
fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    Ok(format!("ptk_{}", hex::encode(bytes)))
}
