//! `pentrace quarantine`: the messages the pipeline set aside (stored with
//! their raw bytes and the error, acknowledged, audited), for an admin to
//! look at.

use anyhow::Context;
use clap::{Args, Subcommand};
use pentrace_proto::v1 as pb;
use pentrace_store::QuarantineRecord;
use prost::Message;

use crate::serve::{ConfigArgs, open_store, runtime};

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// The newest quarantined messages, one line each.
    List(ListArgs),
    /// One quarantined message: its error, and its payload decoded (or in
    /// hex when it does not decode).
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// The id `pentrace quarantine list` prints.
    id: uuid::Uuid,
}

pub fn run(cmd: QuarantineCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match cmd {
            QuarantineCommand::List(args) => {
                let store = open_store(&args.common).await?;
                let list = store
                    .list_quarantine(args.limit)
                    .await
                    .context("cannot read the quarantine")?;
                if list.is_empty() {
                    println!("the quarantine is empty");
                }
                for q in &list {
                    println!("{}", line(q));
                }
                Ok(())
            }
            QuarantineCommand::Show(args) => {
                let store = open_store(&args.common).await?;
                let q = store
                    .quarantined(args.id)
                    .await
                    .context("cannot read the quarantine")?
                    .with_context(|| format!("no quarantined message has the id {}", args.id))?;
                print!("{}", detail(&q));
                Ok(())
            }
        }
    })
}

fn line(q: &QuarantineRecord) -> String {
    format!(
        "{}  {}  {}/{}  {}  {} bytes  {}",
        q.id,
        q.quarantined_at.format("%Y-%m-%dT%H:%M:%SZ"),
        q.device_id,
        q.seq,
        q.transport,
        q.payload.len(),
        q.error
    )
}

fn detail(q: &QuarantineRecord) -> String {
    let payload = match pb::DeviceMessage::decode(q.payload.as_slice()) {
        Ok(m) => format!("{m:#?}"),
        Err(e) => format!("(does not decode: {e})\n{}", hex::encode(&q.payload)),
    };
    format!(
        "id:             {}\ndevice:         {}\nseq:            {}\ntransport:      {}\nreceived at:    {}\nquarantined at: {}\nerror:          {}\npayload ({} bytes):\n{payload}\n",
        q.id,
        q.device_id,
        q.seq,
        q.transport,
        q.received_at.to_rfc3339(),
        q.quarantined_at.to_rfc3339(),
        q.error,
        q.payload.len(),
    )
}
