//! gRPC transport: one `Telemetry.Ingest` bidi stream per pen, on the
//! pen's own HTTP/2 connection (so a disconnect really drops it).

use std::time::Duration;

use pentrace_proto::v1 as pb;
use pentrace_proto::v1::telemetry_client::TelemetryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::link::{EVENT_QUEUE, Event, Link, OUTBOUND_QUEUE, Task};
use crate::error::SimError;

/// A channel to the server's gRPC endpoint.
pub async fn channel(url: &str) -> Result<Channel, SimError> {
    let fail = |reason: String| SimError::Connect {
        url: url.to_owned(),
        reason,
    };
    Endpoint::from_shared(url.to_owned())
        .map_err(|e| fail(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| fail(error_chain(&e)))
}

/// A tonic transport error with its causes (the top level alone says only
/// "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Opens a pen's ingest stream; the link reports `Ready` at once.
pub async fn connect(url: &str, device_id: &str) -> Result<Link, String> {
    let channel = channel(url).await.map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let response = TelemetryClient::new(channel)
        .ingest(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("Telemetry.Ingest: {s}"))?;
    let mut inbound = response.into_inner();
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let _ = events_tx.try_send(Event::Ready);
    let device = device_id.to_owned();
    let reader = tokio::spawn(async move {
        loop {
            let event = match inbound.message().await {
                Ok(Some(down)) => match downlink_event(down, &device) {
                    Some(event) => event,
                    None => continue,
                },
                Ok(None) => Event::Closed {
                    reason: "the server ended the stream".into(),
                    fatal: false,
                },
                Err(status) => Event::Closed {
                    reason: format!("{:?}: {}", status.code(), status.message()),
                    fatal: is_fatal(status.code()),
                },
            };
            let closed = matches!(event, Event::Closed { .. });
            if events_tx.send(event).await.is_err() || closed {
                break;
            }
        }
    });
    Ok(Link {
        tx,
        events,
        tasks: vec![Task(reader)],
    })
}

/// What a downlink means for the pen `device` (`None`: not for it).
fn downlink_event(down: pb::DeviceDownlink, device: &str) -> Option<Event> {
    use pb::device_downlink::Body;
    match down.body? {
        Body::Ack(ack) if ack.device_id == device => Some(Event::Ack(ack)),
        Body::Rejection(r) if r.device_id == device => Some(Event::Rejected(r)),
        Body::RejectCartridge(r) if r.device_id == device || r.device_id.is_empty() => {
            Some(Event::Reject {
                session_id: r.session_id,
                reason: r.reason,
            })
        }
        _ => None,
    }
}

/// Statuses that say the pen's messages are refused, not that the server
/// is briefly away: resending would be refused again.
fn is_fatal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::Unimplemented
    )
}
