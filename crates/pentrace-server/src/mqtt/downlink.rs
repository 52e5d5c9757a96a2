//! Publishes every committed flag to its clinic's topic, and tells a pen to
//! stop using a cartridge that is reused, expired or recalled.

use std::sync::Arc;

use pentrace_proto::v1 as pb;
use pentrace_store::FlagRecord;
use prost::Message;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{down_topic, flags_topic};
use crate::convert;

pub async fn run(
    client: AsyncClient,
    mut flags: broadcast::Receiver<Arc<FlagRecord>>,
    shutdown: CancellationToken,
) {
    loop {
        let flag = tokio::select! {
            f = flags.recv() => f,
            _ = shutdown.cancelled() => return,
        };
        match flag {
            Ok(flag) => publish(&client, &flag).await,
            Err(RecvError::Lagged(n)) => {
                // Flags are stored regardless; subscribers re-read them.
                tracing::warn!(missed = n, "mqtt flag publisher fell behind");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn publish(client: &AsyncClient, flag: &FlagRecord) {
    let payload = convert::flag(flag).encode_to_vec();
    if let Err(e) = client
        .publish(
            flags_topic(&flag.clinic_id),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
    {
        tracing::warn!(error = %e, "cannot publish a flag");
    }
    let Some(command) = crate::downlink::reject_cartridge(flag) else {
        return;
    };
    let down = crate::downlink::downlink(pb::device_downlink::Body::RejectCartridge(command));
    let topic = down_topic(&flag.device_id);
    if let Err(e) = client
        .publish(topic, QoS::AtLeastOnce, false, down.encode_to_vec())
        .await
    {
        tracing::warn!(error = %e, "cannot publish a cartridge rejection");
    }
}
